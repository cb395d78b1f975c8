"""The ``digitlab`` command. The only module that prints.

User errors (bad values, missing files, malformed data, incompatible checkpoints) print one
line ``digitlab: error: ...`` to stderr and exit with status 2.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

from digitlab.errors import DigitlabError

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


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


def evaluation_line(record: dict[str, float], total_steps: int, spe: int) -> str:
    """One line per evaluation: epoch, step, learning rate, losses and accuracies, time."""
    parts = [f"epoch {record['epoch']:.2f}/{total_steps / max(spe, 1):g}",
             f"step {int(record['step'])}/{total_steps}", f"lr {record['lr']:.3g}"]  # fmt: skip
    for split in ("train", "val", "test"):
        if f"{split}_acc" in record:
            parts.append(
                f"{split} loss {record[f'{split}_loss']:.4f} acc {record[f'{split}_acc']:.4f}"
            )
    parts.append(f"{record['time']:.1f} s")
    return "  ".join(parts)


class ProgressDisplay:
    """Training progress, a trainer callback (the CLI is the only place that prints).

    On a terminal: a tqdm bar on stderr counting epochs, with ETA and the running loss and
    accuracies, and one summary line per evaluation left above it. Elsewhere (a file, a pipe,
    CI): only the line per evaluation, flushed (like Keras ``verbose=2``).
    """

    def __init__(self, desc: str, tty: bool | None = None) -> None:
        self.desc = desc
        self.tty = sys.stderr.isatty() if tty is None else tty
        self.bar: Any = None
        self.every = 1
        self.last = ""  # the latest evaluation's accuracies, shown beside the running loss

    def on_train_begin(self, trainer: Any) -> None:
        spe = max(trainer.steps_per_epoch, 1)
        self.every = max(1, spe // 200)
        if self.tty:
            from tqdm import tqdm

            self.bar = tqdm(
                total=round(trainer.total_steps / spe, 2), initial=round(trainer.step / spe, 2),
                desc=self.desc, unit="epoch", leave=False, dynamic_ncols=True, mininterval=0.25,
                bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.2f}/{total:g} epochs "
                "[{elapsed}<{remaining}{postfix}]",
            )  # fmt: skip

    def on_step_end(self, trainer: Any, loss: float) -> None:
        if self.bar is not None and trainer.step % self.every == 0:
            self.bar.n = round(trainer.step / max(trainer.steps_per_epoch, 1), 2)
            self.bar.set_postfix_str(f"loss {loss:.4f}{self.last}", refresh=False)
            self.bar.update(0)

    def on_evaluate(self, trainer: Any, record: dict[str, float]) -> None:
        line = evaluation_line(record, trainer.total_steps, trainer.steps_per_epoch)
        accs = [f"{k} {record[k]:.4f}" for k in ("train_acc", "val_acc") if k in record]
        self.last = "".join(f", {a}" for a in accs)
        if self.bar is not None:
            self.bar.write(line, file=sys.stdout)
        else:
            out(line)

    def on_train_end(self, trainer: Any) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def state_dict(self) -> tuple[dict[str, Any], dict[str, Any]]:
        return {}, {}

    def load_state_dict(self, arrays: dict[str, Any], meta: dict[str, Any]) -> None:
        pass


# ------------------------------------------------------------------------------- options
class Parser(argparse.ArgumentParser):
    """argparse with errors as one line ``digitlab: error: ...`` (exit 2), no usage block,
    no abbreviated options (``--epoch`` is not ``--epochs``) and "did you mean" for a typo."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)
        self.argv: list[str] = []

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:
        self.argv = list(sys.argv[1:] if args is None else args)
        return super().parse_known_args(args, namespace)

    def error(self, message: str) -> NoReturn:
        prog, known = self.prog, set(self._option_string_actions)
        for action in self._actions:  # the command used: its own options and help
            if isinstance(action, argparse._SubParsersAction):
                command = next((a for a in self.argv if a in action.choices), None)
                if command is not None:
                    prog = action.choices[command].prog
                    known = set(action.choices[command]._option_string_actions)
        hint = did_you_mean(message, known)
        raise UsageError(f"{message}{hint} (see {prog} --help)")


def did_you_mean(message: str, known: set[str]) -> str:
    """For argparse's "unrecognized arguments: ..." message, a hint about its first option:
    a setting this command does not take, or the closest of ``known`` options."""
    import difflib

    from digitlab.settings import SPECS

    if not message.startswith("unrecognized arguments:"):
        return ""
    settings = {spec.flag: name for name, spec in SPECS.items()}
    for word in message.split(":", 1)[1].split():
        option = word.split("=", 1)[0]
        if not option.startswith("--"):
            continue
        if option in settings:
            return f"; cannot change {settings[option]} with this command"
        close = difflib.get_close_matches(option, sorted(known), n=1, cutoff=0.6)
        if close:
            return f"; did you mean {close[0]}?"
    return ""


class UsageError(DigitlabError):
    """Bad command-line syntax (unknown option, missing argument)."""


def _ints(text: str) -> list[int]:
    try:
        return [int(t) for t in text.replace(" ", "").split(",") if t]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated whole numbers, got {text!r}"
        ) from None


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return value


# ------------------------------------------------------------------------------- commands
def _report_run(result: Any) -> None:
    out(result.metrics["stop_reason"])
    out(metrics_table(result.metrics))
    out(f"run folder: {result.folder}")


def _train(settings: Any, args: argparse.Namespace, data: Any = None, **kw: Any) -> Any:
    """Prepare the data (its source printed once, before training), train, print the result.

    Returns the run's :class:`~digitlab.runner.RunResult`.
    """
    from digitlab.runner import prepare_data, run

    data = data if data is not None else prepare_data(settings)
    shown = kw.pop("shown_notes", ())
    for note in data.notes:
        if not note.startswith(tuple(shown)):
            out(note)
    desc = kw.pop("desc", settings.model)
    callbacks = [] if args.quiet else [ProgressDisplay(desc)]
    result = run(settings, out=args.out, name=args.name, data=data, callbacks=callbacks,
                 handle_signals=True, **kw)  # fmt: skip
    _report_run(result)
    if result.trainer.interrupted:
        out(f"interrupted: checkpoint saved to {result.folder / 'checkpoint.npz'}")
    return result


def _exit_code(result: Any) -> int:
    """0, or 130 when Ctrl-C/SIGTERM stopped the run (after saving its checkpoint)."""
    return EXIT_INTERRUPTED if result.trainer.interrupted else 0


def cmd_train(args: argparse.Namespace) -> int:
    from digitlab.settings import COMMAND_LINE, Settings, options_given, read_toml

    layers = [(str(args.config), read_toml(args.config))] if args.config else []
    settings = Settings.merge([*layers, (COMMAND_LINE, options_given(args))])
    return _exit_code(_train(settings, args))


def cmd_resume(args: argparse.Namespace) -> int:
    from digitlab.runner import data_for_checkpoint, plan_resume
    from digitlab.settings import options_given

    options = options_given(args)
    args.checkpoint = checkpoint_file(args.checkpoint)
    folder = Path(args.checkpoint).parent
    if args.name is None and (folder / "config.toml").is_file():
        args.name = folder.parent.name  # runs/<name>/<stamp>: continue under the same name
    plan = plan_resume(
        args.checkpoint, options, more_steps=args.more_steps, more_epochs=args.more_epochs,
        restart_momentum=args.restart_momentum,
    )  # fmt: skip
    chosen = bool({"dataset", "data_root"} & set(options))  # data chosen explicitly
    data = data_for_checkpoint(
        plan.settings, plan.checkpoint[1], args.checkpoint, dataset_given=chosen
    )
    out(f"resuming {args.checkpoint} at step {plan.step}")
    return _exit_code(_train(plan.settings, args, data=data, resume_from=plan.checkpoint,
                             restart_momentum=plan.restart_momentum))  # fmt: skip


def cmd_evaluate(args: argparse.Namespace) -> int:
    from digitlab.runfiles import checkpoint_progress, load_run_checkpoint, run_settings
    from digitlab.runner import data_for_checkpoint, split_metrics

    args.checkpoint = checkpoint_file(args.checkpoint)
    model, _, meta = load_run_checkpoint(args.checkpoint)
    step = checkpoint_progress(meta, args.checkpoint)["step"]
    settings = run_settings(meta, args.checkpoint)
    changes = {k: getattr(args, k) for k in ("data_root", "dataset") if getattr(args, k)}
    data = data_for_checkpoint(
        settings.replace(**changes), meta, args.checkpoint, dataset_given=bool(changes)
    )
    metrics = split_metrics(model, data)
    for note in data.notes:
        out(note)
    out(f"{model.kind} model at step {step}")
    out(metrics_table(metrics))
    return 0


def _refuse_overwriting_inputs(inputs: list[str], outputs: list[str | None]) -> None:
    """An output path that names one of the inputs would destroy it: refuse (OutputError)."""
    from digitlab.errors import OutputError

    read = {os.path.realpath(p) for p in inputs}  # realpath: no error on a symlink loop
    for out in outputs:
        if out and out != "-" and os.path.realpath(out) in read:
            raise OutputError(f"{out}: is one of the inputs; write the output elsewhere")


def checkpoint_file(path: str) -> str:
    """``path``, or ``path/checkpoint.npz`` when ``path`` is a run folder."""
    from digitlab.errors import CheckpointError

    if os.path.isdir(path):
        inside = os.path.join(path, "checkpoint.npz")
        if not os.path.isfile(inside):
            raise CheckpointError(f"{path}: a folder without checkpoint.npz (not a run folder)")
        return inside
    return path


def _write_all(files: list[tuple[str, Callable[[str], Any]]], stdout_text: str | None) -> None:
    """Write each ``(path, writer)`` then ``stdout_text``; if any fails, the files already
    written by this call are removed (nothing half-done is left) and the error is raised."""
    done: list[str] = []
    try:
        for path, write in files:
            write(path)
            done.append(path)
        if stdout_text is not None:
            sys.stdout.write(stdout_text)
            sys.stdout.flush()
    except BaseException:
        for path in done:
            Path(path).unlink(missing_ok=True)
        raise


def _predictions_text(args: argparse.Namespace, pred: Any) -> str:
    """The CSV (or Kaggle) text of ``pred``; rows of unreadable inputs have no class."""
    from digitlab.predict import kaggle_csv, predictions_csv

    if not args.kaggle:
        return predictions_csv(pred, proba=args.proba)
    if args.names:
        return kaggle_csv(pred.predicted)
    offset = pred.label_offset
    return kaggle_csv(
        ["" if pred.failed(k) else str(int(i) + offset) for k, i in enumerate(pred.labels)]
    )


def cmd_predict(args: argparse.Namespace) -> int:
    from digitlab.errors import ConfigError
    from digitlab.predict import contact_sheet, predict, printable_name, write_text

    if args.kaggle and args.proba:
        raise ConfigError("--proba adds columns to the default CSV; a --kaggle file has none")
    args.checkpoint = checkpoint_file(args.checkpoint)
    _refuse_overwriting_inputs([args.checkpoint, *args.inputs], [args.output, args.contact_sheet])
    pred = predict(args.checkpoint, args.inputs, raw=args.raw, keep_going=not args.strict)
    text = _predictions_text(args, pred)
    captions = [c or "error" for c in pred.predicted]
    files: list[tuple[str, Callable[[str], Any]]] = []
    if args.output != "-":
        files.append((args.output, lambda p: write_text(p, text)))
    if args.contact_sheet:
        files.append((args.contact_sheet, lambda p: contact_sheet(pred.inputs, captions, p)))
    _write_all(files, text if args.output == "-" else None)
    failed = [printable_name(e) for e in pred.errors if e]
    for e in failed:
        print(f"digitlab: skipped {e}", file=sys.stderr, flush=True)
    note = sys.stderr if args.output == "-" else sys.stdout
    if args.output != "-":
        print(f"wrote {len(pred.names) - len(failed)} predictions to {args.output}", file=note)
    if args.contact_sheet:
        print(f"wrote what the model saw to {args.contact_sheet}", file=note)
    if failed:
        print(f"digitlab: {len(failed)} of {len(pred.names)} inputs could not be read (their "
              "rows have no class; --strict makes that an error)", file=sys.stderr)  # fmt: skip
    note.flush()
    return 0


def cmd_gradcheck(args: argparse.Namespace) -> int:
    from digitlab.gradcheck import gradcheck_arrays
    from digitlab.runner import gradcheck_problem

    layers = {k: getattr(args, k) for k in ("dropout", "init", "leaky_slope")}
    layers = {k: v for k, v in layers.items() if v is not None}
    if args.batch_norm:
        layers["batch_norm"] = True
    model, X, y, name = gradcheck_problem(
        args.model, args.hidden, args.activation, args.l1, args.l2, n=args.n,
        dataset=args.dataset, data_root=args.data_root, layers=layers,
    )  # fmt: skip
    n_checks = None if args.checks == "all" else int(args.checks)
    per_array = gradcheck_arrays(model, X, y, eps=args.eps, n_checks=n_checks, rng=0)
    worst = max(err for err, _ in per_array.values())
    bound = 10 * args.eps**2
    what = "every entry" if n_checks is None else f"{n_checks} random entries"
    out(f"{model.kind} on {len(y)} {name} images, {what} of each parameter array (float64)")
    for key, (err, rel) in per_array.items():
        out(f"  {key:<4} max |numerical - analytic| = {err:.3e}   relative error = {rel:.3e}")
    out(f"max |numerical - analytic| = {worst:.3e}   (eps = {args.eps:g}, 10*eps^2 = {bound:.1e})")
    out("PASS" if worst < bound else "FAIL")
    return 0 if worst < bound else 1


def cmd_check(args: argparse.Namespace) -> int:
    """``digitlab check``: 0 when every check passes, 1 when any fails."""
    import json

    from digitlab.check import check_targets, format_results

    results = check_targets(args.files, timeout=args.timeout, kind=args.kind, l1=args.l1,
                            l2=args.l2, hidden=args.hidden, activation=args.activation)  # fmt: skip
    if args.json:
        out(json.dumps([r.to_json() for r in results], indent=1, ensure_ascii=False))
    else:
        out(format_results(results))
    return 0 if all(r.ok for r in results) else 1

def cmd_lr_find(args: argparse.Namespace) -> int:
    from digitlab.lrfind import lr_find_settings
    from digitlab.settings import COMMAND_LINE, Settings, options_given, read_toml

    layers = [(str(args.config), read_toml(args.config))] if args.config else []
    settings = Settings.merge([*layers, (COMMAND_LINE, options_given(args))])
    result, data = lr_find_settings(
        settings, start_lr=args.start_lr, end_lr=args.end_lr, steps=args.sweep_steps
    )
    for note in data.notes:
        out(note)
    folder = Path(args.out)
    folder.mkdir(parents=True, exist_ok=True)
    result.to_csv(folder / "lr_find.csv")
    result.plot(folder / "lr_find.png", title=f"lr-find: {settings.model} on {settings.dataset}")
    out(f"{len(result.lrs)} steps from {result.lrs[0]:.3g} to {result.lrs[-1]:.3g}; "
        f"{result.stop_reason}")  # fmt: skip
    out(f"smoothed loss lowest at lr {result.min_loss_lr:.4g}")
    out(f"suggested lr {result.suggestion:.4g}   (steepest descent of the smoothed loss)")
    out(f"wrote {folder / 'lr_find.csv'} and {folder / 'lr_find.png'}")
    return 0


def cmd_data(args: argparse.Namespace) -> int:
    from digitlab.data import download, list_datasets, load, locate

    if args.action != "synth" and (args.n is not None or args.seed is not None):
        raise UsageError("--n and --seed apply to data synth only")
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
    if args.action == "synth":
        return _synth(args)
    path = download(args.name, root=args.root)
    out(f"{args.name}: files verified in {path}")
    return 0


def _synth(args: argparse.Namespace) -> int:
    """``data synth``: a tqdm bar on a terminal's stderr; SIGTERM stops like Ctrl-C (resumable)."""
    from tqdm import tqdm

    from digitlab.data.registry import synth

    bar: Any = None

    def progress(done: int, n: int) -> None:
        nonlocal bar
        if bar is None:
            if done:
                out(f"{args.name}: continuing at row {done:,} of {n:,}")
            bar = tqdm(total=n, initial=done, desc=args.name, unit="img", unit_scale=True,
                       dynamic_ncols=True, mininterval=0.5, leave=False,
                       disable=not sys.stderr.isatty())  # fmt: skip
        bar.n = done
        bar.refresh()

    try:  # SIGTERM raises KeyboardInterrupt too (main)
        result = synth(args.name, root=args.root, n=args.n, seed=args.seed or 0,
                       progress=progress)  # fmt: skip
    except KeyboardInterrupt:
        print(f"digitlab: {args.name}: stopped; rerun the same command to continue",
              file=sys.stderr, flush=True)  # fmt: skip
        raise
    finally:
        if bar is not None:
            bar.close()
    if result.already_complete:
        out(f"{args.name}: already complete, {result.n:,} training images in {result.folder}")
    else:
        out(f"{args.name}: {result.n:,} training images (seed {args.seed or 0}) in "
            f"{result.folder}")  # fmt: skip
    return 0


def demo_settings(full: bool) -> list[tuple[str, dict[str, Any]]]:
    """The demo's two runs: softmax regression and a one-hidden-layer tanh network."""
    common = {"holdout": 0.1, "early_stopping": 3, "batch": 128, "eval_every": "epoch"}
    return [
        ("softmax", common | {"model": "softmax", "lr": 0.5, "epochs": 15 if full else 30}),
        ("mlp", common | {"model": "mlp", "hidden": [400], "activation": "tanh", "lr": 0.1,
                          "momentum": 0.9, "anneal_T": 5.0, "epochs": 15 if full else 30}),
    ]  # fmt: skip


def cmd_demo(args: argparse.Namespace) -> int:
    from digitlab.data import load
    from digitlab.runner import prepare_data
    from digitlab.settings import Settings

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
        result = _train(settings, args, data=data, desc=name, shown_notes=["data:"])
        if result.trainer.interrupted:
            return EXIT_INTERRUPTED
        m = result.metrics
        rows.append([name, f"{m['epochs']:g}", f"{m['seconds']:.1f}", f"{m['test_acc']:.4f}",
                     str(result.folder)])  # fmt: skip
    out("\n" + table(rows, ["model", "epochs", "seconds", "test accuracy", "run folder"]))
    return 0


def cmd_experiments(args: argparse.Namespace) -> int:
    from digitlab.experiments import builtin_experiments

    rows = [
        [e.name, e.source, str(len(e.members)), "on request" if e.on_request else "default",
         e.section]
        for e in builtin_experiments().values()
    ]  # fmt: skip
    out(table(rows, ["experiment", "source", "runs", "reproduce", "section"]))
    out("'digitlab reproduce' runs the default ones; name an on-request one to run it")
    return 0


def seeds_text(seeds: list[Any]) -> str:
    """``seed 3``, ``seeds 0-4`` (a run of whole numbers) or ``seeds 0, 2``."""
    ints = all(isinstance(x, int) for x in seeds)
    seeds = sorted(seeds) if ints else sorted(seeds, key=str)
    if len(seeds) == 1:
        return f"seed {seeds[0]}"
    if ints and seeds == list(range(seeds[0], seeds[-1] + 1)):
        return f"seeds {seeds[0]}-{seeds[-1]}"
    return "seeds " + ", ".join(map(str, seeds))


def slowest_jobs_text(jobs: list[tuple[float, str, str, Any, bool]], n: int = 5) -> str:
    """The ``n`` slowest of the finished jobs ``(seconds, experiment, member, seed, trained in
    lock-step)``; the repeats of a member trained in lock-step count once, with their seeds."""
    entries: dict[tuple[Any, ...], list[Any]] = {}
    for seconds, exp, member, seed, together in jobs:
        key = (exp, member) if together else (exp, member, seed)
        entry = entries.setdefault(key, [0.0, exp, member, []])
        entry[0] = max(entry[0], seconds)
        entry[3].append(seed)
    slowest = sorted(entries.values(), key=lambda e: -e[0])[:n]
    return "; ".join(f"{e} / {m} ({seeds_text(s)}) {t:.1f} s" for t, e, m, s in slowest)


def running_jobs_text(running: list[Any]) -> list[str]:
    """One phrase per member and epoch of the running jobs (``JobProgress``): the seeds of
    repeats that train in lock-step share one, ``... (seeds 0-4) at epoch 600 of 1000``."""
    groups: dict[tuple[Any, ...], list[int]] = {}
    for j in running:
        groups.setdefault((j.experiment, j.member, j.epoch, j.epochs), []).append(j.seed)
    phrases = []
    for (experiment, member, epoch, epochs), seeds in groups.items():
        of = "" if epochs is None else f" of {epochs}"
        phrases.append(f"{experiment} / {member} ({seeds_text(seeds)}) at epoch {epoch:g}{of}")
    return phrases


def cmd_reproduce(args: argparse.Namespace) -> int:
    import time

    from digitlab.experiments import run_experiments, select_experiments
    from digitlab.report.document import fmt_seconds

    experiments = select_experiments(args.names)
    overrides = {"data_root": args.data_root} if args.data_root else {}
    t_all = time.perf_counter()
    for exp in experiments:
        runs = sum(m.repeats for m in exp.members)
        out(f"== {exp.name} (source {exp.source}, {exp.section}): {runs} run(s)")

    jobs: list[tuple[float, str, str, Any, bool]] = []  # every finished job (slowest_jobs_text)

    def done(exp: Any, member: Any, metrics: dict[str, Any]) -> None:
        what = f"{exp.name} / {member.label} (seed {metrics.get('seed', '-')})"
        together = int(metrics.get("trained_together", 1) or 1) > 1
        seconds = float(metrics.get("seconds", 0.0))
        jobs.append((seconds, exp.name, member.label, metrics.get("seed", "-"), together))
        accs = "  ".join(
            f"{s} {metrics[f'{s}_acc']:.4f}"
            for s in ("train", "val", "test")
            if f"{s}_acc" in metrics
        )
        resumed = metrics.get("resumed_at_step")
        cont = "" if resumed is None else f", continued from its checkpoint at step {resumed}"
        out(
            f"   {what}: {accs}  ({metrics['epochs']:g} epochs, {metrics['seconds']:.1f} s{cont})"
        )

    def progress(jobs_now: list[Any]) -> None:
        finished = sum(j.state == "done" for j in jobs_now)
        running = running_jobs_text([j for j in jobs_now if j.state == "running"])
        if finished < len(jobs_now):
            now = ", ".join(running) if running else "starting"
            out(f"   [{fmt_seconds(time.perf_counter() - t_all)}] {finished} of {len(jobs_now)} "
                f"runs done; training: {now}")  # fmt: skip

    # every experiment's jobs in one pool: a long member never leaves cores idle
    records = run_experiments(
        experiments, args.out, n_jobs=args.jobs, scheduler=args.scheduler, overrides=overrides,
        on_done=done, checkpoint_seconds=60.0 * args.checkpoint_minutes, on_progress=progress,
        progress_seconds=PROGRESS_SECONDS,
    )  # fmt: skip
    rows = []
    for exp, record in zip(experiments, records, strict=True):
        for note in record.data["notes"]:
            out(f"   {exp.name}: {note}")
        # one chosen member per task: "2 vs 3: <label>; 2 vs 8: <label>"
        chosen = "; ".join((f"{t}: " if t else "") + str(record.chosen_of(t)) for t in record.tasks)
        rows.append([exp.name, exp.source, chosen, f"{record.seconds:.1f}"])
    out("\n" + table(rows, ["experiment", "source", "chosen run", "seconds"]))
    if jobs:
        out("slowest jobs: " + slowest_jobs_text(jobs))
    out(f"total {time.perf_counter() - t_all:.1f} s; results in {args.out}/")
    if not args.no_report:
        return cmd_report(argparse.Namespace(runs=args.out))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from digitlab.report import write_report, write_run_report

    run_dirs = getattr(args, "run_dirs", None) or _plain_runs(Path(args.runs))
    if run_dirs:
        html, md = write_run_report(run_dirs, out=getattr(args, "out", None))
    else:
        from digitlab.threads import usable_cores

        html, md = write_report(Path(args.runs), redraw=getattr(args, "redraw", False),
                                processes=usable_cores())  # fmt: skip
    out(f"report: {html} and {md}")
    return 0


def _plain_runs(root: Path) -> list[str]:
    """The run folders (``<root>/<name>/<stamp>`` or ``<root>/<name>`` with a ``config.toml``)
    of a runs root that holds no experiment (no ``*/experiment.json``): what
    ``digitlab report`` reports alone."""
    if not root.is_dir() or any(root.glob("*/experiment.json")):
        return []
    found = [*root.glob("*/config.toml"), *root.glob("*/*/config.toml")]
    return sorted(str(p.parent) for p in found if p.is_file())


def cmd_serve(args: argparse.Namespace) -> int:
    import socket

    import uvicorn

    from digitlab.serve import create_app
    from digitlab.serve.app import host_names

    root = Path(args.runs)
    if root.exists() and not root.is_dir():
        raise DigitlabError(f"{root}: not a folder")
    try:  # a busy port is a one-line error, not a uvicorn traceback
        with socket.create_server((args.host, args.port)):
            pass
    except PermissionError:
        raise DigitlabError(
            f"cannot listen on {args.host}:{args.port} (permission denied): ports below 1024 "
            "need administrator rights; choose one from 1024 up, e.g. --port 8000"
        ) from None
    except (OSError, OverflowError) as exc:
        why = getattr(exc, "strerror", None) or str(exc)
        raise DigitlabError(f"cannot listen on {args.host}:{args.port} ({why})") from None
    app = create_app(root, allowed_hosts=host_names(args.host), data_root=args.data_root,
                     allow_train=args.allow_train)  # fmt: skip
    out(f"digitlab serve: runs in {root.resolve()}")
    token = app.state.train_token  # set only with --allow-train
    query = f"?token={token}" if token else ""
    out(f"open http://{args.host}:{args.port}/{query} (Ctrl-C stops)")
    if token:
        out("training from the browser is on: keep this URL private (its token allows it)")
    # uvicorn shuts down on SIGTERM and then raises it again: with the default action the
    # server ends by SIGTERM, as a service manager expects, not as an interrupted command
    with _sigterm_handled_by(signal.SIG_DFL):
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


# ------------------------------------------------------------------------------- parser
RESUME_NOTE = (
    "Options change the checkpoint's settings for the rest of the run; the model, data, "
    "batching and seed cannot change. --lr sets the schedule's starting rate eta0 again: "
    "with --anneal-T the rate taken is still eta0 / (1 + t/T) at the run's current t, so "
    "it is smaller than --lr. --epochs/--steps are totals; --more-epochs/--more-steps extend."
)


CHECK_NOTE = (
    "Checks your own implementation of the logistic / softmax regression assignment "
    "(task2a.py, task3a.py, task2.py, task3.py: pre_process_images, cross_entropy_loss, "
    "BinaryModel, one_hot_encode, SoftmaxModel, calculate_accuracy), each function on its own "
    "against digitlab's float64 reference, plus the assignment's gradient check. "
    "Exit status: 0 all checks pass, 1 a check fails, 2 misuse."
)


def add_check_parser(sub: Any) -> None:
    """The ``check`` subcommand's options."""
    from digitlab.models import ACTIVATIONS, MODELS

    ck = sub.add_parser("check", help="say which function of your own implementation is wrong",
                        description=CHECK_NOTE)  # fmt: skip
    ck.add_argument("files", nargs="+", metavar="FILE",
                    help="your .py files, or module.py:Name for a model class or a "
                    "loss_and_grad(params, X, y) function")  # fmt: skip
    ck.add_argument("--json", action="store_true", help="one JSON record per check")
    ck.add_argument("--timeout", type=float, default=5.0,
                    help="seconds allowed per call of your code (default: 5)")  # fmt: skip
    ck.add_argument("--as", dest="kind", choices=list(MODELS), default=None,
                    help="module.py:Name only: compare with digitlab's model of this kind")
    ck.add_argument("--l1", type=float, default=0.0, help="with --as (default: 0)")
    ck.add_argument("--l2", type=float, default=0.0, help="with --as (default: 0)")
    ck.add_argument("--hidden", type=_ints, default=[16], help="--as mlp (default: 16)")
    ck.add_argument("--activation", choices=list(ACTIVATIONS), default="tanh",
                    help="--as mlp (default: tanh)")  # fmt: skip
    ck.set_defaults(func=cmd_check)


CHECKPOINT_HELP = "a run's checkpoint.npz, or its run folder"
DATA_ROOT_HELP = (
    "folder holding the dataset files (default: $DIGITLAB_DATA, the cache, then the "
    "embedded sample)"
)


def _runs_options(
    sp: argparse.ArgumentParser, name_help: str = "run name (default: the model kind)"
) -> None:
    sp.add_argument("--out", default="runs", help="runs root folder (default: runs)")
    sp.add_argument("--name", default=None, help=name_help)
    sp.add_argument("--quiet", action="store_true", help="no progress output while training")

def _data_options(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--dataset", default=None, help="use this dataset, not the run's")
    sp.add_argument("--data-root", default=None, help=DATA_ROOT_HELP)

def _add_train(sub: Any) -> None:
    """The ``train`` subcommand's options."""
    from digitlab.settings import add_options

    t = sub.add_parser("train", help="train a model; writes a run folder")
    t.add_argument("--config", help="TOML file of settings (command-line options override it)")
    _runs_options(t)
    add_options(t)
    t.set_defaults(func=cmd_train)

def _add_lr_find(sub: Any) -> None:
    """The ``lr-find`` subcommand's options."""
    from digitlab.settings import add_options

    lf = sub.add_parser(
        "lr-find", help="learning-rate range test: sweep, suggested rate, plot",
        description="Train a fresh model of the run's settings while the rate grows "
        "exponentially from --start-lr to --end-lr, smooth the loss (EMA, beta 0.98), stop "
        "when it exceeds 4x its best, suggest the rate where it falls fastest; writes "
        "lr_find.csv and lr_find.png to --out. Nothing of the model is kept.",
    )  # fmt: skip
    lf.add_argument("--config", help="TOML file of settings (command-line options override it)")
    lf.add_argument("--out", default="lr-find", help="output folder (default: lr-find)")
    lf.add_argument("--start-lr", type=float, default=1e-7, help="(default: 1e-7)")
    lf.add_argument("--end-lr", type=float, default=10.0, help="(default: 10)")
    lf.add_argument("--sweep-steps", type=_positive_int, default=100, help="(default: 100)")
    add_options(lf)
    lf.set_defaults(func=cmd_lr_find)

def _add_resume(sub: Any) -> None:
    """The ``resume`` subcommand's options."""
    from digitlab.settings import add_options

    r = sub.add_parser("resume", help="continue a run from its checkpoint", description=RESUME_NOTE)
    r.add_argument("checkpoint", help=CHECKPOINT_HELP)
    r.add_argument("--more-steps", type=_positive_int, default=None,
                   help="train this many steps more than the checkpoint's")  # fmt: skip
    r.add_argument("--more-epochs", type=_positive_int, default=None,
                   help="train this many epochs more than the checkpoint's")  # fmt: skip
    r.add_argument("--restart-momentum", action="store_true",
                   help="resume a checkpoint that lacks its optimiser state (momentum "
                   "velocity, Adam moments), restarting that state from zero")  # fmt: skip
    _runs_options(r, name_help="run name (default: the resumed run's, e.g. runs/live/...)")
    add_options(r, changeable_only=True)
    r.set_defaults(func=cmd_resume)

def _add_evaluate(sub: Any) -> None:
    """The ``evaluate`` subcommand's options."""
    e = sub.add_parser("evaluate", help="loss and accuracy of a checkpoint on its splits")
    e.add_argument("checkpoint", help=CHECKPOINT_HELP)
    _data_options(e)
    e.set_defaults(func=cmd_evaluate)

def _add_predict(sub: Any) -> None:
    """The ``predict`` subcommand's options."""
    pr = sub.add_parser("predict", help="predict the classes of images (files, folders, IDX, CSV)")
    pr.add_argument("checkpoint", help=CHECKPOINT_HELP)
    pr.add_argument(
        "inputs",
        nargs="+",
        metavar="input",
        help="image files (PNG, JPEG, BMP, TIFF, GIF, WebP) or folders of them, fitted "
        "the MNIST way; IDX or Kaggle-style CSV files in the training format",
    )
    pr.add_argument(
        "-o",
        "--output",
        default="-",
        help="CSV file: file,class[,p_<class>...] (default: - for standard output)",
    )
    pr.add_argument(
        "--raw",
        action="store_true",
        help="images are already in the training format (grey, the model's size, "
        "ink bright): no MNIST-style fitting",
    )
    pr.add_argument("--proba", action="store_true", help="add a probability column per class")
    pr.add_argument(
        "--contact-sheet",
        metavar="PNG",
        default=None,
        help="write a PNG grid of what the model saw, with the predicted classes",
    )
    pr.add_argument(
        "--kaggle",
        action="store_true",
        help="write a Kaggle submission (Id,Category; label numbers) instead",
    )
    pr.add_argument("--names", action="store_true", help="with --kaggle: class names, not numbers")
    pr.add_argument(
        "--strict", action="store_true",
        help="an image that cannot be read (corrupt, blank, too large) is an error (exit 2, "
        "nothing written); by default its row has no class, it is named on stderr and the "
        "others are predicted",
    )  # fmt: skip
    pr.set_defaults(func=cmd_predict)

def _add_gradcheck(sub: Any) -> None:
    """The ``gradcheck`` subcommand's options."""
    from digitlab.models import ACTIVATIONS, MODELS

    g = sub.add_parser("gradcheck", help="central-difference gradient check on real images")
    g.add_argument("--model", choices=list(MODELS), default="mlp",
                   help="model whose gradient is checked (default: mlp)")  # fmt: skip
    g.add_argument("--hidden", type=_ints, default=[32],
                   help="mlp: hidden layer sizes, comma-separated (default: 32)")  # fmt: skip
    g.add_argument("--activation", choices=list(ACTIVATIONS), default="tanh",
                   help="mlp: hidden activation (default: tanh)")  # fmt: skip
    g.add_argument("--l1", type=float, default=0.0,
                   help="L1 penalty included in the checked loss (default: 0)")  # fmt: skip
    g.add_argument("--l2", type=float, default=0.0,
                   help="L2 penalty included in the checked loss (default: 0)")  # fmt: skip
    g.add_argument("--dropout", default=None,
                   help="mlp: dropout rate(s) of the hidden layers, e.g. 0.3 or 0.2,0.5; the "
                   "check uses one fixed set of masks (default: none)")  # fmt: skip
    g.add_argument("--batch-norm", action="store_true",
                   help="mlp: batch-normalise the hidden layers (training-mode statistics)")
    g.add_argument("--init", default=None,
                   help="weight initialisation (default: the model's; normal with --l1)")
    g.add_argument("--leaky-slope", default=None, help="leaky_relu slope (default: 0.01)")
    g.add_argument("--eps", type=float, default=1e-2,
                   help="central-difference step; PASS when the largest error is below "
                   "10*eps^2 (default: 0.01)")  # fmt: skip
    g.add_argument("--n", type=_positive_int, default=20, help="images in the batch (default: 20)")
    g.add_argument(
        "--checks", type=_checks, default="30",
        help="random entries checked per parameter array, or all (default: 30)",
    )  # fmt: skip
    g.add_argument("--dataset", default="mnist",
                   help="dataset the images come from (default: mnist)")  # fmt: skip
    g.add_argument("--data-root", default=None, help=DATA_ROOT_HELP)
    g.set_defaults(func=cmd_gradcheck)

def _add_data(sub: Any) -> None:
    """The ``data`` subcommand's options."""
    d = sub.add_parser(
        "data", help="list, inspect, download or synthesise datasets",
        description="synth NAME writes a synthesised dataset (mnist-8m: MNIST's training "
        "digits then elastically distorted, scaled, rotated and shifted copies, as "
        "uncompressed IDX files) into ROOT/NAME, the first $DIGITLAB_DATA folder or the "
        "cache; rerunning an interrupted synth continues it.",
    )  # fmt: skip
    d.add_argument("action", choices=["list", "info", "download", "synth"])
    d.add_argument("name", nargs="?")
    d.add_argument("--root", default=None, help="folder for the files (default: sources in order)")
    d.add_argument("--n", type=_positive_int, default=None,
                   help="synth: training images (default: the dataset's, 8,100,000)")  # fmt: skip
    d.add_argument("--seed", type=_nonnegative_int, default=None,
                   help="synth: seed of the deformations (default: 0)")  # fmt: skip
    d.set_defaults(func=cmd_data)

def _add_experiments(sub: Any) -> None:
    """The ``experiments`` subcommand's options."""
    x = sub.add_parser("experiments", help="list the experiments of the source documents")
    x.set_defaults(func=cmd_experiments)

def _add_reproduce(sub: Any) -> None:
    """The ``reproduce`` subcommand's options."""
    rp = sub.add_parser("reproduce", help="run experiments of the source documents and the report")
    rp.add_argument(
        "names", nargs="*", help="experiment names or TOML files (default: all but on-request ones)"
    )
    rp.add_argument("--out", default="runs", help="runs root folder (default: runs)")
    rp.add_argument("--jobs", type=_jobs, default=-1,
                    help="parallel processes, -1 for all cores (default: -1)")  # fmt: skip
    rp.add_argument("--scheduler", default=None, help="address of a Dask distributed scheduler")
    rp.add_argument("--data-root", default=None, help=DATA_ROOT_HELP)
    rp.add_argument("--no-report", action="store_true", help="skip writing runs/report.html")
    rp.add_argument("--checkpoint-minutes", type=_minutes, default=5.0,
                    help="minutes of training between a job's checkpoints; a stopped "
                         "reproduce continues from them when run again (default: 5)")  # fmt: skip
    rp.set_defaults(func=cmd_reproduce)

def _add_report(sub: Any) -> None:
    """The ``report`` subcommand's options."""
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

def _add_serve(sub: Any) -> None:
    """The ``serve`` subcommand's options."""
    sv = sub.add_parser("serve", help="browse, compare and follow runs, draw digits (web page)")
    sv.add_argument("--runs", default="runs", help="runs root folder (default: runs)")
    sv.add_argument("--port", type=_port, default=8000, help="port, 1..65535 (default: 8000)")
    sv.add_argument("--host", default="127.0.0.1",
                    help="interface (default: 127.0.0.1 only); requests must name it (or, "
                    "for 0.0.0.0, this machine) in their Host header")  # fmt: skip
    sv.add_argument("--data-root", default=None,
                    help="folder of the datasets for confusion matrices and examples (default: "
                    "$DIGITLAB_DATA, the cache, the embedded sample)")  # fmt: skip
    sv.add_argument("--allow-train", action="store_true",
                    help="let the page start, stop and resume training runs (a child "
                    "process per run), with the session token printed at start")  # fmt: skip
    sv.set_defaults(func=cmd_serve)

def _add_demo(sub: Any) -> None:
    """The ``demo`` subcommand's options."""
    m = sub.add_parser("demo", help="short softmax and MLP runs on the best MNIST data found")
    m.add_argument("--data-root", default=None, help=DATA_ROOT_HELP)
    _runs_options(m)
    m.set_defaults(func=cmd_demo)


def build_parser() -> argparse.ArgumentParser:
    from digitlab import __version__

    p = Parser(
        prog="digitlab",
        description="Train and study gradient-descent classifiers for handwritten characters.",
    )
    p.add_argument("--version", action="version", version=f"digitlab {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands = (
        _add_train,
        _add_lr_find,
        _add_resume,
        _add_evaluate,
        _add_predict,
        _add_gradcheck,
        add_check_parser,
        _add_data,
        _add_experiments,
        _add_reproduce,
        _add_report,
        _add_serve,
        _add_demo,
    )
    for add in commands:
        add(sub)
    return p


def _nonnegative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {text!r}")
    return value


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port number 1..65535, got {text!r}")
    return value


def _jobs(text: str) -> int:
    if text.strip() == "-1":
        return -1
    return _positive_int(text)


#: Seconds between two progress lines of ``digitlab reproduce``.
PROGRESS_SECONDS = 60.0


def _minutes(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0.001 <= value <= 10_000:
        raise argparse.ArgumentTypeError(f"expected minutes from 0.001 to 10000, got {text!r}")
    return value


def _checks(text: str) -> str:
    if text != "all":
        _positive_int(text)
    return text


def _sigterm_as_ctrl_c(signum: int, frame: Any) -> NoReturn:
    raise KeyboardInterrupt


@contextlib.contextmanager
def _sigterm_handled_by(handler: Any) -> Iterator[None]:
    """SIGTERM handled by ``handler`` inside, the previous handler restored after. Only the
    main thread can handle signals, and an ignored SIGTERM stays ignored (as Python leaves an
    ignored SIGINT): there nothing changes."""
    main_thread = threading.current_thread() is threading.main_thread()
    if not main_thread or signal.getsignal(signal.SIGTERM) is signal.SIG_IGN:
        yield
        return
    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        if previous is not None:  # None: a handler set outside Python, which cannot be restored
            signal.signal(signal.SIGTERM, previous)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; user errors print one line and return 2, Ctrl-C (or SIGTERM) returns
    130.

    SIGTERM (``kill``, ``timeout``, a job scheduler, the app stopping a child) raises
    KeyboardInterrupt, as Ctrl-C does: the command's own clean-up runs, and the experiment
    engine stops its worker processes, which SIGTERM's default action would leave training
    and writing into the output folder after this process had gone. A command with its own
    handler (training's checkpoint on stop, the app's server) sets it inside and restores
    this one."""
    with _sigterm_handled_by(_sigterm_as_ctrl_c):
        return _main(argv)


def _main(argv: Sequence[str] | None) -> int:
    try:
        args = build_parser().parse_args(argv)
        from digitlab import limits

        limits.check()  # a bad $DIGITLAB_MAX_* is one line now, not midway through a batch
        func: Callable[[argparse.Namespace], int] = args.func
        return func(args)
    except DigitlabError as exc:
        print(f"digitlab: error: {exc}", file=sys.stderr, flush=True)
        return EXIT_USAGE
    except OSError as exc:  # disk full, permissions, a folder where a file should go
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"digitlab: error: {where}{exc.strerror or exc}", file=sys.stderr, flush=True)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("digitlab: interrupted", file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
