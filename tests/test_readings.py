"""Readings and tasks (issue 24): one primary reading per experiment, chosen by evidence and
fixed in its file; "chosen" only among the primary reading's members of one task; the summary's
headline, marks and "chosen" from that reading, alternative readings counted apart."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from digitlab.errors import ConfigError
from digitlab.experiments import builtin_experiments, parse_experiment, run_experiment
from digitlab.report import ExperimentRecord, MemberRecord, compare, load_experiment, write_report
from digitlab.report.document import Comparison, fmt_value, headline, marks, summary_rows

#: Two tasks (2 vs 3, 2 vs 8) and two readings; the member with the most epochs is chosen, and
#: the longest members are of the alternative reading: if readings or tasks competed, another
#: member would be chosen.
TWO = {
    "name": "two",
    "source": "000",
    "section": "test",
    "title": "two tasks, two readings",
    "protocol": "logistic regression on the embedded sample",
    "figures": ["table"],
    "select": {"metric": "epochs", "mode": "max"},
    "readings": {"primary": "as coded", "alternatives": ["as written"], "why": "the code ran"},
    "settings": {"model": "logistic", "dataset": "mnist-5k", "batch": 256, "lr": 0.3},
    "members": [
        {"label": "2v3 short", "task": "2 vs 3", "classes": [2, 3], "epochs": 1},
        {"label": "2v3 long", "task": "2 vs 3", "classes": [2, 3], "epochs": 2},
        {"label": "2v3 text", "task": "2 vs 3", "classes": [2, 3], "epochs": 3,
         "reading": "as written"},
        {"label": "2v8", "task": "2 vs 8", "classes": [2, 8], "epochs": 1},
        {"label": "2v8 text", "task": "2 vs 8", "classes": [2, 8], "epochs": 3,
         "reading": "as written"},
    ],
    "published": [  # a row of a member that is not chosen comes first: never the headline
        {"what": "2v3 short", "member": "2v3 short", "metric": "test_acc", "value": 0.0},
        {"what": "2v3 chosen", "task": "2 vs 3", "metric": "test_acc", "value": 0.5},
        {"what": "2v3 text", "member": "2v3 text", "metric": "test_acc", "value": 1.0},
        {"what": "2v8 text", "member": "2v8 text", "metric": "test_acc", "value": 0.0},
        {"what": "2v8 chosen", "task": "2 vs 8", "metric": "test_acc", "value": 0.99},
    ],
}  # fmt: skip


def _summary(md: str) -> list[list[str]]:
    """The cells of the Markdown summary table's rows."""
    part = md.split("## Summary", 1)[1].split("\n## ", 1)[0]
    lines = [x for x in part.splitlines() if x.startswith("|")][2:]  # header, rule
    return [[c.strip() for c in x.strip("|").split(" | ")] for x in lines]


def test_report_of_two_tasks_and_two_readings(tmp_path: Path) -> None:
    record = run_experiment(parse_experiment(TWO, "two.toml"), tmp_path, n_jobs=1)
    # one chosen member per task, among the primary reading's members of that task only
    assert record.chosen_per_task == {"2 vs 3": "2v3 long", "2 vs 8": "2v8"}
    assert record.chosen == "2v3 long"
    assert {m.label: m.reading for m in record.members}["2v8 text"] == "as written"
    # as a run on the full data would be: the marks count (the sample is "not comparable")
    path = tmp_path / "two" / "experiment.json"
    raw = json.loads(path.read_text())
    raw["data"] |= {"is_sample": False, "comparable": True, "dataset": "mnist"}
    path.write_text(json.dumps(raw))
    exp = load_experiment(tmp_path / "two")
    assert exp.to_json() == raw  # readings, tasks and chosen_per_task round-trip
    _, md = write_report(tmp_path)
    text = md.read_text()
    rows = _summary(text)
    assert [r[2] for r in rows] == ["two tasks, two readings · task 2 vs 3",
                                    "two tasks, two readings · task 2 vs 8"]  # fmt: skip
    acc = {m.label: m.metrics["test_acc"] for m in exp.members}
    by_task = {"2 vs 3": rows[0], "2 vs 8": rows[1]}
    for task, published, n_primary in (("2 vs 3", 0.5, 2), ("2 vs 8", 0.99, 1)):
        row = by_task[task]
        chosen = exp.chosen_of(task)
        assert row[4] == "as coded" and row[5] == chosen
        # the headline is the chosen member's row of the primary reading
        pair = (fmt_value("test_acc", published), fmt_value("test_acc", acc[chosen]))
        assert row[6] == " → ".join(pair)
        # the marks count the task's primary rows only; its alternative row is counted apart
        good = sum(p["value"] <= acc[exp.entry_member(p).label] for p in exp.published
                   if exp.entry_task(p) == task and exp.entry_reading(p) == "as coded")  # fmt: skip
        assert row[7] == f"{good}/{n_primary}" and row[8] == "1"
    section = text.split("## two tasks, two readings", 1)[1]
    assert section.count("alternative reading: as written") == 2 + 2  # rows and members
    assert "| 2v3 long (chosen) |" in section and "| 2v8 (chosen) |" in section
    assert "Primary reading: as coded. the code ran" in section


def _comp(what: str, status: str, **kw: Any) -> Comparison:
    return Comparison(what, kw.pop("member", "m"), "test_acc", 0.9, 0.8, -10.0, 1.0, status, **kw)


def test_headline_and_marks_come_from_the_primary_reading_only() -> None:
    comps = [
        _comp("other member", "meets"),
        _comp("alternative", "meets", alternative=True, reading="as written"),
        _comp("chosen", "outside", chosen=True),
        _comp("chosen again", "within", chosen=True),
    ]
    assert headline(comps) == "90.00% → 80.00%"  # the first primary row of the chosen member
    assert headline(comps[:2]) == "—"  # no row of the chosen member: no headline
    assert marks(comps) == "2/3"  # the alternative row is not counted
    assert marks([*comps, _comp("sample", "not comparable")]) == "2/3"
    assert marks(comps[1:2]) == "—" and marks([_comp("s", "not comparable")]) == "not comparable"


def test_records_of_older_versions_are_one_reading_and_one_task(tmp_path: Path) -> None:
    folder = tmp_path / "old"
    folder.mkdir()
    members = [{"label": lab, "folder": lab, "metrics": {"test_acc": acc}}
               for lab, acc in (("a", 0.9), ("b", 0.95))]  # fmt: skip
    raw = {"name": "old", "members": members, "chosen": "b",
           "data": {"dataset": "mnist", "is_sample": False, "comparable": True},
           "published": [{"member": "a", "metric": "test_acc", "value": 0.9},
                         {"member": "chosen", "metric": "test_acc", "value": 0.97}]}  # fmt: skip
    (folder / "experiment.json").write_text(json.dumps(raw))
    exp = load_experiment(folder)
    assert exp.to_json()["members"] == [m | {"overrides": {}, "settings": {}} for m in members]
    assert exp.tasks == [""] and exp.primary_reading == "" and exp.chosen_of("") == "b"
    comps = [compare(exp, p) for p in exp.published]
    assert [c.alternative for c in comps] == [False, False]
    assert [c.chosen for c in comps] == [False, True] and comps[1].member == "b"
    ((*_, chosen, first, count, alternatives, _, _),) = summary_rows(exp, comps)
    assert (chosen, first, count, alternatives) == ("b", "97.00% → 95.00%", "1/2", "0")


def test_a_task_of_alternative_readings_only_has_no_chosen_member(tmp_path: Path) -> None:
    members = [
        MemberRecord(label, tmp_path / label, {}, {}, {"test_acc": 0.9}, reading="as written")
        for label in ("a", "b")
    ]
    exp = ExperimentRecord(
        tmp_path, name="e", source="001", section="", title="evidence", protocol="", choices="",
        figures=[], data={"is_sample": False, "comparable": True}, members=members, chosen="b",
        published=[{"member": "a", "metric": "test_acc", "value": 0.8}], seconds=1.0,
        readings={"primary": "as coded", "alternatives": ["as written"], "why": "x"},
    )  # fmt: skip
    assert exp.chosen_of("") is None and not exp.is_chosen(members[1])
    comps = [compare(exp, p) for p in exp.published]
    assert comps[0].alternative and comps[0].status == "meets"
    ((*_, chosen, first, count, alternatives, _, _),) = summary_rows(exp, comps)
    assert (chosen, first, count, alternatives) == ("—", "—", "—", "1")
    spec = parse_experiment(BAD | {"members": ALL_TEXT}, "e.toml")
    assert spec.competitors("2 vs 3") == []  # parsed: an experiment of evidence only


BAD = {k: v for k, v in TWO.items() if k != "published"}
ALL_TEXT = [m | {"reading": "as written"} for m in TWO["members"]]
ROW = {"what": "x", "metric": "test_acc", "value": 1}


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"readings": {"primary": "as coded"}}, "readings must give"),
        ({"readings": {"primary": "x", "alternatives": ["x"], "why": "y"}}, "readings must give"),
        ({"readings": {"primary": "as coded", "why": "y"}}, "which \\[readings\\] does not"),
        ({"members": [*TWO["members"], {"label": "free", "classes": [2, 3]}]}, "every member"),
        ({"members": ALL_TEXT, "published": [ROW | {"task": "2 vs 8"}]}, "no member of the"),
        ({"published": [ROW]}, "needs task"),
        ({"published": [ROW | {"task": "2 vs 3", "reading": "as written"}]}, "says reading"),
        ({"published": [ROW | {"member": "2v8", "task": "2 vs 3"}]}, "says task"),
        ({"members": [m | {"task": ""} for m in TWO["members"]]}, "non-empty string"),
    ],
)
def test_bad_readings_and_tasks_are_refused(change: dict[str, Any], words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        parse_experiment(BAD | change, "bad.toml")


def test_every_shipped_experiment_fixes_one_reading_and_its_headline() -> None:
    exps = builtin_experiments()
    for e in exps.values():
        assert e.readings["primary"] and e.readings["why"], e.name
        primary = [p for p in e.published if p["reading"] == e.readings["primary"]]
        for task in {p["task"] for p in primary}:
            # every task with published numbers has a headline, whichever member is chosen:
            # a row of "chosen", or a row of every member that may be chosen
            named = {p["member"] for p in primary if p["task"] == task}
            competitors = {e.members[i].label for i in e.competitors(task)}
            assert "chosen" in named or competitors <= named, (e.name, task)
    # the code where the source has code (000's softmax; 004's starter code), the text where
    # the code does not fit the published choice (001) or is not printed (000's logistic)
    assert exps["ucsd-softmax"].readings["primary"] == "as coded"
    assert exps["ucsd-draft-softmax"].readings["primary"] == "as written"
    assert exps["tdt4265-task2"].readings["primary"] == "2020 starter code"
    assert "no logistic-regression code" in exps["ucsd-logistic"].readings["why"]
    # different tasks are side by side, never chosen one against the other
    assert exps["ucsd-logistic"].tasks == ["2 vs 3", "2 vs 8"]
    assert exps["ucsd-logistic-minibatch"].tasks == ["2 vs 3", "2 vs 8"]
    assert exps["tdt4265-task2de"].tasks == ["2d, no shuffling", "2e, shuffling"]
    softmax = exps["ucsd-softmax"]
    assert all(softmax.members[i].label.startswith("as coded") for i in softmax.competitors(""))
