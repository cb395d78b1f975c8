"""Reliability round 3 (issue 25): crafted checkpoints, predict batches, degenerate splits,
caps, help and the small surprises a newcomer met. Each test fails on the code before it."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest

from digitlab.checkpoint import load_checkpoint, save_checkpoint
from digitlab.cli import main


@pytest.fixture(scope="module")
def run8(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A softmax run folder trained one epoch on digits-8x8."""
    runs = tmp_path_factory.mktemp("runs")
    argv = ["train", "--dataset", "digits-8x8", "--model", "softmax", "--epochs", "1", "--quiet"]
    assert main([*argv, "--out", str(runs), "--name", "s8"]) == 0
    return next(runs.glob("s8/*"))


def craft(run: Path, dest: Path, meta_change=None, array_change=None) -> Path:
    """A copy of ``run``'s checkpoint with its metadata or arrays changed."""
    arrays, meta = load_checkpoint(run / "checkpoint.npz")
    meta = copy.deepcopy(meta)
    for k in ("format", "format_version"):
        meta.pop(k, None)
    if meta_change:
        meta_change(meta)
    if array_change:
        array_change(arrays)
    return save_checkpoint(dest, arrays, meta)


def one_line_error(capsys, *words: str) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("digitlab: error:") and "\n" not in err, err
    for w in words:
        assert w in err, err
    return err


# ---------------------------------------------------------------------------------- checkpoints
CRAFTED = {
    "short class list": (lambda m: m["extra"].__setitem__("classes", ["0", "1"]), None, "class"),
    "no image_shape": (lambda m: m["extra"].pop("image_shape"), None, "image_shape"),
    "huge image_shape": (
        lambda m: m["extra"].__setitem__("image_shape", [20000, 20000]), None, "image_shape"),
    "n_features_in a string": (
        lambda m: m["extra"]["preprocessor"].__setitem__("n_features_in", "abc"), None,
        "preprocessor"),
    "weights 3e38": (None, lambda a: a["model/W"].fill(3e38), "non-finite"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(CRAFTED))
@pytest.mark.parametrize("command", ["predict", "evaluate"])
def test_crafted_checkpoints_are_one_line_errors(run8, tmp_path, capsys, case, command):
    meta_change, array_change, word = CRAFTED[case]
    ck = craft(run8, tmp_path / "ck.npz", meta_change, array_change)
    x = (np.arange(2 * 64).reshape(2, 8, 8) % 200).astype(np.uint8)
    from digitlab.data import write_idx

    write_idx(tmp_path / "x.idx", x)
    capsys.readouterr()
    argv = [command, str(ck)] + ([str(tmp_path / "x.idx")] if command == "predict" else [])
    with np.errstate(all="raise"):
        assert main(argv) == 2
    one_line_error(capsys, word)
