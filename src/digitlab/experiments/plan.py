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

#: Share of one job's time each further repeat adds to a lock-step group (for ordering only).
LOCKSTEP_SHARE = 0.45
#: Rough machine figures for ordering tasks (only their ratios matter): seconds per step of
#: Python and NumPy overhead (single-sample augmentation included) and flop/s of the products.
STEP_SECONDS, FLOPS = 2e-4, 3e10
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


def job_cost(job: Job) -> float:
    """A rough time of a job in seconds, to start the longest tasks first.

    Steps (all stages' steps, or epochs times batches per epoch) times a per-step overhead
    plus the products' arithmetic: rows x features x (hidden units + outputs) x 6.
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
    width = 10.0 + (0.0 if model is None or model.convex else float(sum(s.get("hidden") or [])))
    return steps * (STEP_SECONDS + rows * 785 * width * 6 / FLOPS)


def longest_first(jobs: list[Job], tasks: list[list[list[int]]]) -> list[list[list[int]]]:
    """``tasks`` longest first (by :func:`job_cost`; a lock-step group of ``n`` repeats costs
    ``1 + LOCKSTEP_SHARE * (n - 1)`` jobs), so that no worker idles at the end."""
    cost = [
        sum(job_cost(jobs[g[0]]) * (1 + LOCKSTEP_SHARE * (len(g) - 1)) for g in t) for t in tasks
    ]
    return [tasks[k] for k in sorted(range(len(tasks)), key=lambda k: -cost[k])]
