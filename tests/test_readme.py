"""The README's examples run as printed: every Python block, and the command block of
"The command", on the embedded 5,000-digit sample (DIGITLAB_DATA unset)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _blocks(language: str, text: str = README) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```$", text, flags=re.M | re.S)


def _env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "DIGITLAB_DATA"}
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shim = bin_dir / "digitlab"  # the console script, for an uninstalled checkout
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m digitlab.cli "$@"\n')
    shim.chmod(0o755)
    return env | {
        "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")]),
        "PATH": f"{bin_dir}{os.pathsep}{env.get('PATH', '')}",
        "MPLBACKEND": "Agg",
        "OMP_NUM_THREADS": "1",  # the examples are small; threads only fight on shared CPUs
        "XDG_CACHE_HOME": str(tmp_path / "cache"),
    }


def test_the_readme_has_the_examples():
    assert len(_blocks("python")) >= 2
    assert _command_block().count("digitlab ") >= 8


@pytest.mark.slow
@pytest.mark.parametrize("index", range(len(_blocks("python"))))
def test_python_block_runs(tmp_path, index):
    code = _blocks("python")[index]
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=_env(tmp_path), capture_output=True,
        text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip()  # each block prints its results


def _command_block() -> str:
    section = README.split("## The command\n", 1)[1]
    return _blocks("bash", section)[0]


@pytest.mark.slow
def test_command_block_runs(tmp_path):
    proc = subprocess.run(
        ["bash", "-e", "-c", _command_block()], cwd=tmp_path, env=_env(tmp_path),
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "PASS" in proc.stdout and "resuming" in proc.stdout
    runs = {p.parent.parent.name for p in tmp_path.glob("runs/*/*/checkpoint.npz")}
    assert runs == {"mlp", "softmax", "logistic", "sgd"}
