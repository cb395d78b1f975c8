"""Small files that declare huge contents, read in a subprocess under a 1.5 GB address-space
limit: each fails at once with a one-line DigitlabError (or, for a member that is never read,
loads), with a small peak RSS, and leaves no file behind."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import hostile_files as hf

SRC = Path(__file__).parents[1] / "src"
LIMIT = 1536 << 20  # RLIMIT_AS of the child
RSS_MAX_KB = 400 << 10  # what a bounded reader may peak at (the interpreter + numpy ~ 100 MB)

CHILD = """
import importlib, json, resource, sys
resource.setrlimit(resource.RLIMIT_AS, ({limit}, {limit}))
from digitlab.errors import DigitlabError
module, name = sys.argv[1].rsplit(".", 1)
try:
    getattr(importlib.import_module(module), name)(*sys.argv[2:])
    status, message = "ok", ""
except DigitlabError as exc:
    status, message = "error", str(exc)
# peak RSS of this address space: VmHWM starts anew at exec, while ru_maxrss keeps the
# forking parent's peak (a pytest process that has loaded MNIST)
with open("/proc/self/status") as f:
    rss = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
print(json.dumps({{"status": status, "message": message, "rss_kb": rss}}))
"""


def run_reader(
    function: str, path: Path, rss_max_kb: int = RSS_MAX_KB, max_bytes: int | None = None
) -> dict:
    """Call ``function(path)`` in a child with the memory limit; its outcome and peak RSS."""
    env = {**os.environ, "PYTHONPATH": str(SRC), "OPENBLAS_NUM_THREADS": "1",
           "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}  # fmt: skip
    env.pop("DIGITLAB_MAX_BYTES", None)
    if max_bytes is not None:
        env["DIGITLAB_MAX_BYTES"] = str(max_bytes)
    before = sorted(p.name for p in path.parent.iterdir())
    proc = subprocess.run(
        [sys.executable, "-c", CHILD.format(limit=LIMIT), function, str(path)],
        capture_output=True, text=True, timeout=120, cwd=path.parent, env=env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stderr == ""  # no warning, no traceback
    assert sorted(p.name for p in path.parent.iterdir()) == before  # nothing left behind
    out = json.loads(proc.stdout)
    assert out["rss_kb"] < rss_max_kb, out
    assert "\n" not in out["message"]
    return out


def test_idx_gzip_claiming_3gb(tmp_path):
    """The issue's case: a 2.9 MB .idx.gz whose header and stream both say 3 GB."""
    path = hf.gzip_zeros(
        tmp_path / "big-idx3-ubyte.gz",
        3_000_000_000,
        hf.idx_header(0x08, (3_000_000, 1000, 1)),
        crc=False,  # never read that far
    )
    assert path.stat().st_size < 3_000_000
    out = run_reader("digitlab.data.idx.read_idx", path)
    assert out["status"] == "error" and "limit" in out["message"], out


def test_idx_gzip_with_a_trailer_that_disagrees(tmp_path):
    """300 MB declared (within the cap), 2 GB in the stream: counted, not kept."""
    path = hf.gzip_zeros(
        tmp_path / "long.idx.gz", 2_000_000_000, hf.idx_header(0x08, (300_000, 1000)), crc=False
    )
    out = run_reader("digitlab.data.idx.read_idx", path)
    assert out["status"] == "error" and "trailing" in out["message"], out


def test_idx_gzip_with_a_forged_trailer(tmp_path):
    """The trailer agrees with a 300 MB header, the stream holds more: memory stays at the
    declared size (within the cap), the read stops one byte past it."""
    header = hf.idx_header(0x08, (300_000, 1000))
    path = hf.gzip_zeros(tmp_path / "forged.idx.gz", 1_000_000_000, header,
                         isize=len(header) + 300_000_000, crc=False)  # fmt: skip
    out = run_reader("digitlab.data.idx.read_idx", path, RSS_MAX_KB + 300_000)
    assert out["status"] == "error" and "trailing" in out["message"], out


def _checkpoint(tmp_path: Path, extra_member: tuple) -> Path:
    from test_fuzz_readers import REAL_ARRAYS, REAL_META

    members = hf.checkpoint_members(REAL_META, REAL_ARRAYS) + [extra_member]
    return hf.write_zip(tmp_path / "ck.npz", members)


def test_checkpoint_with_an_unused_3gb_member_loads_without_inflating_it(tmp_path):
    path = _checkpoint(
        tmp_path, hf.zero_array_member("junk/big.npy", "uint8", (3_000_000_000,), crc=False)
    )
    assert path.stat().st_size < 4_000_000
    out = run_reader("digitlab.checkpoint.load_checkpoint", path)
    assert out["status"] == "ok", out


@pytest.mark.parametrize(
    ("member", "fragment"),
    [
        (("extra/big.npy", "uint8", (3_000_000_000,)), "limit"),
        (("optim/W1.npy", "float32", (100_000_000,)), "optimizer state optim/W1"),
        (("cb1/W2.npy", "float64", (5, 3, 2_000_000)), "callback state"),
    ],
    ids=["extra", "optim", "callback"],
)
def test_checkpoint_with_a_huge_expected_member_is_refused(tmp_path, member, fragment):
    path = _checkpoint(tmp_path, hf.zero_array_member(*member, crc=False))
    out = run_reader("digitlab.checkpoint.load_checkpoint", path)
    assert out["status"] == "error" and fragment in out["message"], out


def test_png_of_20000_by_20000_pixels(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    (folder / "huge.png").write_bytes(hf.png_bytes(20_000, 20_000))
    assert (folder / "huge.png").stat().st_size < 500_000
    out = run_reader("digitlab.data.formats.read_image_folder", folder / "huge.png")
    assert out["status"] == "error" and "pixel limit" in out["message"], out


@pytest.mark.parametrize(
    ("declared", "fragment"),
    [(2_000_000_000, "declares 1.9 GiB, more than the 1.0 GiB limit"), (1000, "it declares")],
    ids=["declared-2gb", "declared-1kb"],
)
def test_mat_with_a_compressed_2gb_variable(tmp_path, declared, fragment):
    n = 2_000_000_000
    prefix = struct.pack("<II", 14, declared)  # miMATRIX tag
    raw, _ = hf.deflate_zeros(n, prefix, crc=False)
    stream = b"\x78\xda" + raw + bytes(4)  # Adler-32 left out: never reached
    header = b"MATLAB 5.0 MAT-file, hostile".ljust(116, b" ") + bytes(8) + b"\x00\x01IM"
    tag = struct.pack("<II", 15, len(stream))
    path = tmp_path / "letters.mat"
    path.write_bytes(header + tag + stream)
    out = run_reader("digitlab.data.formats.read_letters_mat", path)
    assert out["status"] == "error" and fragment in out["message"], out


def test_csv_gzip_of_1gb(tmp_path):
    path = hf.gzip_zeros(tmp_path / "train.csv.gz", 1_000_000_000, b"label,pixel0\n", crc=False)
    out = run_reader("digitlab.data.formats.read_csv", path)
    assert out["status"] == "error" and "CSV text" in out["message"], out


def test_limits_are_configurable(tmp_path, monkeypatch):
    from digitlab.data.idx import read_idx, write_idx
    from digitlab.errors import ConfigError, DataError

    path = write_idx(tmp_path / "a.idx", np.zeros((10, 10), np.uint8))
    monkeypatch.setenv("DIGITLAB_MAX_BYTES", "99")
    with pytest.raises(DataError, match="100 bytes of data, more than the 99 bytes limit"):
        read_idx(path)
    monkeypatch.setenv("DIGITLAB_MAX_BYTES", "100")
    assert read_idx(path).shape == (10, 10)
    monkeypatch.setenv("DIGITLAB_MAX_BYTES", "lots")
    with pytest.raises(ConfigError, match="DIGITLAB_MAX_BYTES"):
        read_idx(path)
    monkeypatch.delenv("DIGITLAB_MAX_BYTES")
    monkeypatch.setenv("DIGITLAB_MAX_PIXELS", "0")
    with pytest.raises(ConfigError, match="DIGITLAB_MAX_PIXELS"):
        from digitlab.limits import max_pixels

        max_pixels()
