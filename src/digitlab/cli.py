"""The ``digitlab`` command. The only module that prints.

User errors (bad values, missing files, malformed data, incompatible checkpoints) print one
line ``digitlab: error: ...`` to stderr and exit with status 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from digitlab.errors import DigitlabError

EXIT_USAGE = 2


# ------------------------------------------------------------------------------- output
def out(line: str = "") -> None:
    print(line, flush=True)


def table(rows: list[list[str]], header: list[str]) -> str:
    """Plain aligned text table."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    lines = [fmt.format(*header), fmt.format(*("-" * w for w in widths))]
    lines += [fmt.format(*map(str, r)) for r in rows]
    return "\n".join(lines)


def metrics_table(metrics: dict[str, Any]) -> str:
    rows = []
    for split in ("train", "val", "test"):
        if f"{split}_acc" in metrics:
            n = metrics.get(f"n_{split}", "")
            rows.append(
                [split, str(n), f"{metrics[f'{split}_loss']:.4f}", f"{metrics[f'{split}_acc']:.4f}"]
            )
    return table(rows, ["split", "n", "loss", "accuracy"])


class Bar:
    """A tqdm progress bar on stderr fed by the trainer's Progress callback."""

    def __init__(self, desc: str) -> None:
        from tqdm import tqdm

        self._tqdm = tqdm
        self.desc = desc
        self.bar: Any = None

    def __call__(self, done: int, total: int, info: dict[str, float]) -> None:
        if self.bar is None:
            self.bar = self._tqdm(
                total=total, desc=self.desc, unit="step", leave=False, disable=None,
                dynamic_ncols=True, mininterval=0.25,
            )  # fmt: skip
            self.bar.update(done)
        self.bar.update(done - self.bar.n)
        if done % 50 == 0 or "val_acc" in info:
            self.bar.set_postfix({k: f"{v:.4f}" for k, v in info.items()}, refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# ------------------------------------------------------------------------------- options
def _flag(parser: argparse.ArgumentParser, name: str, help: str) -> None:
    parser.add_argument(f"--{name}", dest=name.replace("-", "_"), action="store_true",
                        default=argparse.SUPPRESS, help=help)  # fmt: skip
    parser.add_argument(f"--no-{name}", dest=name.replace("-", "_"), action="store_false",
                        default=argparse.SUPPRESS, help=argparse.SUPPRESS)  # fmt: skip


def _ints(text: str) -> list[int]:
    try:
        return [int(t) for t in text.replace(" ", "").split(",") if t]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated whole numbers, got {text!r}"
        ) from None


def add_training_options(p: argparse.ArgumentParser) -> None:
    """Options that override :class:`digitlab.runner.Settings` (only those given)."""
    S = argparse.SUPPRESS
    g = p.add_argument_group("model")
    g.add_argument("--model", choices=["logistic", "softmax", "mlp"], default=S)
    g.add_argument(
        "--hidden", type=_ints, default=S, help="hidden layer sizes, e.g. 400 or 256,128"
    )
    g.add_argument("--activation", choices=["tanh", "sigmoid", "relu"], default=S)
    g.add_argument(
        "--init",
        choices=["zeros", "normal", "fan_in", "uniform"],
        default=S,
        help="weight init (normal = N(0,1), fan_in = N(0, 1/fan_in))",
    )
    g.add_argument("--l1", type=float, default=S, help="L1 strength lambda")
    g.add_argument("--l2", type=float, default=S, help="L2 strength lambda")
    g.add_argument(
        "--reduction",
        choices=["mean", "sum"],
        default=S,
        help="cross-entropy averaged or summed over the batch",
    )
    _flag(g, "regularize-bias", "penalise the biases too")
    g.add_argument("--dtype", choices=["float32", "float64"], default=S)
    d = p.add_argument_group("data")
    d.add_argument("--dataset", default=S, help="dataset name (digitlab data list)")
    d.add_argument("--data-root", default=S, help="folder holding the dataset files")
    d.add_argument(
        "--seed-split",
        dest="split",
        action="store_const",
        const="seed",
        default=S,
        help="the reports' split: first 20,000 train, last 2,000 test, first 10%% hold-out",
    )
    d.add_argument("--n-train", type=int, default=S, help="use the first N training images")
    d.add_argument("--n-test", type=int, default=S, help="use the last N test images")
    d.add_argument(
        "--holdout", type=float, default=S, help="validation fraction of the training part"
    )
    d.add_argument("--holdout-mode", choices=["front", "random"], default=S)
    d.add_argument("--classes", type=_ints, default=S, help="logistic: POSITIVE,NEGATIVE, e.g. 2,3")
    d.add_argument(
        "--preprocess", choices=["scale01", "symmetric", "standardize", "none"], default=S
    )
    _flag(d, "bias-column", "append a column of ones (the bias trick) instead of a bias vector")
    _flag(d, "augment", "random shifts and rotations of training batches")
    d.add_argument("--max-shift", type=int, default=S)
    d.add_argument("--max-rotation", type=float, default=S)
    o = p.add_argument_group("optimisation")
    o.add_argument("--lr", type=float, default=S, help="learning rate eta0")
    o.add_argument(
        "--anneal-T", dest="anneal_T", type=float, default=S, help="anneal lr as eta0/(1+t/T)"
    )
    o.add_argument("--anneal-unit", choices=["epoch", "step"], default=S)
    o.add_argument("--momentum", type=float, default=S)
    o.add_argument("--batch", default=S, help="full, sgd, a size (128) or a fraction (0.1)")
    _flag(o, "shuffle", "shuffle the training set every epoch (--no-shuffle: keep order)")
    _flag(o, "drop-last", "skip the last, smaller mini-batch of an epoch")
    o.add_argument("--epochs", type=int, default=S)
    o.add_argument("--steps", type=int, default=S)
    o.add_argument("--eval-every", default=S, help="epoch, a fraction of an epoch (0.2) or steps")
    o.add_argument(
        "--early-stopping",
        type=int,
        default=S,
        metavar="PATIENCE",
        help="stop after PATIENCE evaluations without improvement (0: off)",
    )
    o.add_argument("--early-stopping-start", type=float, default=S, metavar="EPOCH",
                   help="count patience only from this epoch on")  # fmt: skip
    o.add_argument("--monitor", default=S, help="val_loss (default) or val_acc")
    o.add_argument("--min-delta", type=float, default=S)
    o.add_argument("--seed", type=int, default=S)
    o.add_argument("--checkpoint-every", type=int, default=S, metavar="STEPS")


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    from digitlab.runner import Settings

    return {k: v for k, v in vars(args).items() if k in Settings.names()}


# ------------------------------------------------------------------------------- commands
def _report_run(result: Any) -> None:
    for note in result.metrics.get("notes", []):
        out(note)
    out(result.metrics["stop_reason"])
    out(metrics_table(result.metrics))
    out(f"run folder: {result.folder}")


def _train_with_bar(settings: Any, args: argparse.Namespace, **kw: Any) -> Any:
    from digitlab.runner import run

    bar = Bar(kw.pop("desc", settings.model))
    try:
        result = run(
            settings, out=args.out, name=args.name, progress=bar, handle_signals=True, **kw
        )
    finally:
        bar.close()
    if result.trainer.interrupted:
        out(f"interrupted: checkpoint saved to {result.folder / 'checkpoint.npz'}")
    return result


def cmd_train(args: argparse.Namespace) -> int:
    from digitlab.runner import Settings

    base = Settings.from_toml(args.config).to_dict() if args.config else {}
    settings = Settings.from_dict(base | _overrides(args))
    _report_run(_train_with_bar(settings, args))
    return 0


RESUME_FIXED = (
    "model", "dataset", "data_root", "split", "n_train", "n_test", "holdout", "holdout_mode",
    "classes", "preprocess", "bias_column", "hidden", "activation", "init", "reduction",
    "regularize_bias", "batch", "shuffle", "drop_last", "seed", "dtype",
)  # fmt: skip


def cmd_resume(args: argparse.Namespace) -> int:
    from digitlab.checkpoint import load_checkpoint
    from digitlab.errors import ConfigError
    from digitlab.runner import Settings

    arrays, meta = load_checkpoint(args.checkpoint)
    saved = meta.get("extra", {}).get("settings")
    if saved is None:
        raise DigitlabError(f"{args.checkpoint}: not a checkpoint of a digitlab run")
    over = _overrides(args)
    changed = sorted(k for k in over if k in RESUME_FIXED and over[k] != saved.get(k))
    if changed:
        raise ConfigError(f"cannot change {', '.join(changed)} when resuming; start a new run")
    settings = Settings.from_dict(saved).replace(**over)
    step = int(meta["progress"]["step"])
    if args.more_steps is not None:
        settings = settings.replace(steps=step + args.more_steps, epochs=None)
    elif args.more_epochs is not None:
        settings = settings.replace(epochs=int(meta["progress"]["epoch"]) + args.more_epochs)
    out(f"resuming {args.checkpoint} at step {step}")
    _report_run(_train_with_bar(settings, args, resume_from=(arrays, meta)))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from digitlab.runner import Settings, load_run_checkpoint, prepare_data, split_metrics

    model, _, meta = load_run_checkpoint(args.checkpoint)
    settings = Settings.from_dict(meta["extra"]["settings"])
    if args.data_root:
        settings = settings.replace(data_root=args.data_root)
    data = prepare_data(settings)
    metrics = split_metrics(model, data)
    for note in data.notes:
        out(note)
    out(f"{model.kind} model at step {meta['progress']['step']}")
    out(metrics_table(metrics))
    return 0


def read_inputs(path: Path) -> np.ndarray:
    """Images (n, h, w) uint8 from an IDX file, a Kaggle-style CSV or a folder of PNGs."""
    from digitlab.data import read_csv, read_idx, read_image_folder
    from digitlab.errors import DataError, DatasetNotFoundError

    if not path.exists():
        raise DatasetNotFoundError(f"{path}: no such file or folder")
    if path.is_dir():
        return read_image_folder(path)[0]
    if path.suffix.lower() == ".csv" or path.name.lower().endswith(".csv.gz"):
        return read_csv(path)[0]
    images = read_idx(path)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise DataError(
            f"{path}: expected uint8 images (n, h, w), got {images.dtype} {images.shape}"
        )
    return images


def cmd_predict(args: argparse.Namespace) -> int:
    from digitlab.checkpoint import atomic_write_bytes
    from digitlab.errors import DataError
    from digitlab.runner import load_run_checkpoint

    model, prep, meta = load_run_checkpoint(args.checkpoint)
    extra = meta["extra"]
    images = read_inputs(Path(args.input))
    if list(images.shape[1:]) != list(extra["image_shape"]):
        raise DataError(
            f"{args.input}: images are {images.shape[1]}x{images.shape[2]}, the model was "
            f"trained on {extra['image_shape'][0]}x{extra['image_shape'][1]}"
        )
    pred = model.predict(prep.transform(images))
    if args.names:
        cats = [extra["classes"][int(p)] for p in pred]
    else:
        cats = [str(int(p) + int(extra.get("label_offset", 0))) for p in pred]
    text = "Id,Category\n" + "".join(f"{i},{c}\n" for i, c in enumerate(cats, start=1))
    atomic_write_bytes(args.output, lambda f: f.write(text.encode()))
    out(f"wrote {len(cats)} predictions to {args.output}")
    return 0


def cmd_gradcheck(args: argparse.Namespace) -> int:
    from digitlab import gradcheck
    from digitlab.data import Preprocessor, load
    from digitlab.runner import Settings, build_run_model

    settings = Settings.from_dict(
        {"model": args.model, "hidden": args.hidden, "activation": args.activation,
         "l1": args.l1, "l2": args.l2, "init": "normal" if args.l1 else None,
         "dtype": "float64", "classes": [2, 3] if args.model == "logistic" else None}
    )  # fmt: skip
    ds = load(args.dataset, root=args.data_root)
    x, y = ds.x_train[: args.n], ds.y_train[: args.n]
    if args.model == "logistic":
        keep = np.isin(ds.y_train, (2, 3))
        x, y = ds.x_train[keep][: args.n], (ds.y_train[keep][: args.n] == 2).astype(np.int64)
    X = Preprocessor("scale01").fit_transform(x)
    model = build_run_model(settings, X.shape[1], 2 if args.model == "logistic" else ds.n_classes)
    worst = gradcheck(model, X, y, eps=args.eps, n_checks=args.checks, rng=0)
    bound = 10 * args.eps**2
    out(f"{model.kind} on {len(y)} {ds.name} images, {args.checks} entries per parameter array")
    out(f"max |numerical - analytic| = {worst:.3e}   (eps = {args.eps:g}, 10*eps^2 = {bound:.1e})")
    out("PASS" if worst < bound else "FAIL")
    return 0 if worst < bound else 1


def cmd_data(args: argparse.Namespace) -> int:
    from digitlab.data import download, list_datasets, load, locate

    if args.action == "list":
        rows = []
        for name in list_datasets():
            try:
                where = str(locate(name, root=args.root))
            except DigitlabError as exc:
                where = f"not found ({str(exc).split(';')[0][:60]})"
            rows.append([name, where])
        out(table(rows, ["dataset", "source"]))
        return 0
    if not args.name:
        raise DigitlabError(f"data {args.action} needs a dataset name")
    if args.action == "info":
        ds = load(args.name, root=args.root)
        h, w = ds.image_shape
        out(f"{ds.name}: {len(ds.y_train)} train, {len(ds.y_test)} test, {h}x{w}, "
            f"{ds.n_classes} classes ({', '.join(ds.classes)})")  # fmt: skip
        out(f"source: {ds.source}")
        counts = np.bincount(ds.y_train, minlength=ds.n_classes)
        out("train counts per class: " + " ".join(str(c) for c in counts))
        return 0
    path = download(args.name, root=args.root)
    out(f"{args.name}: files verified in {path}")
    return 0


def demo_settings(full: bool) -> list[tuple[str, dict[str, Any]]]:
    """The demo's two runs: softmax regression and a one-hidden-layer tanh network."""
    common = {"holdout": 0.1, "early_stopping": 3, "batch": 128, "eval_every": "epoch"}
    return [
        ("softmax", common | {"model": "softmax", "lr": 0.5, "epochs": 15 if full else 30}),
        ("mlp", common | {"model": "mlp", "hidden": [400], "lr": 0.1, "momentum": 0.9,
                          "anneal_T": 5.0, "epochs": 15 if full else 30}),
    ]  # fmt: skip


def cmd_demo(args: argparse.Namespace) -> int:
    from digitlab.data import load
    from digitlab.runner import Settings, prepare_data

    ds = load("mnist", root=args.data_root)
    if ds.is_sample:
        out(f"full MNIST not found; using the {ds.source} (set DIGITLAB_DATA or run "
            "'digitlab data download mnist' for the full set)")  # fmt: skip
    else:
        out(f"using full MNIST from {ds.source}")
    rows = []
    for name, values in demo_settings(not ds.is_sample):
        settings = Settings.from_dict(values)
        data = prepare_data(settings, dataset=ds)
        out(f"\n== {name}: {len(data.train[1])} train / {len(data.val[1])} validation / "
            f"{len(data.test[1])} test images")  # fmt: skip
        result = _train_with_bar(settings, args, data=data, desc=name)
        _report_run(result)
        m = result.metrics
        rows.append([name, f"{m['epochs']:g}", f"{m['seconds']:.1f}", f"{m['test_acc']:.4f}",
                     str(result.folder)])  # fmt: skip
    out("\n" + table(rows, ["model", "epochs", "seconds", "test accuracy", "run folder"]))
    return 0


def cmd_experiments(args: argparse.Namespace) -> int:
    from digitlab.experiments import builtin_experiments

    rows = [
        [e.name, e.source, str(len(e.members)), e.section] for e in builtin_experiments().values()
    ]
    out(table(rows, ["experiment", "source", "runs", "section"]))
    return 0


def cmd_reproduce(args: argparse.Namespace) -> int:
    import time

    from digitlab.experiments import run_experiments, select_experiments

    experiments = select_experiments(args.names)
    overrides = {"data_root": args.data_root} if args.data_root else {}
    t_all = time.perf_counter()
    for exp in experiments:
        runs = sum(m.repeats for m in exp.members)
        out(f"== {exp.name} (source {exp.source}, {exp.section}): {runs} run(s)")

    def done(exp: Any, member: Any, metrics: dict[str, Any]) -> None:
        accs = "  ".join(
            f"{s} {metrics[f'{s}_acc']:.4f}"
            for s in ("train", "val", "test")
            if f"{s}_acc" in metrics
        )
        out(f"   {exp.name} / {member.label} (seed {metrics.get('seed', '-')}): {accs}  "
            f"({metrics['epochs']:g} epochs, {metrics['seconds']:.1f} s)")  # fmt: skip

    # every experiment's jobs in one pool: a long member never leaves cores idle
    records = run_experiments(
        experiments, args.out, n_jobs=args.jobs, scheduler=args.scheduler, overrides=overrides,
        on_done=done,
    )  # fmt: skip
    rows = []
    for exp, record in zip(experiments, records, strict=True):
        for note in record.data["notes"]:
            out(f"   {exp.name}: {note}")
        rows.append([exp.name, exp.source, str(record.chosen), f"{record.seconds:.1f}"])
    out("\n" + table(rows, ["experiment", "source", "chosen run", "seconds"]))
    out(f"total {time.perf_counter() - t_all:.1f} s; results in {args.out}/")
    if not args.no_report:
        return cmd_report(argparse.Namespace(runs=args.out))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from digitlab.report import write_report, write_run_report

    if getattr(args, "run_dirs", None):
        html, md = write_run_report(args.run_dirs, out=args.out)
    else:
        html, md = write_report(Path(args.runs), redraw=getattr(args, "redraw", False))
    out(f"report: {html} and {md}")
    return 0


# ------------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    from digitlab import __version__

    p = argparse.ArgumentParser(
        prog="digitlab",
        description="Train and study gradient-descent classifiers for handwritten characters.",
    )
    p.add_argument("--version", action="version", version=f"digitlab {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def runs_options(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--out", default="runs", help="runs root folder (default: runs)")
        sp.add_argument("--name", default=None, help="run name (default: the model kind)")

    t = sub.add_parser("train", help="train a model; writes a run folder")
    t.add_argument("--config", help="TOML file of settings (command-line options override it)")
    runs_options(t)
    add_training_options(t)
    t.set_defaults(func=cmd_train)

    r = sub.add_parser("resume", help="continue a run from its checkpoint")
    r.add_argument("checkpoint")
    r.add_argument("--more-steps", type=int, default=None)
    r.add_argument("--more-epochs", type=int, default=None)
    runs_options(r)
    add_training_options(r)
    r.set_defaults(func=cmd_resume)

    e = sub.add_parser("evaluate", help="loss and accuracy of a checkpoint on its splits")
    e.add_argument("checkpoint")
    e.add_argument("--data-root", default=None)
    e.set_defaults(func=cmd_evaluate)

    pr = sub.add_parser("predict", help="predict classes of images; writes Id,Category CSV")
    pr.add_argument("checkpoint")
    pr.add_argument("input", help="IDX file, Kaggle-style CSV, or a folder of PNG images")
    pr.add_argument("-o", "--output", required=True)
    pr.add_argument("--names", action="store_true", help="write class names, not label numbers")
    pr.set_defaults(func=cmd_predict)

    g = sub.add_parser("gradcheck", help="central-difference gradient check on real images")
    g.add_argument("--model", choices=["logistic", "softmax", "mlp"], default="mlp")
    g.add_argument("--hidden", type=_ints, default=[32])
    g.add_argument("--activation", choices=["tanh", "sigmoid", "relu"], default="tanh")
    g.add_argument("--l1", type=float, default=0.0)
    g.add_argument("--l2", type=float, default=0.0)
    g.add_argument("--eps", type=float, default=1e-2)
    g.add_argument("--n", type=int, default=20, help="images in the batch")
    g.add_argument("--checks", type=int, default=30, help="entries checked per parameter array")
    g.add_argument("--dataset", default="mnist")
    g.add_argument("--data-root", default=None)
    g.set_defaults(func=cmd_gradcheck)

    d = sub.add_parser("data", help="list, inspect or download datasets")
    d.add_argument("action", choices=["list", "info", "download"])
    d.add_argument("name", nargs="?")
    d.add_argument("--root", default=None, help="folder for the files (default: sources in order)")
    d.set_defaults(func=cmd_data)

    x = sub.add_parser("experiments", help="list the experiments of the source documents")
    x.set_defaults(func=cmd_experiments)

    rp = sub.add_parser("reproduce", help="run experiments of the source documents and the report")
    rp.add_argument("names", nargs="*", help="experiment names or TOML files (default: all)")
    rp.add_argument("--out", default="runs", help="runs root folder (default: runs)")
    rp.add_argument("--jobs", type=int, default=-1, help="parallel processes (default: all cores)")
    rp.add_argument("--scheduler", default=None, help="address of a Dask distributed scheduler")
    rp.add_argument("--data-root", default=None)
    rp.add_argument("--no-report", action="store_true", help="skip writing runs/report.html")
    rp.set_defaults(func=cmd_reproduce)

    rr = sub.add_parser(
        "report", help="report of run folders, or of the experiments under runs/ (no RUN_DIR)"
    )
    rr.add_argument("run_dirs", nargs="*", metavar="RUN_DIR",
                    help="run folders (digitlab train, experiment members): one drawn in full, "
                    "several compared")  # fmt: skip
    rr.add_argument("-o", "--out", default=None,
                    help="folder for a RUN_DIR report (default: the run folder; for several, "
                    "report/ in their common parent)")  # fmt: skip
    rr.add_argument("--runs", default="runs", help="experiments root folder (default: runs)")
    rr.add_argument(
        "--redraw", action="store_true", help="redraw every figure, not only stale ones"
    )
    rr.set_defaults(func=cmd_report)

    m = sub.add_parser("demo", help="short softmax and MLP runs on the best MNIST data found")
    m.add_argument("--data-root", default=None)
    runs_options(m)
    m.set_defaults(func=cmd_demo)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except DigitlabError as exc:
        print(f"digitlab: error: {exc}", file=sys.stderr, flush=True)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("digitlab: interrupted", file=sys.stderr, flush=True)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
