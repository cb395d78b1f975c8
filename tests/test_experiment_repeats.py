"""Issue 11 (and 10, path safety / resumable reproduce): chained members, repeats over seeds,
the comparability rule, folders that never escape ``--out``, and reruns that continue.

Everything runs on the embedded 5,000-digit sample with tiny settings."""

from __future__ import annotations

import contextlib
import json
import os

import numpy as np
import pytest

from digitlab.checkpoint import load_checkpoint, save_checkpoint
from digitlab.errors import ConfigError
from digitlab.experiments import parse_experiment, run_experiment, run_experiments, slug
from digitlab.experiments.execute import DONE, STARTED, run_member, stop_epoch
from digitlab.experiments.folders import MARK
from digitlab.experiments.record import comparability
from digitlab.report import load_experiment
from digitlab.report.document import compare, is_comparable
from process_helpers import children, gone_within

BASE = {
    "name": "rep",
    "source": "000",
    "section": "test",
    "title": "repeats and chains",
    "protocol": "softmax on the embedded sample",
    "figures": ["table"],
    "settings": {
        "model": "softmax",
        "dataset": "mnist-5k",
        "batch": 256,
        "lr": 0.3,
        "epochs": 1,
        "init": "normal",
    },
}


def params(folder) -> dict[str, np.ndarray]:
    arrays, _ = load_checkpoint(folder / "checkpoint.npz")
    return {k: v for k, v in arrays.items() if k.startswith("model/")}


# ------------------------------------------------------------------------------- chains
def test_a_chained_member_starts_from_the_final_weights_of_the_other(tmp_path):
    spec = BASE | {
        "members": [
            {"label": "first", "l2": 0.01},
            # a step too small to move the weights: its result is its starting point
            {"label": "second", "init_from": "first", "lr": 1e-12},
            {"label": "alone", "lr": 1e-12},
        ]
    }
    record = run_experiment(parse_experiment(spec, "rep.toml"), tmp_path, n_jobs=1)
    first, second, alone = (params(m.folder) for m in record.members)
    for k in first:
        np.testing.assert_allclose(second[k], first[k], atol=1e-6)
        assert not np.allclose(alone[k], first[k], atol=1e-3)  # its own N(0, 1) draw
    assert record.members[1].engine == {"init_from": "first"}


def test_a_chained_grid_links_its_members_in_order_with_a_prefix():
    spec = BASE | {"grids": [{"l2": [0.1, 0.01, 0.001], "chain": True, "prefix": "coded"}]}
    exp = parse_experiment(spec, "rep.toml")
    assert [m.label for m in exp.members] == ["coded l2=0.1", "coded l2=0.01", "coded l2=0.001"]
    assert [m.init_from for m in exp.members] == [None, "coded l2=0.1", "coded l2=0.01"]


@pytest.mark.parametrize(
    ("members", "words"),
    [
        ([{"label": "a", "init_from": "b"}, {"label": "b"}], "not an earlier member"),
        ([{"label": "a", "init_from": "a"}], "not an earlier member"),
        ([{"label": "a"}, {"label": "b", "init_from": "a", "repeats": 2}], "same repeats"),
        ([{"label": "a", "repeats": 0}], "repeats"),
        ([{"label": "a", "bias_input": 2.0}], "bias_input"),
        ([{"label": "a", "validation": "train"}], "validation"),
        ([{"label": "a", "eval_offset": -1}], "eval_offset"),
    ],
)
def test_bad_engine_keys_are_refused(members, words):
    with pytest.raises(ConfigError, match=words):
        parse_experiment(BASE | {"members": members}, "rep.toml")


# ------------------------------------------------------------------------------ repeats
def test_repeats_run_over_seeds_and_summarise_them(tmp_path):
    spec = BASE | {"repeats": 3, "members": [{"label": "m"}]}
    record = run_experiment(parse_experiment(spec, "rep.toml"), tmp_path, n_jobs=1)
    rep = record.members[0].repeats
    assert rep["n"] == 3 and rep["seeds"] == [0, 1, 2]
    accs = [r["test_acc"] for r in rep["runs"]]
    assert len(set(accs)) > 1  # different N(0, 1) draws
    s = rep["summary"]["test_acc"]
    assert s["mean"] == pytest.approx(np.mean(accs))
    assert s["sd"] == pytest.approx(np.std(accs, ddof=1))
    assert (s["min"], s["max"]) == (min(accs), max(accs))
    # repeat 0 is the member folder the report reads; the others have their own folders
    for seed, folder in zip(rep["seeds"], rep["folders"], strict=True):
        meta = json.loads((tmp_path / "rep" / folder / "metrics.json").read_text())
        assert meta["seed"] == seed
    assert rep["folders"][0] == "m"


def _record_with(tmp_path, runs, published, **data):
    """A minimal experiment folder whose member 'm' ran over the given test accuracies."""
    folder = tmp_path / "exp"
    folder.mkdir()
    summary = {
        "mean": float(np.mean(runs)),
        "sd": float(np.std(runs, ddof=1)),
        "min": min(runs),
        "max": max(runs),
        "n": len(runs),
    }
    raw = {
        "name": "exp",
        "members": [
            {
                "label": "m",
                "folder": "m",
                "metrics": {"test_acc": runs[0]},
                "repeats": {"n": len(runs), "runs": [{"test_acc": r} for r in runs],
                            "summary": {"test_acc": summary}},
            }
        ],
        "chosen": "m",
        "data": {"dataset": "mnist", "is_sample": False, "comparable": True} | data,
        "published": [{"member": "m", "metric": "test_acc", "value": published}],
    }  # fmt: skip
    (folder / "experiment.json").write_text(json.dumps(raw))
    exp = load_experiment(folder)
    return compare(exp, exp.published[0])


@pytest.mark.parametrize(
    ("published", "status"),
    [
        (0.90, "meets"),  # below the mean
        (0.93, "within"),  # inside the observed range
        (0.96, "outside"),  # above max and beyond mean + 2 sd
    ],
)
def test_a_published_number_is_within_only_inside_the_seeds_range(tmp_path, published, status):
    c = _record_with(tmp_path, [0.91, 0.92, 0.935], published)
    assert c.status == status
    assert c.reproduced == pytest.approx(np.mean([0.91, 0.92, 0.935]))
    assert "3 seeds" in c.spread


# --------------------------------------------------------------------------- comparable
def test_runs_on_other_data_are_not_comparable(tmp_path):
    c = _record_with(tmp_path, [0.91, 0.92, 0.935], 0.90, comparable=False)
    assert c.status == "not comparable"  # although the mean is above the published value
    exp = parse_experiment(BASE | {"settings": BASE["settings"] | {"dataset": "emnist-letters"}})
    ok, why = comparability(exp, {"dataset": "mnist", "is_sample": False})
    assert not ok and "emnist-letters" in why
    ok, why = comparability(parse_experiment(BASE), {"dataset": "mnist-5k", "is_sample": True})
    assert not ok and "sample" in why


def test_a_sample_run_is_marked_not_comparable_and_not_counted(tmp_path):
    from digitlab.report.document import marks

    spec = BASE | {"published": [{"what": "acc", "metric": "test_acc", "value": 0.01}]}
    run_experiment(parse_experiment(spec, "rep.toml"), tmp_path, n_jobs=1)
    exp = load_experiment(tmp_path / "rep")
    assert not is_comparable(exp)
    comps = [compare(exp, p) for p in exp.published]
    assert [c.status for c in comps] == ["not comparable"]  # never "meets" on the sample
    assert marks(comps) == "not comparable"


# ---------------------------------------------------------------------------- paths
@pytest.mark.parametrize("name", ["/tmp/elsewhere", "../up", "a/b", "..", ".hidden", "a\\b", ""])
def test_experiment_names_that_leave_the_runs_root_are_refused(name):
    with pytest.raises(ConfigError, match="plain folder name"):
        parse_experiment(BASE | {"name": name} if name else BASE | {"name": "a b/c"}, "x.toml")


def test_member_folders_are_plain_names():
    for label in ("..", ".", "../../etc", "/abs/path", "a/../b"):
        folder = slug(label)
        assert "/" not in folder and not folder.startswith(".") and folder not in ("", "..")


def test_a_symlinked_experiment_folder_is_refused_and_its_target_untouched(tmp_path):
    target = tmp_path / "precious"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    out = tmp_path / "runs"
    out.mkdir()
    os.symlink(target, out / "rep")
    with pytest.raises(ConfigError, match="not a plain folder"):
        run_experiment(parse_experiment(BASE, "rep.toml"), out, n_jobs=1)
    assert [p.name for p in target.iterdir()] == ["keep.txt"]


def test_nothing_is_written_outside_the_experiment_folder(tmp_path):
    out = tmp_path / "runs"
    run_experiment(parse_experiment(BASE, "rep.toml"), out, n_jobs=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs"]
    assert sorted(p.name for p in out.iterdir()) == ["rep"]


# ---------------------------------------------------------------------------- resume
def test_a_second_run_continues_only_what_is_missing(tmp_path):
    spec = BASE | {"members": [{"label": "a"}, {"label": "b", "init_from": "a"}, {"label": "c"}]}
    exp = parse_experiment(spec, "rep.toml")
    run_experiment(exp, tmp_path, n_jobs=1)
    folder = tmp_path / "rep"
    assert (folder / MARK).is_file()
    # 'c' failed half-way (no job.json, no checkpoint it could continue from, a stray
    # file), 'a' finished: only 'c' reruns, from the start
    (folder / "c" / DONE).unlink()
    (folder / "c" / STARTED).unlink()
    (folder / "c" / "partial.tmp").write_text("x")
    stamp = (folder / "a" / "checkpoint.npz").stat().st_mtime_ns
    seen = []
    record = run_experiment(exp, tmp_path, n_jobs=1, on_done=lambda m, r: seen.append(m.label))
    assert seen == ["c"]
    assert not (folder / "c" / "partial.tmp").exists()
    assert (folder / "a" / "checkpoint.npz").stat().st_mtime_ns == stamp
    assert [m.label for m in record.members] == ["a", "b", "c"]
    # a changed setting of 'a' reruns 'a' and the member chained to it, not 'c'
    changed = parse_experiment(
        spec | {"members": [{"label": "a", "lr": 0.1}, *spec["members"][1:]]}, "rep.toml"
    )
    seen.clear()
    run_experiment(changed, tmp_path, n_jobs=1, on_done=lambda m, r: seen.append(m.label))
    assert sorted(seen) == ["a", "b"]


def test_an_interrupted_reproduce_needs_no_clean_up(tmp_path):
    exps = [
        parse_experiment(BASE | {"name": "one"}, "one.toml"),
        parse_experiment(BASE | {"name": "two"}, "two.toml"),
    ]
    run_experiments(exps[:1], tmp_path, n_jobs=1)
    # 'two' was interrupted after creating its folder and half a member
    (tmp_path / "two" / "run").mkdir(parents=True)
    (tmp_path / "two" / MARK).write_text("x")
    (tmp_path / "two" / "run" / "config.toml").write_text("partial")
    records = run_experiments(exps, tmp_path, n_jobs=1)
    assert [r.name for r in records] == ["one", "two"]
    assert (tmp_path / "two" / "experiment.json").is_file()
    assert (tmp_path / "two" / "run" / DONE).is_file()


def test_a_failing_job_leaves_no_folder(tmp_path):
    exp = parse_experiment(BASE, "rep.toml")
    # fails at the first evaluation, after the job folder was made
    settings = exp.member_settings(exp.members[0]) | {"early_stopping": 2, "monitor": "val_bogus"}
    with pytest.raises(ConfigError, match="val_bogus"):
        run_member(settings, [], str(tmp_path / "job"))
    assert not (tmp_path / "job").exists()


# ----------------------------------------------------------------- protocol engine keys
def test_validation_on_test_offset_evaluations_and_bias_input(tmp_path):
    spec = BASE | {
        "settings": BASE["settings"] | {"bias_column": True, "eval_every": 5},
        "members": [
            {"label": "m", "validation": "test", "eval_offset": 1, "bias_input": 0.5},
        ],
    }
    record = run_experiment(parse_experiment(spec, "rep.toml"), tmp_path, n_jobs=1)
    m = record.members[0].metrics
    assert m["val_acc"] == m["test_acc"] and m["n_val"] == m["n_test"]
    rows = (tmp_path / "rep" / "m" / "history.csv").read_text().splitlines()
    col = rows[0].split(",").index("step")
    steps = [int(float(r.split(",")[col])) for r in rows[1:]]
    assert steps[:3] == [1, 6, 11]
    assert any("bias input 0.5" in n for n in m["notes"])


def test_stop_epoch_is_the_zero_based_epoch_of_the_last_step():
    assert stop_epoch({"steps": 31 * 33 + 6, "epochs": (31 * 33 + 6) / 31}) == 33
    assert stop_epoch({"steps": 62, "epochs": 2.0}) == 1
    assert stop_epoch({}) is None


# ------------------------------------------------------------------------------- CLI
def _toml(path, name: str) -> str:
    path.write_text(
        f'name = "{name}"\nsource = "000"\nsection = "s"\ntitle = "t"\nprotocol = "p"\n'
        'figures = ["table"]\nrepeats = 2\n[settings]\nmodel = "softmax"\n'
        'dataset = "mnist-5k"\nbatch = 256\nlr = 0.3\nepochs = 1\n'
    )
    return str(path)


def test_reproduce_twice_continues_and_an_escaping_name_is_one_line(tmp_path, capsys):
    from digitlab.cli import main

    out = tmp_path / "runs"
    args = ["reproduce", _toml(tmp_path / "ok.toml", "ok"), "--out", str(out), "--no-report"]
    assert main([*args, "--jobs", "1"]) == 0
    first = capsys.readouterr().out
    assert first.count("\n   ok / run (seed") == 2  # two repeats ran (their lines)
    assert first.count("slowest jobs: ok / run (seed") == 1
    assert main([*args, "--jobs", "1"]) == 0
    assert "ok / run (seed" not in capsys.readouterr().out  # nothing left to run
    bad = _toml(tmp_path / "bad.toml", str(tmp_path / "victim"))
    assert main(["reproduce", bad, "--out", str(out), "--no-report"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "plain folder name" in err[0]
    assert not (tmp_path / "victim").exists() and sorted(p.name for p in out.iterdir()) == ["ok"]


def test_a_linked_repeats_folder_is_refused_and_its_target_untouched(tmp_path):
    spec = BASE | {"repeats": 2}
    exp = parse_experiment(spec, "rep.toml")
    out = tmp_path / "runs"
    run_experiment(exp, out, n_jobs=1)
    target = tmp_path / "precious"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    repeats = out / "rep" / "repeats"
    import shutil

    shutil.rmtree(repeats)
    os.symlink(target, repeats)
    with pytest.raises(ConfigError, match="link"):
        run_experiment(exp, out, n_jobs=1)
    assert [p.name for p in target.iterdir()] == ["keep.txt"]


# ---------------------------------------------------------------- repeats trained together
FULL = BASE | {
    "settings": BASE["settings"]
    | {"batch": "full", "lr": 0.002, "reduction": "sum", "epochs": 6, "n_train": 1500,
       "eval_every": 2, "bias_column": True}
}


def chain_spec(repeats: int) -> dict:
    return FULL | {
        "members": [
            {"label": "first", "l1": 0.01, "repeats": repeats},
            {"label": "second", "l2": 0.005, "init_from": "first", "repeats": repeats,
             "bias_input": 0.5},
        ]
    }


def test_repeats_of_a_full_batch_chain_form_one_task_of_groups(tmp_path):
    from digitlab.experiments.engine import plan_jobs
    from digitlab.experiments.plan import plan_tasks

    exp = parse_experiment(chain_spec(3), "rep.toml")
    jobs, _, _ = plan_jobs([exp], tmp_path, {})
    tasks = plan_tasks(jobs)
    assert len(tasks) == 1
    assert [[jobs[i].member for i in g] for g in tasks[0]] == [[0, 0, 0], [1, 1, 1]]
    assert [jobs[i].repeat for i in tasks[0][1]] == [0, 1, 2]
    # mini-batches (shuffled per seed): one chain per repeat
    mini = chain_spec(2)
    mini["settings"] = FULL["settings"] | {"batch": 100}
    jobs, _, _ = plan_jobs([parse_experiment(mini, "rep.toml")], tmp_path / "m", {})
    assert [[[jobs[i].repeat for i in g] for g in t] for t in plan_tasks(jobs)] == [
        [[0], [0]],
        [[1], [1]],
    ]


def test_repeats_trained_together_equal_repeats_trained_alone(tmp_path):
    """The lock-step path (shared products) gives each seed the run it would have alone."""
    record = run_experiment(parse_experiment(chain_spec(3), "rep.toml"), tmp_path, n_jobs=1)
    alone = tmp_path / "alone"
    for member in record.members:
        assert member.repeats is not None
        for seed, folder, run in zip(
            member.repeats["seeds"], member.repeats["folders"], member.repeats["runs"],
            strict=True,
        ):  # fmt: skip
            folder = tmp_path / "rep" / folder
            settings = json.loads((folder / DONE).read_text())["settings"]
            second = member.label == "second"
            out = alone / f"{member.label}-{seed}"
            metrics = run_member(
                settings, [], str(out), init_from=str(alone / f"first-{seed}") if second else None,
                bias_input=0.5 if second else 1.0,
            )  # fmt: skip: the chain alone, link by link
            together, single = params(folder), params(out)
            for k in single:
                np.testing.assert_allclose(together[k], single[k], rtol=2e-4, atol=2e-5)
            assert metrics["test_acc"] == pytest.approx(run["test_acc"], abs=1e-3)
            assert metrics["steps"] == 6
            history = (folder / "history.csv").read_text().splitlines()
            assert len(history) == 1 + 3  # header + an evaluation every 2 epochs
            assert json.loads((folder / "metrics.json").read_text())["trained_together"] == 3
    # the experiment's time counts the shared training time once, not three times
    shared = [
        json.loads((tmp_path / "rep" / f / "metrics.json").read_text())["seconds"]
        for m in record.members
        for f in m.repeats["folders"]
    ]
    assert record.seconds == pytest.approx(sum(shared) / 3)
    # the three seeds really are different runs
    folders = record.members[0].repeats["folders"]
    w = [params(tmp_path / "rep" / f)["model/W"] for f in folders]
    assert len(folders) == 3 and not np.allclose(w[0], w[1], atol=1e-2)


def test_repeats_grouped_but_not_stacked_count_their_own_seconds(tmp_path):
    """Repeats planned as one lock-step group whose models cannot stack (more outputs than
    STACK_MAX_OUTPUTS) train one after another: each run's seconds are its own, and the
    experiment's time is their sum (the 1,000-output run's report said 3 h 25 min for 5 h 10)."""
    from digitlab.models.linear import STACK_MAX_OUTPUTS

    spec = FULL | {"members": [{"label": "wide", "repeats": 2, "outputs": STACK_MAX_OUTPUTS + 1}]}
    record = run_experiment(parse_experiment(spec, "rep.toml"), tmp_path, n_jobs=1)
    (member,) = record.members
    metrics = [
        json.loads((tmp_path / "rep" / f / "metrics.json").read_text())
        for f in member.repeats["folders"]
    ]
    assert all("trained_together" not in m and m["steps"] == 6 for m in metrics)
    assert record.seconds == pytest.approx(sum(m["seconds"] for m in metrics))
    from digitlab.report.document import write_report

    _, md = write_report(tmp_path)  # its header counts every seed's run
    assert "(1 experiment, 2 runs: every seed of a repeated member counted)" in md.read_text()


def test_fit_together_keeps_each_trainers_stopping_rule():
    from digitlab.models import SoftmaxModel
    from digitlab.train import EarlyStopping, Trainer, fit_together

    rng = np.random.default_rng(0)
    X = rng.random((900, 30)).astype(np.float32)
    y = (X[:, :3].argmax(1)).astype(np.int64)
    Xv, yv = X[:200], y[:200]

    def trainer(seed: int, stop: bool) -> Trainer:
        model = SoftmaxModel(30, 3, init="normal", rng=seed, reduction="sum")
        cbs = [EarlyStopping("val_acc", patience=1, start_epoch=0)] if stop else []
        return Trainer(model, schedule=0.01, batch_size="full", callbacks=cbs, rng=seed)

    pair = [trainer(1, False), trainer(2, True)]
    fit_together(pair, (X, y), (Xv, yv), epochs=40)
    alone = [trainer(1, False), trainer(2, True)]
    for t in alone:
        t.fit((X, y), (Xv, yv), epochs=40)
    for a, b in zip(pair, alone, strict=True):
        assert a.step == b.step and a.stop_reason == b.stop_reason
        np.testing.assert_allclose(a.model.params["W"], b.model.params["W"], rtol=1e-4, atol=1e-4)
    assert pair[0].step == 40 and pair[1].step < 40  # one stopped early, the other went on


def test_repeats_whose_seed_changes_the_data_run_one_by_one(tmp_path):
    """A random hold-out differs per seed: the repeats cannot share steps and run alone."""
    spec = chain_spec(2)
    spec["settings"] = FULL["settings"] | {"holdout": 0.1, "holdout_mode": "random"}
    record = run_experiment(parse_experiment(spec, "rep.toml"), tmp_path, n_jobs=1)
    for member in record.members:
        for folder in member.repeats["folders"]:
            metrics = json.loads((tmp_path / "rep" / folder / "metrics.json").read_text())
            assert "trained_together" not in metrics and metrics["steps"] == 6


# ------------------------------------------------------------- a killed job continues
def _history_without_time(folder) -> list[list[str]]:
    rows = [line.split(",") for line in (folder / "history.csv").read_text().splitlines()]
    keep = [i for i, name in enumerate(rows[0]) if name != "time"]
    return [[r[i] for i in keep] for r in rows]


def _kill_at(monkeypatch, step: int, folder: str | None = None) -> None:
    """Stop the run, as Ctrl-C or a killed worker would, right after the checkpoint of
    ``step`` (of the run in a folder named ``folder``, if given; the runs below checkpoint
    every step: ``checkpoint_seconds=0``)."""
    from digitlab.train.callbacks import Checkpoint

    original = Checkpoint.on_step_end

    def on_step_end(self, trainer, loss):
        original(self, trainer, loss)
        if trainer.step == step and folder in (None, self.path.parent.name):
            raise KeyboardInterrupt

    monkeypatch.setattr(Checkpoint, "on_step_end", on_step_end)


@pytest.mark.parametrize(
    "settings",
    [
        {"batch": 256, "epochs": 3, "shuffle": True, "eval_every": 5},  # the RNG carries on
        FULL["settings"] | {"epochs": 12, "eval_every": 2, "early_stopping": 50},
    ],
    ids=["shuffled-minibatch", "full-batch"],
)
def test_a_killed_job_continues_from_its_checkpoint_to_the_same_result(
    tmp_path, monkeypatch, settings
):
    # bit for bit at one BLAS thread count (OpenBLAS may round differently with another, and
    # the thread policy follows the machine's load)
    monkeypatch.setenv("DIGITLAB_THREADS", "1")
    spec = BASE | {"settings": BASE["settings"] | settings, "members": [{"label": "a"}]}
    exp = parse_experiment(spec, "rep.toml")
    ref = run_experiment(exp, tmp_path / "ref", n_jobs=1).members[0]
    with monkeypatch.context() as m:
        _kill_at(m, 7)
        with pytest.raises(KeyboardInterrupt):
            run_experiment(exp, tmp_path / "out", n_jobs=1, checkpoint_seconds=0)
    job = tmp_path / "out" / "rep" / "a"
    assert (job / STARTED).is_file() and not (job / DONE).exists()
    assert load_checkpoint(job / "checkpoint.npz")[1]["progress"]["step"] == 7
    member = run_experiment(exp, tmp_path / "out", n_jobs=1).members[0]
    metrics = json.loads((job / "metrics.json").read_text())
    assert metrics["resumed_at_step"] == 7
    for key in ("steps", "train_loss", "val_acc", "test_acc", "test_loss", "stop_reason"):
        assert metrics[key] == ref.metrics[key], key
    for k, v in params(tmp_path / "ref" / "rep" / "a").items():
        np.testing.assert_array_equal(params(job)[k], v)
    assert _history_without_time(job) == _history_without_time(tmp_path / "ref" / "rep" / "a")
    assert member.metrics["test_acc"] == ref.metrics["test_acc"]


def test_killed_repeats_trained_in_lock_step_continue_in_lock_step(tmp_path, monkeypatch):
    monkeypatch.setenv("DIGITLAB_THREADS", "1")  # bit for bit: one thread count
    exp = parse_experiment(chain_spec(2), "rep.toml")
    ref = run_experiment(exp, tmp_path / "ref", n_jobs=1)
    with monkeypatch.context() as m:
        _kill_at(m, 3, "seed-1")  # in the first link, once both repeats saved step 3
        with pytest.raises(KeyboardInterrupt):
            run_experiment(exp, tmp_path / "out", n_jobs=1, checkpoint_seconds=0)
    first = tmp_path / "out" / "rep" / "first"
    assert load_checkpoint(first / "checkpoint.npz")[1]["progress"]["step"] == 3
    record = run_experiment(exp, tmp_path / "out", n_jobs=1)
    for a, b in zip(record.members, ref.members, strict=True):
        assert b.label == a.label
        for folder in a.repeats["folders"]:
            got = json.loads((tmp_path / "out" / "rep" / folder / "metrics.json").read_text())
            want = json.loads((tmp_path / "ref" / "rep" / folder / "metrics.json").read_text())
            for key in ("steps", "train_loss", "val_acc", "test_acc", "trained_together"):
                assert got[key] == want[key], key  # the shared products: the same numbers
            assert got.get("resumed_at_step") == (3 if a.label == "first" else None)
            mine, theirs = params(tmp_path / "out" / "rep" / folder), params(
                tmp_path / "ref" / "rep" / folder
            )
            for k in theirs:
                np.testing.assert_array_equal(mine[k], theirs[k])


def test_repeats_stopped_at_different_steps_continue_one_by_one(tmp_path, monkeypatch):
    import shutil

    from digitlab.train.callbacks import Checkpoint

    exp = parse_experiment(chain_spec(2), "rep.toml")
    run_experiment(exp, tmp_path / "ref", n_jobs=1)
    seed1 = tmp_path / "out" / "rep" / "repeats" / "first" / "seed-1"
    original = Checkpoint.on_step_end

    def on_step_end(self, trainer, loss):
        original(self, trainer, loss)
        if trainer.step == 2 and self.path.parent == seed1:
            shutil.copy(self.path, tmp_path / "step2.npz")
        if trainer.step == 4:
            raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(Checkpoint, "on_step_end", on_step_end)
        with pytest.raises(KeyboardInterrupt):
            run_experiment(exp, tmp_path / "out", n_jobs=1, checkpoint_seconds=0)
    shutil.copy(tmp_path / "step2.npz", seed1 / "checkpoint.npz")  # seed 1 stopped earlier
    run_experiment(exp, tmp_path / "out", n_jobs=1)
    for folder, step in (("first", 4), ("repeats/first/seed-1", 2)):
        got = json.loads((tmp_path / "out" / "rep" / folder / "metrics.json").read_text())
        want = json.loads((tmp_path / "ref" / "rep" / folder / "metrics.json").read_text())
        assert got["resumed_at_step"] == step and "trained_together" not in got
        assert got["steps"] == want["steps"] == 6
        assert got["test_acc"] == pytest.approx(want["test_acc"], abs=1e-3)  # alone: rounding


def test_a_stopped_job_of_other_settings_or_with_a_broken_checkpoint_starts_again(
    tmp_path, monkeypatch
):
    spec = BASE | {"settings": BASE["settings"] | {"epochs": 2}, "members": [{"label": "a"}]}
    exp = parse_experiment(spec, "rep.toml")
    # a whole checkpoint of another update rule (momentum): it loads, but does not fit the job
    other = tmp_path / "momentum"
    run_member(exp.member_settings(exp.members[0]) | {"momentum": 0.9}, [], str(other))
    for damage in ("key", "truncated", "other rule", "other data", "linked key"):
        out = tmp_path / damage
        with monkeypatch.context() as m:
            _kill_at(m, 5)
            with pytest.raises(KeyboardInterrupt):
                run_experiment(exp, out, n_jobs=1, checkpoint_seconds=0)
        job = out / "rep" / "a"
        if damage == "key":
            (job / STARTED).write_text(json.dumps({"key": "0123456789abcdef"}))
        elif damage == "truncated":
            data = (job / "checkpoint.npz").read_bytes()
            (job / "checkpoint.npz").write_bytes(data[: len(data) // 2])
        elif damage == "other rule":
            (job / "checkpoint.npz").write_bytes((other / "checkpoint.npz").read_bytes())
        elif damage == "other data":  # trained on other images (DIGITLAB_DATA changed, say)
            arrays, meta = load_checkpoint(job / "checkpoint.npz")
            meta["extra"]["data"]["crc32"] = "0" * len(meta["extra"]["data"]["crc32"])
            save_checkpoint(job / "checkpoint.npz", arrays, meta)
        else:  # the key file a link to one that matches: links are not trusted
            (tmp_path / "key.json").write_text((job / STARTED).read_text())
            (job / STARTED).unlink()
            (job / STARTED).symlink_to(tmp_path / "key.json")
        (job / "stray.tmp").write_text("x")
        run_experiment(exp, out, n_jobs=1)
        metrics = json.loads((job / "metrics.json").read_text())
        assert "resumed_at_step" not in metrics and not (job / "stray.tmp").exists()


@pytest.mark.parametrize(
    ("exc", "kept"),
    [(ConfigError("boom"), False), (OSError(28, "No space left on device"), True)],
)
def test_an_error_removes_the_job_and_a_full_disk_keeps_it_to_continue(
    tmp_path, monkeypatch, exc, kept
):
    """A stop or a resource that ran out (memory, disk) keeps a job to continue; an error in
    the job itself (it would happen again) does not."""
    from digitlab.train.callbacks import Checkpoint

    original = Checkpoint.on_step_end

    def on_step_end(self, trainer, loss):
        original(self, trainer, loss)
        if trainer.step == 4:
            raise exc

    monkeypatch.setattr(Checkpoint, "on_step_end", on_step_end)
    exp = parse_experiment(BASE, "rep.toml")
    with pytest.raises(type(exc)):
        run_member(
            exp.member_settings(exp.members[0]), [], str(tmp_path / "job"), key="k",
            checkpoint_seconds=0,
        )  # fmt: skip
    assert (tmp_path / "job" / "checkpoint.npz").is_file() == kept
    assert (tmp_path / "job").exists() == kept


def test_a_job_running_in_another_process_is_neither_continued_nor_removed(tmp_path, monkeypatch):
    import fcntl

    spec = BASE | {"settings": BASE["settings"] | {"epochs": 2}, "members": [{"label": "a"}]}
    exp = parse_experiment(spec, "rep.toml")
    with monkeypatch.context() as m:
        _kill_at(m, 5)
        with pytest.raises(KeyboardInterrupt):
            run_experiment(exp, tmp_path, n_jobs=1, checkpoint_seconds=0)
    job = tmp_path / "rep" / "a"
    with open(job / "job.lock", "a") as held:  # the other process: a Dask worker, say
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(ConfigError, match="another digitlab process is running this job"):
            run_experiment(exp, tmp_path, n_jobs=1)
        assert (job / "checkpoint.npz").is_file() and not (job / DONE).exists()
    run_experiment(exp, tmp_path, n_jobs=1)  # once it let go
    assert json.loads((job / "metrics.json").read_text())["resumed_at_step"] == 5


def _reproduce_until_a_checkpoint(tmp_path, epochs=30):
    """A ``digitlab reproduce`` child (its own session) whose one job trains ``epochs``
    epochs (0.1 s each on a 2-core Zen 3) in a loky worker; returns ``(proc, command,
    environment, job folder)`` once the job has written a checkpoint."""
    import subprocess
    import sys
    import time
    from pathlib import Path

    exp = tmp_path / "long.toml"
    exp.write_text(
        'name = "long"\nsource = "000"\nsection = "s"\ntitle = "t"\nprotocol = "p"\n'
        'figures = ["table"]\n[settings]\nmodel = "mlp"\nhidden = [64]\n'
        'dataset = "mnist-5k"\nbatch = 16\nlr = 0.05\n'
        f"epochs = {epochs}\neval_every = 2250\n"
    )
    env = os.environ | {"PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    cmd = [sys.executable, "-m", "digitlab.cli", "reproduce", str(exp), "--out", "runs",
           "--no-report", "--jobs", "2", "--checkpoint-minutes", "0.002"]  # fmt: skip
    # output to files: a pipe would stay open as long as any worker lives
    with open(tmp_path / "out.txt", "w") as out, open(tmp_path / "err.txt", "w") as err:
        proc = subprocess.Popen(
            cmd, cwd=tmp_path, env=env, stdout=out, stderr=err, text=True,
            start_new_session=True,
        )  # fmt: skip
    job = tmp_path / "runs" / "long" / "run"
    deadline = time.monotonic() + 120
    while not (job / "checkpoint.npz").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)
    return proc, cmd, env, job


def test_a_killed_reproduce_continues_its_jobs_from_their_checkpoints(tmp_path):
    """The whole process group killed (a closed laptop, an out-of-time session) while a loky
    worker trains: the next ``digitlab reproduce`` continues from the last checkpoint."""
    import signal
    import subprocess

    proc, cmd, env, job = _reproduce_until_a_checkpoint(tmp_path)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    assert not (job / DONE).exists(), "the job ended before it was killed: make it longer"
    killed_at = load_checkpoint(job / "checkpoint.npz")[1]["progress"]["step"]
    assert killed_at > 0
    again = subprocess.run(cmd[:-2] + ["--checkpoint-minutes", "5"], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=600)  # fmt: skip
    assert again.returncode == 0, again.stderr
    line = next(x for x in again.stdout.splitlines() if "long / run (seed" in x)
    resumed = int(line.split("checkpoint at step ")[1].rstrip(")"))
    assert resumed >= killed_at  # the last checkpoint written before the kill
    metrics = json.loads((job / "metrics.json").read_text())
    assert metrics["resumed_at_step"] == resumed and metrics["steps"] == 30 * 225  # 3,600 rows / 16
    steps = [int(r.split(",")[0]) for r in (job / "history.csv").read_text().splitlines()[1:]]
    assert steps == [10 * 225, 20 * 225, 30 * 225]


def _stop_and_watch_the_workers(tmp_path, sig):
    """Send ``sig`` to a reproduction's command alone while its worker trains; return the
    command's exit status, the seconds until its workers were all gone (at most 8: the
    watch's fallback ends them only after 10), and the job folder."""
    import signal
    import time

    if not os.path.isdir("/proc/self"):
        pytest.skip("finds the worker processes in /proc")
    proc, _, _, job = _reproduce_until_a_checkpoint(tmp_path, epochs=300)
    try:
        workers = children(proc.pid)
        assert workers, "no worker process: the job ran in the command itself"
        sent = time.monotonic()
        os.kill(proc.pid, sig)
        rc = proc.wait(timeout=60)
        left = gone_within(workers, 8)
        return rc, left, time.monotonic() - sent, job
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # whatever is left of the group


def test_sigterm_to_reproduce_stops_its_workers_like_ctrl_c(tmp_path):
    """``kill`` (SIGTERM) sent to the command alone, as ``timeout``, a job scheduler or the app
    send it: the command stops as after Ctrl-C (exit 130, one line), and its loky workers
    stop with it instead of training on into the folder (SIGTERM's default action left them
    running to the end of their task)."""
    import signal

    rc, left, seconds, job = _stop_and_watch_the_workers(tmp_path, signal.SIGTERM)
    assert rc == 130 and left == []
    assert "digitlab: interrupted" in (tmp_path / "err.txt").read_text().splitlines()
    assert seconds < 8
    assert not (job / DONE).exists() and (job / "checkpoint.npz").is_file()


def test_workers_end_when_the_command_is_killed_alone(tmp_path):
    """SIGKILL (or the kernel's out-of-memory killer) of the command alone cannot be caught:
    each worker sees its parent gone, stops its job as after Ctrl-C (the checkpoint kept, no
    job.json) and ends, within seconds rather than at the end of its task or after its
    idle timeout."""
    import signal
    import time

    rc, left, seconds, job = _stop_and_watch_the_workers(tmp_path, signal.SIGKILL)
    assert rc == -signal.SIGKILL and left == []
    assert seconds < 5  # the KeyboardInterrupt, not the fallback 10 s later
    assert not (job / DONE).exists() and (job / "checkpoint.npz").is_file()
    before = {p.name: p.stat().st_mtime_ns for p in job.iterdir()}
    time.sleep(1.0)
    assert {p.name: p.stat().st_mtime_ns for p in job.iterdir()} == before


def test_reproduce_says_where_its_runs_stand_while_they_train(tmp_path, capsys, monkeypatch):
    """A long reproduction prints a progress line every PROGRESS_SECONDS: runs done, and the
    epoch each running job's folder has reached."""
    import re

    import digitlab.cli as cli

    monkeypatch.setattr(cli, "PROGRESS_SECONDS", 0.05)
    exp = tmp_path / "slow.toml"
    exp.write_text(
        'name = "slow"\nsource = "000"\nsection = "s"\ntitle = "t"\nprotocol = "p"\n'
        'figures = ["table"]\nrepeats = 2\n[settings]\nmodel = "mlp"\nhidden = [32]\n'
        'dataset = "mnist-5k"\nbatch = 16\nlr = 0.05\nepochs = 6\neval_every = 225\n'
    )
    args = ["reproduce", str(exp), "--out", str(tmp_path / "runs"), "--no-report", "--jobs", "1"]
    assert cli.main(args) == 0
    lines = capsys.readouterr().out.splitlines()
    progress = [x for x in lines if "runs done; training:" in x]
    seen = [re.search(r"(\d) of 2 runs done; training: slow / run \(seed (\d)\) at epoch (\d+) "
                      r"of 6", x) for x in progress]  # fmt: skip
    seen = [m.groups() for m in seen if m]
    assert seen, progress  # at least one line named the running job and its epoch
    assert all(1 <= int(e) <= 6 for _, _, e in seen)
    assert ("1", "1") in {(d, s) for d, s, _ in seen} or ("0", "0") in {(d, s) for d, s, _ in seen}
    done_at = lines.index(next(x for x in lines if x.startswith("   slow / run (seed 1)")))
    assert not any("runs done" in x for x in lines[done_at + 1 :])  # none after the end


def test_job_progress_reads_the_job_folders(tmp_path):
    from digitlab.experiments.engine import job_progress, plan_jobs

    spec = BASE | {"settings": BASE["settings"] | {"epochs": 3}, "members": [{"label": "a"}]}
    exp = parse_experiment(spec, "rep.toml")
    run_experiment(exp, tmp_path, n_jobs=1)
    jobs, _, _ = plan_jobs([exp], tmp_path, {})
    (state,) = job_progress([exp], jobs)
    assert (state.experiment, state.member, state.seed, state.state) == ("rep", "a", 0, "done")
    (tmp_path / "rep" / "a" / DONE).unlink()
    jobs[0].metrics = {}
    (state,) = job_progress([exp], jobs)
    assert state.state == "running" and state.epoch == 3 and state.epochs == 3


def test_progress_line_groups_the_seeds_of_a_member_at_one_epoch():
    from digitlab.cli import running_jobs_text
    from digitlab.experiments.engine import JobProgress

    def job(member, seed, epoch, epochs=1000):
        return JobProgress("ucsd-softmax", member, seed, "running", epoch, epochs)

    running = [job("L2 0.01", s, 600) for s in (3, 0, 1, 2, 4)]
    running += [job("L2 0.05", 0, 600), job("L2 0.05", 2, 600), job("L2 0.05", 1, 700)]
    running += [job("cs189", 5, 0.5, None)]
    assert running_jobs_text(running) == [
        "ucsd-softmax / L2 0.01 (seeds 0-4) at epoch 600 of 1000",
        "ucsd-softmax / L2 0.05 (seeds 0, 2) at epoch 600 of 1000",
        "ucsd-softmax / L2 0.05 (seed 1) at epoch 700 of 1000",
        "ucsd-softmax / cs189 (seed 5) at epoch 0.5",
    ]


def test_a_worker_reads_a_dataset_once_while_its_files_stay_the_same(tmp_path):
    import os

    from digitlab.experiments import jobdata
    from test_data_registry import make_idx_folder

    root = tmp_path / "data"
    written = make_idx_folder(root / "mnist", n_train=8, seed=1)
    jobdata._loaded.clear()
    first = jobdata.worker_dataset("mnist", root)
    assert jobdata.worker_dataset("mnist", root) is first  # read once
    np.testing.assert_array_equal(first.x_train, written["x_train"])
    with pytest.raises(ValueError, match="read-only"):
        first.x_train[0, 0, 0] = 1  # one job cannot change the next job's data
    again = make_idx_folder(root / "mnist", n_train=8, seed=2)  # the files replaced
    path = root / "mnist" / "train-images-idx3-ubyte.gz"
    os.utime(path, ns=(1, 1))  # a new time, as a later rewrite has (these two share a tick)
    changed = jobdata.worker_dataset("mnist", root)
    assert changed is not first
    np.testing.assert_array_equal(changed.x_train, again["x_train"])
    jobdata._loaded.clear()


@pytest.mark.parametrize("kind", ["softmax", "logistic"])
def test_evaluate_together_equals_each_models_own_evaluation(kind):
    from digitlab.data import Preprocessor
    from digitlab.data.rows import ImageRows
    from digitlab.models import LogisticModel, SoftmaxModel
    from digitlab.train.evaluation import evaluate, evaluate_together

    rng = np.random.default_rng(4)
    images = rng.integers(0, 256, (5000, 6, 5), dtype=np.uint8)  # more than one chunk
    prep = Preprocessor("scale01").fit(images[:10])
    source = ImageRows(images, prep)
    X = source.take(slice(None))
    k = 4 if kind == "softmax" else 2
    y = rng.integers(0, k, 5000)
    cls = SoftmaxModel if kind == "softmax" else LogisticModel
    args = (30, 4) if kind == "softmax" else (30,)
    models = [cls(*args, init="normal", rng=s, l2=0.01 * s, reduction="sum") for s in range(3)]
    for rows in (X, source):
        together = evaluate_together(models, rows, y)
        for m, got in zip(models, together, strict=True):
            own = evaluate(m, rows, y)
            assert got["acc"] == pytest.approx(own["acc"], abs=1 / 5000)
            assert got["loss"] == pytest.approx(own["loss"], rel=1e-5)
            assert got["objective"] == pytest.approx(own["objective"], rel=1e-5)
    assert len({r["acc"] for r in together}) > 1  # three models, three evaluations


def test_lock_step_trainers_evaluate_together_and_record_their_own_history(monkeypatch):
    import digitlab.train.lockstep as lockstep
    from digitlab.models import SoftmaxModel
    from digitlab.train import Trainer, fit_together

    calls = []
    real = lockstep.evaluate_together
    monkeypatch.setattr(
        lockstep, "evaluate_together", lambda ms, X, y: calls.append(len(ms)) or real(ms, X, y)
    )
    rng = np.random.default_rng(5)
    X = rng.random((900, 30)).astype(np.float32)
    y = (X[:, :3].argmax(1)).astype(np.int64)
    val, test = (X[:200], y[:200]), (X[200:400], y[200:400])

    def trainer(seed: int) -> Trainer:
        model = SoftmaxModel(30, 3, init="normal", rng=seed, reduction="sum")
        return Trainer(model, schedule=0.01, batch_size="full", rng=seed, eval_every=2)

    group = [trainer(s) for s in range(3)]
    fit_together(group, (X, y), val, test, epochs=10)
    assert calls and set(calls) == {3}  # five evaluations x train, val, test, all three at once
    assert len(calls) == 5 * 3
    for seed, t in enumerate(group):
        alone = trainer(seed)
        alone.fit((X, y), val, test, epochs=10)
        a, b = t.history.records, alone.history.records
        assert [r["step"] for r in a] == [r["step"] for r in b] == [2, 4, 6, 8, 10]
        for ra, rb in zip(a, b, strict=True):
            for key in ("train_acc", "val_acc", "test_acc"):
                assert ra[key] == pytest.approx(rb[key], abs=1 / 200), key
            assert ra["val_loss"] == pytest.approx(rb["val_loss"], rel=1e-3)


def test_slowest_jobs_count_a_lock_step_group_once():
    from digitlab.cli import slowest_jobs_text

    jobs = [(150.9, "draft", "no stop", s, True) for s in range(4)]
    jobs += [(150.8, "draft", "no stop", 4, True), (222.2, "cs189", "tanh 400", 0, False)]
    jobs += [(20.0, "task4", "l2=0", 0, False), (21.0, "task4", "l2=0", 1, False)]
    jobs += [(3.0, "logistic", "2 vs 3", 0, False)]
    assert slowest_jobs_text(jobs, n=4) == (
        "cs189 / tanh 400 (seed 0) 222.2 s; draft / no stop (seeds 0-4) 150.9 s; "
        "task4 / l2=0 (seed 1) 21.0 s; task4 / l2=0 (seed 0) 20.0 s"
    )
