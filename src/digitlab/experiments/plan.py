"""Planning: the jobs of an experiment, the tasks that run them, and a rough cost of each.

A *job* is one run of one member with one seed: repeat 0 writes ``<experiment>/<member>/``,
repeat ``r`` writes ``<experiment>/repeats/<member>/seed-<s>/``. A job of a chained member
(``init_from``) runs after the job it starts from. A *task* is a chain of jobs run in order
in one worker; its groups are the repeats of one member that may train in lock-step.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from digitlab.experiments.spec import ExperimentSpec

#: A lock-step group of ``n >= 2`` stacked members costs ``STACK_BASE + STACK_SHARE * n``
#: times one member alone (full-batch softmax, 18,000 x 785, one thread, AMD EPYC Zen 3: one
#: alone 24.1 ms a step; stacked 2, 5, 10, 20: 21.0, 41.1, 68.3, 130.7 ms).
STACK_BASE, STACK_SHARE = 0.35, 0.25
#: Rough machine figures for ordering tasks (only their ratios matter): seconds per step of
#: Python and NumPy overhead, seconds per augmented row (the CS189 network's single-sample
#: steps: 0.5 ms each, half of it the image's distortion) and flop/s of the products.
STEP_SECONDS, AUGMENT_SECONDS, FLOPS = 2e-4, 2.5e-4, 3e10
#: Settings in which the members of two chains may differ and still train in one lock-step
#: group (the penalty acts per model; the seed draws only the starting weights of a
#: shareable job, which the worker checks).
STACK_FREE_KEYS = frozenset({"l1", "l2", "seed"})
#: A member of an experiment: (experiment index, member index).
MemberKey = tuple[int, int]


@dataclass
class Job:
    """One run of one member with one seed.

    ``key`` identifies what the job computes (settings, stages, engine keys, the key of the
    job it starts from); ``after`` is the index of that job in the job list, or None.
    """

    exp: int
    member: int
    repeat: int
    settings: dict[str, Any]
    stages: list[dict[str, Any]]
    folder: str
    bias_input: float = 1.0
    validation: str = "split"
    eval_offset: int = 0
    after: int | None = None
    key: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)
    ran: bool = False
    #: the step of the checkpoint of a stopped run of this job in its folder, to continue
    #: from (see ``execute.resumable``); None: it starts from the beginning
    resume: int | None = None
    #: seconds of training between its checkpoints (not part of what it computes)
    checkpoint_seconds: float = 300.0
    #: the client's dataset identity (:func:`digitlab.runner.data_identity`), checked by the
    #: worker that runs the job
    data: dict[str, Any] | None = None


def _digest(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def add_jobs(
    jobs: list[Job], e: int, exp: ExperimentSpec, folder: Path, settings: list[dict[str, Any]]
) -> list[Job]:
    """Append the jobs of experiment number ``e`` (written under ``folder``, its members'
    full settings ``settings``) to ``jobs``, chained jobs after the job they start from;
    return the new ones."""
    from digitlab.runner import data_identity

    start = len(jobs)
    index: dict[MemberKey, int] = {}
    identities: dict[str, dict[str, Any]] = {}  # the data each job must find, by location
    labels = [m.label for m in exp.members]
    for k, (m, s) in enumerate(zip(exp.members, settings, strict=True)):
        for r in range(m.repeats):
            seed = int(s["seed"]) + r
            sub = folder / m.folder if r == 0 else folder / "repeats" / m.folder / f"seed-{seed}"
            after = None if m.init_from is None else index[(labels.index(m.init_from), r)]
            job = Job(
                e, k, r, s | {"seed": seed}, [dict(st) for st in exp.stages], str(sub),
                m.bias_input, m.validation, m.eval_offset, after,
            )  # fmt: skip
            job.key = _digest(
                [job.settings, job.stages, job.bias_input, job.validation, job.eval_offset,
                 None if after is None else jobs[after].key]
            )  # fmt: skip
            where = json.dumps([s.get("dataset"), s.get("data_root")])
            if where not in identities:
                identities[where] = data_identity(s)
            job.data = identities[where]  # travels with the job to its worker
            index[(k, r)] = len(jobs)
            jobs.append(job)
    return jobs[start:]


def init_folder(jobs: list[Job], i: int) -> str | None:
    """The folder of the job that job ``i`` starts from, or None."""
    after = jobs[i].after
    return None if after is None else jobs[after].folder


def _shareable(job: Job) -> bool:
    """Whether a job's repeats may share steps: no stages, full-batch descent, no
    augmentation, a linear model."""
    from digitlab.models import MODELS
    from digitlab.models.linear import LinearModel

    st = job.settings
    linear = issubclass(MODELS[st["model"]], LinearModel)
    return not job.stages and st.get("batch") == "full" and not st.get("augment") and linear


def _chains(jobs: list[Job]) -> tuple[dict[MemberKey, list[int]], list[list[MemberKey]]]:
    """Each member's job indices by ``(exp, member)``, and the chains of members: a root
    member, then the members that start from it (breadth first)."""
    members: dict[MemberKey, list[int]] = {}
    for i, j in enumerate(jobs):
        members.setdefault((j.exp, j.member), []).append(i)
    follows: dict[MemberKey, list[MemberKey]] = {}
    roots = []
    for key, idx in members.items():
        after = jobs[idx[0]].after
        if after is None:
            roots.append(key)
        else:
            follows.setdefault((jobs[after].exp, jobs[after].member), []).append(key)
    chains = []
    for root in roots:
        chain, todo = [], [root]
        while todo:  # breadth first: a member after the one it starts from
            key = todo.pop(0)
            chain.append(key)
            todo += follows.get(key, [])
        chains.append(chain)
    return members, chains


def plan_tasks(jobs: list[Job]) -> list[list[list[int]]]:
    """The jobs as tasks: each a list of groups (job indices run together), run in order.

    A group holds one member's repeats; a chain's members follow the member they start
    from. Repeats of a chain whose every member can share steps across repeats (no stages,
    full-batch descent, no augmentation, a linear model) form one task; other chains run one
    task per repeat.
    """
    members, chains = _chains(jobs)
    tasks = []
    for chain in chains:
        if all(_shareable(jobs[i]) for key in chain for i in members[key]):
            tasks.append([members[key] for key in chain])
        else:
            n = len(members[chain[0]])
            tasks += [[[members[key][r]] for key in chain] for r in range(n)]
    return tasks


def _stack_key(job: Job) -> str | None:
    """What two jobs must share to train in one stacked lock-step group (everything but
    :data:`STACK_FREE_KEYS`); None for a job that cannot (see :func:`_shareable`, and outputs
    wider than :data:`~digitlab.models.linear.STACK_MAX_OUTPUTS`, which run one by one)."""
    from digitlab.models.linear import STACK_MAX_OUTPUTS

    outputs = job.settings.get("outputs")
    if not _shareable(job) or (outputs is not None and int(outputs) > STACK_MAX_OUTPUTS):
        return None
    kept = {k: v for k, v in job.settings.items() if k not in STACK_FREE_KEYS}
    return _digest([kept, job.bias_input, job.validation, job.eval_offset])


def group_cost(jobs: list[Job], group: list[int]) -> float:
    """A rough time of a group of jobs: stacked in lock-step (:data:`STACK_BASE`,
    :data:`STACK_SHARE`) when they can be, else one after another."""
    one = job_cost(jobs[group[0]])
    if len(group) == 1:
        return one
    if _group_key(jobs, group) is not None:
        return one * (STACK_BASE + STACK_SHARE * len(group))
    return sum(job_cost(jobs[i]) for i in group)


def _group_key(jobs: list[Job], group: list[int]) -> str | None:
    """The stack key all jobs of ``group`` share (:func:`_stack_key`), or None."""
    keys = {_stack_key(jobs[i]) for i in group}
    return keys.pop() if len(keys) == 1 else None


def task_cost(jobs: list[Job], task: list[list[int]]) -> float:
    """A rough time of a task: its groups' times, one after another."""
    return sum(group_cost(jobs, g) for g in task)


def merge_chains(
    jobs: list[Job], tasks: list[list[list[int]]], workers: int | None
) -> list[list[list[int]]]:
    """Tasks of ``workers`` parallel workers, where chains of the same shape train as one.

    Two chains whose groups can stack link by link (the same settings but the penalty and
    the seed: source 000's L1 chain and its L2 chain, say) cost less as one task of groups
    twice as wide (the products read the features once for all), but one task is a longer
    path than two side by side. They are merged when the estimated wall time, the larger of
    the work per worker and the longest task (:func:`task_cost`), goes down; never when the
    number of workers is unknown (``None``: a Dask cluster).
    """
    if workers is None or workers < 1:
        return tasks
    shapes: dict[tuple[str | None, ...], list[list[list[int]]]] = {}
    for t in tasks:
        keys = tuple(_group_key(jobs, g) for g in t)
        if None not in keys:
            shapes.setdefault(keys, []).append(t)
    out = [(t, task_cost(jobs, t)) for t in tasks]  # each task with its cost, computed once
    for same in shapes.values():
        merged = same[0]
        for t in same[1:]:
            trial = [a + b for a, b in zip(merged, t, strict=True)]
            rest = [(u, c) for u, c in out if u is not merged and u is not t]
            candidate = [*rest, (trial, task_cost(jobs, trial))]
            if _wall(candidate, workers) < _wall(out, workers):
                out, merged = candidate, trial
    return [t for t, _ in out]


def _wall(costed: list[tuple[list[list[int]], float]], workers: int) -> float:
    """The estimated wall time of tasks with their costs on ``workers``: the larger of the
    work per worker and the longest task."""
    costs = [c for _, c in costed]
    return max(sum(costs) / workers, max(costs, default=0.0))


def job_cost(job: Job) -> float:
    """A rough time of a job in seconds, to start the longest tasks first.

    Steps (all stages' steps, or epochs times batches per epoch) times a per-step overhead
    (and the augmentation of each row of the batch) plus the products' arithmetic: rows x
    features x (hidden units + outputs) x 6, and each evaluation's, rows x features x
    (hidden + outputs) x 2 over the training set and the other splits.
    """
    from digitlab.models import MODELS

    s = job.settings
    n = float(s.get("n_train") or 20000)
    batch = s.get("batch")
    rows = n if batch == "full" else 1.0 if batch == "sgd" else float(batch or n)
    if isinstance(batch, float):
        rows = max(1.0, batch * n)
    if job.stages:
        steps = float(sum(st["steps"] for st in job.stages))
    elif s.get("steps"):
        steps = float(s["steps"])
    else:
        steps = float(s.get("epochs") or 1) * math.ceil(n / rows)
    model = MODELS.get(s.get("model", ""))
    width = float(s.get("outputs") or (1 if s.get("model") == "logistic" else 10))
    width += 0.0 if model is None or model.convex else float(sum(s.get("hidden") or []))
    augment = AUGMENT_SECONDS * rows if s.get("augment") else 0.0
    per_epoch = math.ceil(n / rows)
    every = s.get("eval_every", "epoch")
    if every == "epoch" or not isinstance(every, int | float):
        between = float(per_epoch)
    else:  # a fraction of an epoch or a number of steps
        between = max(1.0, every * per_epoch if isinstance(every, float) else float(every))
    patience = s.get("early_stopping") or 0
    if isinstance(patience, int) and 0 < patience and not job.stages:
        # an early stop comes a few patiences after it may first come (a guess, for order)
        start = float(s.get("early_stopping_start") or 0.0) * per_epoch
        steps = min(steps, start + (4 * patience + 5) * between)
    evals = steps / between
    eval_rows = n * 1.2  # the training set and, roughly, the hold-out and test sets
    return steps * (STEP_SECONDS + augment + rows * 785 * width * 6 / FLOPS) + evals * (
        eval_rows * 785 * width * 2 / FLOPS
    )


def longest_first(jobs: list[Job], tasks: list[list[list[int]]]) -> list[list[list[int]]]:
    """``tasks`` longest first (by :func:`task_cost`), so that no worker idles at the end."""
    cost = [task_cost(jobs, t) for t in tasks]
    return [tasks[k] for k in sorted(range(len(tasks)), key=lambda k: -cost[k])]
