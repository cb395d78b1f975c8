"""Exceptions raised by digitlab.

Every error a user can cause has its own class and a one-line message that names the file,
argument or value at fault. The CLI turns any :class:`DigitlabError` into that line and exit
status 2.
"""

from __future__ import annotations


class DigitlabError(Exception):
    """Base class of every error digitlab raises on bad input."""


class DataError(DigitlabError, ValueError):
    """A data file or array is malformed (bad IDX header, count mismatch, NaN, bad labels)."""


class DatasetNotFoundError(DigitlabError, FileNotFoundError):
    """No source holds the requested dataset (or a named file does not exist)."""


class DownloadError(DigitlabError):
    """A download failed or its SHA-256 digest did not match; nothing was written."""


class ShapeError(DigitlabError, ValueError):
    """An array passed to a model or function has the wrong shape or dtype."""


class ConfigError(DigitlabError, ValueError):
    """A setting is unknown, out of range or inconsistent with another."""


class CheckpointError(DigitlabError):
    """A checkpoint is missing, malformed or incompatible with the requested run."""


class DivergenceError(DigitlabError, FloatingPointError):
    """Training produced a NaN or infinite loss."""


class ReportError(DigitlabError):
    """Saved run data needed for a figure or the report is missing or malformed."""


class ServeError(DigitlabError):
    """A request to ``digitlab serve`` names a missing run or a path outside the runs root,
    or sends an unreadable or oversized upload; ``status`` is the HTTP status to answer."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class OutputError(DigitlabError, OSError):
    """An output path cannot be written (it is a folder, its parent is a file, no space...)."""


class FileReadError(DigitlabError, ValueError):
    """A file cannot be read safely or is malformed: not a regular file (a FIFO, socket or
    device), a link loop, over its size cap, nested too deep, or not what it should hold."""
