"""Chains of the same shape (source 000's L1 chain and L2 chain) train as one task, each link
of both in one stacked lock-step group, when the workers are few enough for that to pay."""

from __future__ import annotations

import json

import numpy as np
import pytest

from digitlab.experiments import parse_experiment, run_experiment
from digitlab.experiments.engine import plan_jobs
from digitlab.experiments.plan import merge_chains, plan_tasks

SPEC = {
    "name": "two",
    "source": "000",
    "section": "test",
    "title": "two chains",
    "protocol": "softmax on the embedded sample",
    "figures": ["table"],
    "settings": {
        "model": "softmax", "dataset": "mnist-5k", "batch": "full", "lr": 0.002,
        "reduction": "sum", "epochs": 6, "n_train": 1500, "eval_every": 2, "init": "normal",
        "bias_column": True,
    },  # fmt: skip
    "members": [
        {"label": "a1", "l1": 0.01, "repeats": 2},
        {"label": "a2", "l1": 0.001, "init_from": "a1", "repeats": 2},
        {"label": "b1", "l2": 0.01, "repeats": 2},
        {"label": "b2", "l2": 0.001, "init_from": "b1", "repeats": 2},
    ],
}


def _labels(exp, jobs, task):
    return [sorted({exp.members[jobs[i].member].label for i in g}) for g in task]


def test_chains_of_one_shape_merge_when_it_pays_and_not_otherwise(tmp_path):
    exp = parse_experiment(SPEC, "two.toml")
    jobs, _, _ = plan_jobs([exp], tmp_path, {})
    tasks = plan_tasks(jobs)
    assert len(tasks) == 2
    one = merge_chains(jobs, tasks, 1)  # one worker: half the reads of the features, no loss
    assert len(one) == 1
    assert _labels(exp, jobs, one[0]) == [["a1", "b1"], ["a2", "b2"]]
    assert [len(g) for g in one[0]] == [4, 4]
    assert merge_chains(jobs, tasks, 2) == tasks  # two workers: side by side is shorter
    assert merge_chains(jobs, tasks, None) == tasks  # a cluster: unknown workers
    # other shapes never merge: a mini-batch chain, wide outputs
    for change in ({"batch": 100}, {"outputs": 300}):
        other = dict(SPEC, settings=SPEC["settings"] | change)
        exp2 = parse_experiment(other, "two.toml")
        jobs2, _, _ = plan_jobs([exp2], tmp_path / str(change), {})
        tasks2 = plan_tasks(jobs2)
        assert merge_chains(jobs2, tasks2, 1) == tasks2


def test_merged_chains_give_each_job_its_own_run(tmp_path, monkeypatch):
    import digitlab.experiments.execute as execute

    exp = parse_experiment(SPEC, "two.toml")
    merged = run_experiment(exp, tmp_path / "merged", n_jobs=1)
    monkeypatch.setattr(execute, "merge_chains", lambda jobs, tasks, workers: tasks)
    apart = run_experiment(exp, tmp_path / "apart", n_jobs=1)
    for m1, m2 in zip(merged.members, apart.members, strict=True):
        for f1, f2 in zip(m1.repeats["folders"], m2.repeats["folders"], strict=True):
            a = json.loads((tmp_path / "merged" / "two" / f1 / "metrics.json").read_text())
            b = json.loads((tmp_path / "apart" / "two" / f2 / "metrics.json").read_text())
            assert a["trained_together"] == 4 and b["trained_together"] == 2
            assert a["steps"] == b["steps"] == 6
            for key in ("train_loss", "val_loss", "test_loss"):
                assert a[key] == pytest.approx(b[key], rel=1e-4), key
            assert a["test_acc"] == pytest.approx(b["test_acc"], abs=2e-3)
    # the seeds' runs differ, and the two chains' penalties did act
    w = [np.asarray(m.metrics["weight_norm"]) for m in merged.members]
    assert len({float(x) for x in w}) == 4
