"""Verdict records of ``digitlab check`` and their terminal and JSON forms."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any


@dataclass
class CheckResult:
    """The verdict on one function (or one combined check) of one file.

    Attributes
    ----------
    file : str
        The file checked.
    function : str
        The learner's function or method (``"SoftmaxModel.backward"``), or a combined check
        (``"gradient check"``, ``"initial loss"``, ``"overfit 100 images"``), or
        ``"<module>"`` when the file itself could not be loaded.
    ok : bool
    message : str
        One sentence: what is wrong and what to change, or what passed.
    figures : dict
        Relative and absolute errors, shapes, first differing entries, seconds, ...
    details : list of str
        Further lines for the terminal (the case that failed, the line of code...).
    line : int, optional
        The line of the learner's file at fault, where known.
    """

    file: str
    function: str
    ok: bool
    message: str
    figures: dict[str, Any] = field(default_factory=dict)
    details: list[str] = field(default_factory=list)
    line: int | None = None
    diagnosis: str | None = None

    def to_json(self) -> dict[str, Any]:
        """A JSON-able record (NaN and inf figures become strings)."""
        record: dict[str, Any] = {
            "file": self.file,
            "function": self.function,
            "ok": self.ok,
            "message": self.message,
        }
        if self.diagnosis:
            record["diagnosis"] = self.diagnosis
        if self.line is not None:
            record["line"] = self.line
        record["figures"] = _jsonable(self.figures)
        if self.details:
            record["details"] = list(self.details)
        return record


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def _figure_lines(figures: dict[str, Any]) -> list[str]:
    lines = []
    if "relative_error" in figures:
        lines.append(
            f"relative error {figures['relative_error']:.3g}, "
            f"largest absolute error {figures['max_abs_error']:.3g}"
        )
    if "received_shape" in figures and figures["received_shape"] != figures.get("expected_shape"):
        lines.append(
            f"shape expected {figures['expected_shape']}, received {figures['received_shape']}"
        )
    if figures.get("nonfinite_entries"):
        lines.append(f"{figures['nonfinite_entries']} entries are NaN or inf")
    if "received" in figures:
        lines.append(f"received {figures['received']}")
    for index, exp, got in figures.get("first_differences", []):
        at = f"at {index}: " if index else ""
        lines.append(f"{at}expected {exp:.6g}, received {got:.6g}")
    return lines


def format_results(results: list[CheckResult]) -> str:
    """The terminal report: per file, one line per check (✓ or ✗ and the reason), the
    evidence indented under each failure, and a closing count."""
    lines: list[str] = []
    current = None
    for r in results:
        if r.file != current:
            current = r.file
            lines.append(("" if not lines else "\n") + r.file)
        mark = "✓" if r.ok else "✗"
        lines.append(f"  {mark} {r.function}: {r.message}")
        if not r.ok:
            lines += [f"      {d}" for d in r.details]
            lines += [f"      {d}" for d in _figure_lines(r.figures)]
    failed = sum(not r.ok for r in results)
    files = len({r.file for r in results})
    total = f"{len(results)} check{'s' if len(results) != 1 else ''}"
    summary = f"{failed} of {total} failed" if failed else f"{total} passed"
    lines.append(f"\n{summary} ({files} file{'s' if files != 1 else ''})")
    return "\n".join(lines)
