"""The README's examples run as printed: every Python block, and the command block of
"The command", on the embedded 5,000-digit sample (DIGITLAB_DATA unset)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
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


@pytest.fixture(scope="module")
def command_block(tmp_path_factory: pytest.TempPathFactory):
    """The command block of "The command", run once in a fresh folder: (folder, process)."""
    tmp_path = tmp_path_factory.mktemp("readme")
    proc = subprocess.run(
        ["bash", "-e", "-c", _command_block()], cwd=tmp_path, env=_env(tmp_path),
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    return tmp_path, proc


@pytest.mark.slow
def test_command_block_runs(command_block):
    tmp_path, proc = command_block
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "PASS" in proc.stdout and "resuming" in proc.stdout
    runs = {p.parent.parent.name for p in tmp_path.glob("runs/*/*/checkpoint.npz")}
    assert runs == {"mlp", "softmax", "logistic", "sgd"}


def _predict_block() -> str:
    section = README.split("## Your own images: `digitlab predict`\n", 1)[1]
    return _blocks("bash", section)[0]


@pytest.mark.slow
def test_predict_block_runs(command_block):
    """The predict examples on the runs the command block trained, with inputs as people have
    them: dark digits on light paper (PNG folder, a JPEG photo) and a raw IDX file."""
    from PIL import Image

    from digitlab.data import load, write_idx

    tmp_path, proc = command_block
    assert proc.returncode == 0
    ds = load("mnist-5k")
    pick = np.random.default_rng(0).choice(len(ds.y_test), 50, replace=False)
    x, y = ds.x_test[pick], ds.y_test[pick]
    (tmp_path / "my_digits").mkdir()
    for i in range(3):
        page = np.full((120, 90), 235, np.uint8)
        page[20:76, 10:66] = 255 - np.kron(x[i], np.ones((2, 2), np.uint8))
        Image.fromarray(page).save(tmp_path / "my_digits" / f"digit{i}.png")
    photo = np.stack([np.full((200, 200), 220, np.uint8)] * 3, axis=-1)
    photo[40:152, 50:162] -= (np.kron(x[3], np.ones((4, 4), np.uint8)) // 2)[..., None]
    Image.fromarray(photo).save(tmp_path / "photo.jpg", quality=85)
    write_idx(tmp_path / "test-images.idx3-ubyte.gz", x)
    (tmp_path / "cli").mkdir()

    out = subprocess.run(
        ["bash", "-e", "-c", _predict_block()], cwd=tmp_path, env=_env(tmp_path / "cli"),
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    lines = out.stdout.splitlines()
    assert lines[0] == "file,class"
    rows = dict(r.split(",") for r in lines[1:5])
    names = [f"my_digits/digit{i}.png" for i in range(3)] + ["photo.jpg"]
    assert sorted(rows) == names
    assert sum(rows[n] == str(y[i]) for i, n in enumerate(names)) >= 3
    with_proba = (tmp_path / "predictions.csv").read_text().splitlines()
    assert len(with_proba) == 1 + 3 and "p_0" in with_proba[0]
    assert Image.open(tmp_path / "seen.png").size[0] > 28
    kaggle = (tmp_path / "submission.csv").read_text().splitlines()
    assert kaggle[0] == "Id,Category" and len(kaggle) == 1 + len(y)
    predicted = np.array([int(r.split(",")[1]) for r in kaggle[1:]])
    assert (predicted == y).mean() >= 0.8  # the default MLP on the sample scores ~0.9
