"""Folder safety: the experiment folder and the job folders inside it.

The experiment folder is marked by :data:`MARK`; a folder that exists without the mark (and
without an ``experiment.json`` of an older digitlab) is refused, never deleted. A job folder
must lie inside its experiment folder, also through links. Nothing outside
``<out>/<experiment>/`` is touched.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from digitlab.errors import ConfigError

#: File marking a folder as an experiment folder written by this engine.
MARK = ".digitlab-experiment"


def check_inside(folder: Path, root: Path) -> None:
    """Refuse a job folder that is not (or, through a link, would not be) inside ``root``."""
    real_root = root.resolve()
    for part in (folder, *folder.parents):
        if part == root:
            return
        if part.is_symlink() and part != folder:
            raise ConfigError(f"{part} is a link; job folders must lie inside {root}")
        if part.exists() and real_root not in part.resolve().parents and part != folder:
            raise ConfigError(f"{part} lies outside {root}")
    raise ConfigError(f"{folder} is outside {root}")


def clear_job_folder(folder: Path, root: Path) -> None:
    """Remove a stale job folder inside the experiment folder ``root`` (a link: just the link)."""
    check_inside(folder, root)
    if folder.is_symlink() or folder.is_file():
        folder.unlink()
    elif folder.exists():
        shutil.rmtree(folder)


def prepare_experiment_folder(folder: Path, out: Path) -> None:
    """Create or adopt the experiment folder ``folder`` (directly under ``out``)."""
    from digitlab.fileio import atomic_write_bytes

    if folder.parent.resolve() != out.resolve() or folder.is_symlink():
        raise ConfigError(f"{folder} is not a plain folder directly under {out}")
    if folder.exists():
        if not folder.is_dir():
            raise ConfigError(f"{folder} exists and is not a folder; move it away")
        ours = (folder / MARK).exists() or (folder / "experiment.json").exists()
        if not ours and any(folder.iterdir()):
            raise ConfigError(f"{folder} exists and is not an experiment folder; move it away")
    else:
        folder.mkdir(parents=True)
    if not (folder / MARK).exists():
        atomic_write_bytes(folder / MARK, lambda f: f.write(b"digitlab experiment folder\n"))
