#!/usr/bin/env python3
"""A battery of hostile inputs run through the ``digitlab`` command, classified clean or not.

Several hundred inputs, generated deterministically: malformed IDX and gzip files, CSV tables,
PNG images and folders, ``.mat`` files, TOML settings, command-line options, crafted
checkpoints and output paths that are folders, files or escape attempts. Each runs in its own
temporary folder as ``python -m digitlab.cli ...`` (``PYTHONPATH=src``) under an address-space
limit (RLIMIT_AS) and a time limit.

A case is **clean** when

- it exits 0 and its outputs are valid (the prediction CSV has one row per image, every JSON
  file written parses as strict JSON), or it exits 2 with exactly one line on stderr;
- stderr holds no traceback;
- nothing appears in its folder except the outputs a success is expected to write (nothing at
  all after an error), and nothing appears outside it.

The ``.mat`` reader has no command; its cases call ``read_letters_mat`` through a wrapper that
behaves as the command does (one line and exit 2 on a DigitlabError).

Usage::

    PYTHONPATH=src python scripts/hostile_battery.py [--quick] [--jobs N] [--only CLASS]

Prints the clean percentage and every failure by class; exit status 0 when at least
``--require`` percent (default 98) are clean.
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import os
import resource
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from collections import Counter, defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
import hostile_files as hf  # noqa: E402 - lives beside the tests that also use it

MEMORY_LIMIT = 2 << 30  # RLIMIT_AS of every command
TIME_LIMIT = 120  # seconds per command

Setup = Callable[[Path], None]


@dataclass
class Case:
    """One hostile input: files to create, the command, what a success may leave behind."""

    klass: str
    name: str
    argv: list[str]
    setup: Setup | None = None
    outputs: tuple[str, ...] = ()  # top-level names a success may create
    check: Callable[[Path], str | None] | None = None  # success validator: problem or None
    library: bool = False  # run through the library wrapper instead of the command
    wrapper: str = ""  # run this Python source (argv after it) instead of the command
    env: dict[str, str] = field(default_factory=dict)  # extra environment variables
    quick: bool = False
    expect: str = ""  # "ok", "error" or "either"; default: "ok" when check is set

    def __post_init__(self) -> None:
        if not self.expect:
            self.expect = "ok" if self.check is not None else "error"


@dataclass
class Base:
    """Shared material made once: genuine checkpoints of tiny runs on 8x8 digits."""

    folder: Path
    checkpoints: dict[str, Path] = field(default_factory=dict)


# ------------------------------------------------------------------------------ helpers


def _write(path: Path, data: bytes | str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data)


def writes(name: str, data: bytes | str) -> Setup:
    return lambda d: _write(d / name, data)


def idx_bytes(arr: np.ndarray) -> bytes:
    code = {np.uint8: 8, np.int8: 9, np.int16: 11, np.int32: 12, np.float32: 13, np.float64: 14}
    c = code[arr.dtype.type]
    return hf.idx_header(c, arr.shape) + arr.astype(arr.dtype.newbyteorder(">")).tobytes()


def png(arr: np.ndarray, mode: str | None = None) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr, mode=mode).save(buf, format="PNG")
    return buf.getvalue()


def csv_ok(path: Path) -> str | None:
    """A prediction CSV: ``file,class[,p_<class>...]`` with one named row per image (the
    default of ``digitlab predict``), or ``Id,Category`` with numbered rows (``--kaggle``)."""
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        return f"cannot read {path.name}: {e}"
    if lines and lines[0] == "Id,Category":
        for i, line in enumerate(lines[1:], start=1):
            if not line.startswith(f"{i},"):
                return f"{path.name}: row {i} is {line!r}"
        return None
    if not lines or not lines[0].startswith("file,class"):
        return f"{path.name}: bad header {lines[:1]}"
    width = lines[0].count(",")
    for i, line in enumerate(lines[1:], start=1):
        if line.count(",") < width or not line.rsplit(",", width)[1 if width else 0]:
            return f"{path.name}: row {i} is {line!r}"
    return None


def predict_ok(n: int) -> Callable[[Path], str | None]:
    def check(folder: Path) -> str | None:
        problem = csv_ok(folder / "out.csv")
        if problem is None and len((folder / "out.csv").read_text().splitlines()) != n + 1:
            return f"out.csv does not have {n} rows"
        return problem

    return check


def _strict_json(path: Path) -> str | None:
    def refuse(token: str) -> None:
        raise ValueError(f"non-standard JSON token {token}")

    try:
        json.loads(path.read_text(), parse_constant=refuse)
    except (ValueError, OSError) as e:
        return f"{path.name}: {e}"
    return None


# ------------------------------------------------------------------------------- cases

IMG = 8  # digits-8x8: the base checkpoints take 8x8 images


def idx_cases(base: Base) -> list[Case]:
    ck = str(base.checkpoints["mlp"])
    rng = np.random.default_rng(10)
    good = rng.integers(0, 256, (3, IMG, IMG), dtype=np.uint8)
    cases: list[Case] = []

    def add(name: str, data: bytes, *, ok: int | None = None, quick: bool = False, fname="x.idx"):
        cases.append(
            Case(
                "idx",
                name,
                ["predict", ck, fname, "-o", "out.csv"],
                writes(fname, data),
                outputs=("out.csv",) if ok is not None else (),
                check=predict_ok(ok) if ok is not None else None,
                quick=quick,
            )
        )

    add("valid", idx_bytes(good), ok=3, quick=True)
    add("valid-gz", gzip.compress(idx_bytes(good)), ok=3, fname="x.idx.gz")
    add(
        "valid-multimember-gz",
        gzip.compress(idx_bytes(good)[:50]) + gzip.compress(idx_bytes(good)[50:]),
        ok=3,
    )
    add("empty-images", idx_bytes(np.zeros((0, IMG, IMG), np.uint8)), ok=0)
    for rank in (0, 5, 7, 33, 65, 128, 255):
        add(
            f"rank-{rank}",
            bytes([0, 0, 8, rank]) + b"\x00\x00\x00\x02" * min(rank, 70),
            quick=rank == 65,
        )
    for code in (0x00, 0x07, 0x0A, 0x0F, 0xFF):
        add(
            f"type-code-{code:02x}",
            bytes([0, 0, code, 3]) + struct.pack(">III", 1, IMG, IMG) + bytes(64),
        )
    for _code, dt in (
        (0x09, np.int8),
        (0x0B, np.int16),
        (0x0C, np.int32),
        (0x0D, np.float32),
        (0x0E, np.float64),
    ):
        add(f"dtype-{np.dtype(dt).name}", idx_bytes(np.zeros((2, IMG, IMG), dt)))
    for shape in ((3,), (3, 64), (1, 2, IMG, IMG), (3, 28, 28), (3, IMG, 9), (1, 1, 1)):
        add(f"shape-{'x'.join(map(str, shape))}", idx_bytes(np.zeros(shape, np.uint8)))
    body = idx_bytes(good)
    for cut in (1, 3, 4, 7, 16, 17, len(body) - 1):
        add(f"truncated-at-{cut}", body[:cut])
    for extra in (1, 64, 4096):
        add(f"trailing-{extra}", body + bytes(extra))
    add("magic-swapped", b"\x08\x03\x00\x00" + body[4:])
    add("text-file", b"hello, I am not an IDX file\n")
    add("zero-bytes", b"")
    add("nul-bytes-1mb", bytes(1 << 20))
    for dims in (
        (2**32 - 1, 2**32 - 1, 2**32 - 1),
        (2**31, IMG, IMG),
        (10**9, IMG, IMG),
        (0, 2**32 - 1, 2**32 - 1),
    ):
        add(f"huge-dims-{dims[0]}", hf.idx_header(8, dims) + bytes(100), quick=dims[0] == 2**31)
    gz = gzip.compress(body)
    add("gz-truncated-half", gz[: len(gz) // 2], fname="x.gz")
    add("gz-no-trailer", gz[:-8], fname="x.gz")
    add("gz-bad-crc", gz[:-8] + b"\x00\x00\x00\x00" + gz[-4:], fname="x.gz")
    add("gz-isize-zero", gz[:-4] + bytes(4), fname="x.gz")  # a wrong trailer: corrupt file
    add("gz-isize-huge", gz[:-4] + b"\xff\xff\xff\xff", fname="x.gz")
    add("gz-garbled-body", gz[:12] + bytes(len(gz) - 20) + gz[-8:], fname="x.gz")
    add("gz-magic-only", b"\x1f\x8b", fname="x.gz")
    add("gz-header-only", gz[:10], fname="x.gz")
    add("gz-of-nothing", gzip.compress(b""), fname="x.gz")
    add("gz-of-text", gzip.compress(b"not idx" * 1000), fname="x.gz")
    add("gz-trailing-junk", gz + b"junk", fname="x.gz")
    add("gz-double", gzip.compress(gz), fname="x.gz")
    for declared, stream in (
        (2_000_000_000, 2_000_000_000),
        (900_000_000, 100_000_000),
        (300_000_000, 1_500_000_000),
    ):
        n = declared // (IMG * IMG)
        p = Path(tempfile.mkdtemp()) / "b.gz"
        hf.gzip_zeros(p, stream, hf.idx_header(8, (n, IMG, IMG)), crc=False)
        blob = p.read_bytes()
        shutil.rmtree(p.parent)
        add(
            f"gz-bomb-{declared // 10**6}mb-declared-{stream // 10**6}mb-stream",
            blob,
            fname="b.gz",
            quick=declared == 2_000_000_000,
        )
    add("raw-idx-named-csv", body, fname="x.csv")
    cases.append(
        Case(
            "idx",
            "input-is-a-folder-of-nothing",
            ["predict", ck, "emptydir", "-o", "out.csv"],
            lambda d: (d / "emptydir").mkdir(),
        )
    )
    cases.append(Case("idx", "input-missing", ["predict", ck, "nope.idx", "-o", "out.csv"]))
    cases.append(
        Case(
            "idx",
            "input-dangling-symlink",
            ["predict", ck, "link.idx", "-o", "out.csv"],
            lambda d: (d / "link.idx").symlink_to(d / "gone"),
        )
    )
    cases.append(
        Case(
            "idx",
            "input-symlink-loop",
            ["predict", ck, "loop.idx", "-o", "out.csv"],
            lambda d: (d / "loop.idx").symlink_to(d / "loop.idx"),
        )
    )
    cases.append(
        Case("idx", "input-fifo-like-dev-null", ["predict", ck, "/dev/null", "-o", "out.csv"])
    )
    for i in range(20):  # random single-byte corruptions of a valid file
        data = bytearray(body)
        data[int(rng.integers(0, 16))] = int(rng.integers(0, 256))
        add(f"header-byte-flip-{i}", bytes(data))
        # a flipped header byte may still describe a valid file: either outcome is fine
        cases[-1].outputs, cases[-1].check, cases[-1].expect = ("out.csv",), _maybe_csv, "either"
    return cases


def _maybe_csv(folder: Path) -> str | None:
    return csv_ok(folder / "out.csv")


def csv_cases(base: Base) -> list[Case]:
    ck = str(base.checkpoints["mlp"])
    n = IMG * IMG
    header = "label," + ",".join(f"pixel{i}" for i in range(n))
    row = lambda v, lab="3": f"{lab}," + ",".join([str(v)] * n)  # noqa: E731
    plain = lambda v: ",".join([str(v)] * n)  # noqa: E731
    cases: list[Case] = []

    def add(name, text, *, ok=None, quick=False, fname="x.csv"):
        data = text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass")
        if fname.endswith(".gz"):
            data = gzip.compress(data)
        cases.append(
            Case(
                "csv",
                name,
                ["predict", ck, fname, "-o", "out.csv"],
                writes(fname, data),
                outputs=("out.csv",) if ok is not None else (),
                check=predict_ok(ok) if ok is not None else None,
                quick=quick,
            )
        )

    add("valid-labelled", "\n".join([header, row(0), row(255)]), ok=2, quick=True)
    add("valid-pixels-only", "\n".join([plain(7), plain(8), plain(9)]), ok=3)
    add("valid-gz", "\n".join([header, row(1)]), ok=1, fname="x.csv.gz")
    add("valid-crlf", "\r\n".join([header, row(1), row(2)]) + "\r\n", ok=2)
    add("header-only", header + "\n", ok=0)
    add("empty", "")
    add("blank-lines", "\n\n\n")
    add("only-spaces", "   ,  ,  \n")
    add("bom", "\ufeff" + "\n".join([header, row(1)]))
    add("latin1-bytes", b"label,pixel0\n\xe9\xe8,\xff\n")
    add("nul-bytes", b"\x00" * 1000)
    add("binary-garbage", bytes(np.random.default_rng(3).integers(0, 256, 5000, dtype=np.uint8)))
    for v in (
        "256",
        "-1",
        "1e3",
        "3.5",
        "nan",
        "inf",
        "-inf",
        "0x10",
        "99999999999",
        "1_000",
        "",
        "abc",
        '"12"',
        " 12 ",
    ):
        add(f"pixel-{v or 'empty'}", "\n".join([header, row(1), row(v)]), quick=v == "nan")
    for lab in ("-3", "1.5", "x", "", "1e30"):
        add(f"label-{lab or 'empty'}", "\n".join([header, row(1, lab)]))
    add("ragged-short", "\n".join([header, row(1), ",".join(["1"] * (n - 3))]))
    add("ragged-long", "\n".join([header, row(1), row(1) + ",5,5"]))
    add("not-square-63", ",".join(["1"] * 63))
    add("784-columns-wrong-size", "\n".join([",".join(["0"] * 784)] * 2))
    add("one-column", "5\n6\n")
    add("semicolons", "\n".join([";".join(["1"] * n)] * 2))
    add("tabs", "\n".join(["\t".join(["1"] * n)] * 2))
    add(
        "quoted-header",
        '"label",' + ",".join(f'"pixel{i}"' for i in range(n)) + "\n" + row(2),
        ok=1,
    )
    add("header-no-label-col", "\n".join(["a," + ",".join(f"p{i}" for i in range(n)), row(1)]))
    add("huge-line-no-newline", "1," * 3_000_000)
    add("many-rows-of-wrong-width", "\n".join(["1,2,3"] * 20000))
    add("gz-named-but-plain", "\n".join([header, row(1)]), fname="y.csv.gz.txt")
    cases.append(
        Case(
            "csv",
            "gz-corrupt",
            ["predict", ck, "x.csv.gz", "-o", "out.csv"],
            writes("x.csv.gz", gzip.compress(b"1,2,3\n" * 100)[:-12]),
        )
    )
    cases.append(
        Case(
            "csv",
            "gz-plain-bytes",
            ["predict", ck, "x.csv.gz", "-o", "out.csv"],
            writes("x.csv.gz", "\n".join([header, row(1)])),
        )
    )

    def bomb(d: Path) -> None:
        hf.gzip_zeros(d / "b.csv.gz", 1_500_000_000, (header + "\n").encode(), crc=False)

    cases.append(
        Case(
            "csv",
            "gz-bomb-1.5gb-of-nul",
            ["predict", ck, "b.csv.gz", "-o", "out.csv"],
            bomb,
            quick=True,
        )
    )

    def zeros_text(d: Path) -> None:  # a valid-looking table that inflates to 600 MB of text
        c = zlib.compressobj(9, zlib.DEFLATED, 31)
        line = (row(0) + "\n").encode()
        with open(d / "big.csv.gz", "wb") as f:
            f.write(c.compress((header + "\n").encode()))
            block = line * (1 << 20 // len(line) + 1)
            for _ in range(600_000_000 // len(block)):
                f.write(c.compress(block))
            f.write(c.flush())

    cases.append(
        Case(
            "csv",
            "gz-600mb-of-valid-rows",
            ["predict", ck, "big.csv.gz", "-o", "out.csv"],
            zeros_text,
        )
    )
    return cases


def png_cases(base: Base) -> list[Case]:
    ck = str(base.checkpoints["mlp"])
    rng = np.random.default_rng(5)
    img = rng.integers(0, 40, (IMG, IMG), dtype=np.uint8)  # a dark, noisy background ...
    img[1:-1, IMG // 2 - 1 : IMG // 2 + 1] = 230  # ... with a bright stroke: a "1"
    cases: list[Case] = []

    def folder(name, files: dict[str, bytes], *, ok=None, quick=False):
        def setup(d: Path) -> None:
            (d / "imgs").mkdir()
            for fname, data in files.items():
                _write(d / "imgs" / fname, data)

        cases.append(
            Case(
                "png",
                name,
                # --strict: one bad image refuses the batch (the batch class covers the
                # default, where its row is left without a class and the rest predicted)
                ["predict", ck, "imgs", "-o", "out.csv", "--strict"],
                setup,
                outputs=("out.csv",) if ok is not None else (),
                check=predict_ok(ok) if ok is not None else None,
                quick=quick,
            )
        )

    folder("valid-two", {"a.png": png(img), "b.PNG": png(img)}, ok=2, quick=True)
    folder("valid-rgb", {"a.png": png(np.stack([img] * 3, -1))}, ok=1)
    opaque = np.full_like(img, 255)
    folder("valid-rgba", {"a.png": png(np.stack([img, img, img, opaque], -1))}, ok=1)
    folder("valid-16bit", {"a.png": png(img.astype(np.uint16) * 257)}, ok=1)
    folder("empty-folder", {})
    folder("only-txt", {"a.txt": b"hello"})
    folder("wrong-size-28", {"a.png": png(np.zeros((28, 28), np.uint8))})
    folder("mixed-sizes", {"a.png": png(img), "b.png": png(np.zeros((9, 8), np.uint8))})
    folder("zero-byte", {"a.png": b""})
    folder("signature-only", {"a.png": b"\x89PNG\r\n\x1a\n"})
    folder("text-named-png", {"a.png": b"I am text"})
    folder("jpeg-named-png", {"a.png": b"\xff\xd8\xff\xe0" + bytes(100)})
    good = png(img)
    for cut in (8, 16, 33, 40, len(good) // 2, len(good) - 12, len(good) - 1):
        folder(f"truncated-at-{cut}", {"a.png": good[:cut]})
    for i in range(12):
        data = bytearray(good)
        pos = int(rng.integers(8, len(data)))
        data[pos] ^= 0xFF
        folder(f"bit-flip-{i}", {"a.png": bytes(data)})
        cases[-1].outputs, cases[-1].check, cases[-1].expect = ("out.csv",), _maybe_csv, "either"
    for w, h in (
        (30000, 30000),
        (1, 100_000_000),
        (65535, 65535),
        (5000, 5000),
        (2**31 - 1, 1),
        (0, 10),
    ):
        folder(
            f"header-{w}x{h}",
            {"a.png": hf.png_bytes(w, h, idat=b"x\x9c\x03\x00\x00\x00\x00\x01")},
            quick=w == 30000,
        )
    folder("bomb-12000x12000-zeros", {"a.png": hf.png_bytes(12000, 12000)})
    folder("bomb-rgba-5000x5000", {"a.png": hf.png_bytes(5000, 5000, color_type=6)})
    folder(
        "many-small-wrong",
        {f"{i:03d}.png": png(np.zeros((IMG, IMG + (i % 2)), np.uint8)) for i in range(10)},
    )

    def subdir_named_png(d: Path) -> None:
        (d / "imgs" / "a.png").mkdir(parents=True)

    cases.append(
        Case("png", "folder-named-png", ["predict", ck, "imgs", "-o", "out.csv"], subdir_named_png)
    )
    cases.append(
        Case(
            "png",
            "single-file-corrupt",
            ["predict", ck, "one.png", "-o", "out.csv", "--strict"],
            writes("one.png", good[:30]),
        )
    )
    return cases


def mat_cases(base: Base) -> list[Case]:
    from scipy.io import savemat

    cases: list[Case] = []

    def add(name, data: bytes, *, ok=False, quick=False):
        cases.append(
            Case(
                "mat",
                name,
                ["letters.mat"],
                writes("letters.mat", data),
                library=True,
                outputs=(),
                check=(lambda d: None) if ok else None,
                quick=quick,
            )
        )

    def mat(values, compress=True) -> bytes:
        buf = io.BytesIO()
        savemat(buf, values, do_compression=compress)
        return buf.getvalue()

    x = np.zeros((4, 784), np.uint8)
    y = np.arange(1, 5).reshape(4, 1)
    add("valid", mat({"train_x": x, "train_y": y, "test_x": x}), ok=True, quick=True)
    add("valid-uncompressed", mat({"train_x": x, "train_y": y, "test_x": x}, False), ok=True)
    add("no-variables", mat({"other": x}))
    add("train_y-missing", mat({"train_x": x, "test_x": x}))
    add("labels-27", mat({"train_x": x, "train_y": y + 23, "test_x": x}))
    add("labels-float", mat({"train_x": x, "train_y": y + 0.5, "test_x": x}))
    add("labels-wrong-count", mat({"train_x": x, "train_y": y[:3], "test_x": x}))
    add("pixels-300", mat({"train_x": x + 300.0, "train_y": y, "test_x": x}))
    add("pixels-nan", mat({"train_x": x * np.nan, "train_y": y, "test_x": x}))
    add("not-square", mat({"train_x": np.zeros((4, 783)), "train_y": y, "test_x": x}))
    add("string-variable", mat({"train_x": "hello", "train_y": y, "test_x": x}))
    add("struct-variable", mat({"train_x": {"a": 1}, "train_y": y, "test_x": x}))
    add(
        "cell-variable",
        mat({"train_x": np.array([[1], [2]], dtype=object), "train_y": y, "test_x": x}),
    )
    add("complex", mat({"train_x": x + 1j, "train_y": y, "test_x": x}))
    add("4d", mat({"train_x": np.zeros((1, 2, 28, 28)), "train_y": y, "test_x": x}))
    good = mat({"train_x": x, "train_y": y, "test_x": x})
    for cut in (0, 10, 127, 128, 140, len(good) // 2, len(good) - 1):
        add(f"truncated-at-{cut}", good[:cut])
    add("hdf5-signature", b"\x89HDF\r\n\x1a\n" + bytes(600))
    add("text", b"MATLAB 5.0 MAT-file but not really")
    add("header-only", good[:128])
    rng = np.random.default_rng(9)
    for i in range(10):
        data = bytearray(good)
        data[int(rng.integers(128, len(data)))] ^= 0x5A
        add(f"byte-flip-{i}", bytes(data))
        cases[-1].check, cases[-1].expect = (lambda d: None), "either"  # flips in padding

    n = 3_000_000_000
    raw, _ = hf.deflate_zeros(n, crc=False)
    stream = b"\x78\xda" + raw + ((n % 65521) << 16 | 1).to_bytes(4, "big")
    header = good[:128]
    add(
        "compressed-3gb-element",
        header + np.array([15, len(stream)], "<u4").tobytes() + stream,
        quick=True,
    )
    big = mat({"train_x": np.zeros((1, 784), np.uint8), "train_y": y[:1], "test_x": x}, False)
    add(
        "declared-dims-huge",
        big.replace(struct.pack("<II", 1, 784), struct.pack("<II", 2**31 - 1, 784), 1),
    )
    return cases


def toml_cases(base: Base) -> list[Case]:
    cases: list[Case] = []
    train = ["train", "--out", "runs", "--name", "t", "--config", "run.toml"]
    fast = 'dataset = "digits-8x8"\nepochs = 1\nmodel = "softmax"\n'

    def add(name, text: str | bytes, *, ok=False, quick=False, prefix=fast):
        body = (prefix.encode() + text) if isinstance(text, bytes) else prefix + text
        cases.append(
            Case(
                "toml",
                name,
                train,
                writes("run.toml", body),
                outputs=("runs",) if ok else (),
                check=_runs_ok if ok else None,
                quick=quick,
            )
        )

    add("valid", "", ok=True, quick=True)
    add("valid-train-table", '[train]\ndataset = "digits-8x8"\nepochs = 1\n', ok=True, prefix="")
    bad_values = {
        "lr": ['"fast"', "-0.5", "0", "nan", "inf", "true", "[0.1]", "{a = 1}", "1e400"],
        "epochs": ['"3"', "-4", "2.5", "0", "true", "99999999999999999999"],
        "steps": ["-1", '"x"', "1.0"],
        "batch": ["0", "-8", '"half"', "1.5", "[]", "100000000000"],
        "hidden": ["12", '"12"', "[0]", "[-5]", "[1.5]", "[true]", "[[3]]", "[4000000000]"],
        "momentum": ['"x"', "-0.1", "1.5", "nan", "[0.9]"],
        "l1": ["-1", '"a"', "inf"],
        "l2": ["-0.5", "nan", "{}"],
        "seed": ["-7", "2.5", '"s"', "18446744073709551616", "true"],
        "model": ['"svm"', "3", '""', '"MLP "'],
        "activation": ['"swish"', "0"],
        "dataset": ['"mnist-9k"', '"../etc"', "5", '"/tmp/x"'],
        "classes": ['["x", "y"]', "[1]", "[1, 1]", "[1, 2, 3]", "[-1, 2]", '"1,2"'],
        "preprocess": ['"zscore"', "false"],
        "eval_every": ['"never"', "-1", "0", "0.0", "[1]"],
        "n_train": ["-10", "0", '"all"', "1.5"],
        "holdout": ["2.0", "-0.1", '"x"', "1"],
        "monitor": ['"val_f1"', "1"],
        "patience": ["-3", '"x"'],
        "dtype": ['"float16"', '"int8"'],
        "init": ['"he"', "0"],
        "checkpoint_every": ["-5", "0.5", '"x"'],
        "max_rotation": ["nan", "-inf", '"x"'],
        "data_root": ["5", "[]"],
    }
    for key, values in bad_values.items():
        for v in values:
            add(f"{key}={v}", f"{key} = {v}\n", quick=v == '"fast"')

    add("unknown-key", "learning_rate = 0.1\n")
    add("unknown-table", "[model]\nhidden = [3]\n")
    add("duplicate-key", "epochs = 2\n")  # epochs already set by the prefix
    add("empty-key", '"" = 1\n')
    add("nested-arrays-3000", "hidden = " + "[" * 3000 + "]" * 3000 + "\n")
    add("inline-tables-deep", "x = " + "{a = " * 500 + "1" + "}" * 500 + "\n")
    add("not-toml", "this is not toml at all ][\n")
    add("binary", bytes(range(256)))
    add("invalid-utf8", b'model = "\xff\xfe"\n')
    add("nul-in-string", 'model = "mlp\\u0000"\n')
    add("very-long-string", 'model = "' + "m" * 1_000_000 + '"\n')
    add("train-table-is-array", "train = [1, 2]\n", prefix="")
    add("train-table-is-string", 'train = "x"\n', prefix="")
    add("train-and-flat", "[train]\nepochs = 1\n", prefix='dataset = "digits-8x8"\n')
    cases.append(
        Case("toml", "config-missing", ["train", "--config", "missing.toml", "--out", "runs"])
    )
    cases.append(
        Case(
            "toml",
            "config-is-folder",
            ["train", "--config", "cfg", "--out", "runs"],
            lambda d: (d / "cfg").mkdir(),
        )
    )
    return cases


def _runs_ok(folder: Path) -> str | None:
    runs = list((folder / "runs").rglob("metrics.json"))
    if not runs:
        return "no metrics.json written"
    for p in folder.rglob("*.json"):
        if problem := _strict_json(p):
            return problem
    return None


def option_cases(base: Base) -> list[Case]:
    cases: list[Case] = []
    fast = ["--dataset", "digits-8x8", "--model", "softmax", "--epochs", "1"]

    def add(name, args: list[str], *, ok=False, quick=False, setup=None, cmd="train"):
        argv = {"train": ["train", "--out", "runs", *fast, *args], "": args}.get(cmd, [cmd, *args])
        cases.append(
            Case(
                "options",
                name,
                argv,
                setup,
                outputs=("runs",) if ok else (),
                check=_runs_ok if ok else None,
                quick=quick,
            )
        )

    add("valid", [], ok=True, quick=True)
    for opt, values in {
        "--lr": ["nan", "-inf", "1e999", "0", "-1e-9", "abc", "0x10"],
        "--epochs": ["-1", "0", "1.5", "1e3", ""],
        "--steps": ["0", "-2"],
        "--batch": ["0", "-1", "0.0", "1.0001", "2.5", "999999999999", "fullish", "nan"],
        "--hidden": ["0", "-1", "3,,4", "3.5", "a", "2000000000", "1,2000000000"],
        "--momentum": ["-0.5", "1", "2", "nan"],
        "--seed": ["-1", "1.5", "x", "99999999999999999999999"],
        "--n-train": ["-1", "0", "100000000"],
        "--n-test": ["-1", "0"],
        "--holdout": ["1.5", "-0.2", "1", "nan"],
        "--classes": ["1", "1,1", "x,y", "10,11", "-1,3"],
        "--eval-every": ["0", "-1", "never", "0.0", "nan"],
        "--monitor": ["val_f1", "train_loss2", ""],
        "--patience": ["-1", "0.5"],
        "--min-delta": ["-1", "nan"],
        "--max-shift": ["-1", "100"],
        "--max-rotation": ["nan", "-5", "1e9"],
        "--checkpoint-every": ["-1", "0"],
        "--l2": ["-1", "inf"],
        "--dataset": ["nope", "../../etc", ""],
        "--data-root": ["/nonexistent/folder", "run.toml"],
    }.items():
        for v in values:
            add(f"{opt}={v or 'empty'}", [opt, v], quick=(opt, v) == ("--lr", "nan"))
    add("model-mlp-hidden-huge-product", ["--model", "mlp", "--hidden", "100000,100000"])
    add("unknown-option", ["--learning-rate", "0.1"])
    add("option-twice", ["--epochs", "1", "--epochs", "x"])
    add("name-dotdot", ["--name", "../../escape"], quick=True)
    add("name-absolute", ["--name", "/tmp/digitlab-battery-escape"])
    add("name-empty", ["--name", ""])
    add("name-slash", ["--name", "a/b/../../.."])
    add("name-nul", ["--name", "a\x01b"])
    add("out-is-a-file", ["--out", "afile"], setup=writes("afile", "x"))
    # other commands
    ck = str(base.checkpoints["mlp"])
    for args in (
        ["--checks", "-2"],
        ["--checks", "0"],
        ["--n", "0"],
        ["--n", "-5"],
        ["--eps", "0"],
        ["--eps", "nan"],
        ["--hidden", "0"],
        ["--dataset", "bogus"],
        ["--l2", "-1"],
    ):
        add(f"gradcheck {' '.join(args)}", ["--dataset", "digits-8x8", *args], cmd="gradcheck")
    for args in (
        ["--jobs", "0"],
        ["nonexistent-experiment"],
        ["--scheduler", "bogus://x"],
        ["--jobs", "x"],
    ):
        add(f"reproduce {' '.join(args)}", ["--out", "runs", "--no-report", *args], cmd="reproduce")
    for args in (
        ["info", "nope"],
        ["download", "nope"],
        ["download", "mnist-5k"],
        ["info"],
        ["frobnicate"],
    ):
        add(f"data {' '.join(args)}", args, cmd="data")
    for args in (
        ["--more-steps", "-1"],
        ["--more-epochs", "-3"],
        ["--more-steps", "x"],
        ["--momentum", "0"],
        ["--model", "softmax"],
        ["--lr", "nan"],
    ):
        add(f"resume {' '.join(args)}", [ck, "--out", "runs", *args], cmd="resume")
    add("report-missing-runs", ["--runs", "nowhere"], cmd="report")
    add("report-runs-is-file", ["--runs", "afile"], cmd="report", setup=writes("afile", "x"))
    add(
        "report-bad-experiment-json",
        ["--runs", "runs"],
        cmd="report",
        setup=writes("runs/exp/experiment.json", '{"name": 5, "members": "x"}'),
    )
    add(
        "report-experiment-json-list",
        ["--runs", "runs"],
        cmd="report",
        setup=writes("runs/exp/experiment.json", "[1, 2, 3]"),
    )
    add("no-command", [], cmd="")
    add("unknown-command", ["frob"], cmd="")
    add("evaluate-no-arg", [], cmd="evaluate")
    return cases


def _crafted_checkpoint(base: Base, change: Callable[[dict, dict], None]) -> bytes:
    """The base MLP checkpoint with its metadata/arrays changed by ``change(meta, arrays)``."""
    with np.load(base.checkpoints["mlp"], allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    meta = json.loads(arrays.pop("meta.json").tobytes())
    change(meta, arrays)
    buf = io.BytesIO()
    blob = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    np.savez(buf, **arrays, **{"meta.json": blob})
    return buf.getvalue()


def _checkpoint_commands() -> dict[str, tuple[list[str], tuple[str, ...], Callable]]:
    """The commands each crafted checkpoint is run through: argv, outputs, output check."""
    return {
        "predict": (["predict", "ck.npz", "x.idx", "-o", "out.csv"], ("out.csv",), predict_ok(2)),
        "evaluate": (["evaluate", "ck.npz"], (), lambda d: None),
        "resume": (
            ["resume", "ck.npz", "--out", "runs", "--more-steps", "2"],
            ("runs", "ck.npz"),
            lambda d: None,
        ),
    }


def _add_checkpoint_case(
    cases: list[Case],
    good_input: bytes,
    name: str,
    data: bytes,
    *,
    ok: bool = False,
    quick: bool = False,
    only: tuple[str, ...] | None = None,
) -> None:
    """Append one case per command (those in ``only``, if given) that runs ``data`` as the
    checkpoint; ``ok`` cases must succeed, the rest be refused."""
    for cmd, (argv, outputs, check) in _checkpoint_commands().items():
        if only and cmd not in only:
            continue

        def setup(d: Path, data=data) -> None:
            _write(d / "ck.npz", data)
            _write(d / "x.idx", good_input)

        cases.append(
            Case(
                "checkpoint",
                f"{name} [{cmd}]",
                argv,
                setup,
                outputs=outputs if ok else (),
                check=check if ok else None,
                quick=quick and cmd == "predict",
            )
        )


def _meta_only(fn: Callable) -> Callable:
    """A checkpoint change that edits only the metadata."""
    return lambda meta, arrays: fn(meta)


def _arrays_only(fn: Callable) -> Callable:
    """A checkpoint change that edits only the arrays."""
    return lambda meta, arrays: fn(arrays)


def _with_order(inner: Callable) -> Callable:
    """``inner``, after the metadata is made to say a shuffle order is stored."""

    def fn(meta, arrays):
        meta["progress"]["has_order"] = True
        inner(meta, arrays)

    return fn


def _meta_changes() -> dict[str, Callable]:
    """Hostile edits of checkpoint metadata, by case name."""
    m = _meta_only
    return {
        "meta-null": lambda meta, arrays: meta.clear() or meta.update({"format": None}),
        "model-kind-int": m(lambda x: x["model"].__setitem__("kind", 7)),
        "model-hidden-neg": m(lambda x: x["model"].__setitem__("hidden", [-8])),
        "model-hidden-huge": m(lambda x: x["model"].__setitem__("hidden", [10**9])),
        "model-features-str": m(lambda x: x["model"].__setitem__("n_features", "64")),
        "model-classes-0": m(lambda x: x["model"].__setitem__("n_classes", 0)),
        "model-activation-bad": m(lambda x: x["model"].__setitem__("activation", "swish")),
        "model-dtype-bad": m(lambda x: x["model"].__setitem__("dtype", "float128x")),
        "model-l2-str": m(lambda x: x["model"].__setitem__("l2", "x")),
        "model-extra-key": m(lambda x: x["model"].__setitem__("depth", 3)),
        "optimizer-missing": m(lambda x: x.pop("optimizer")),
        "optimizer-name-bad": m(lambda x: x["optimizer"].__setitem__("name", "lion")),
        "optimizer-momentum-str": m(lambda x: x["optimizer"].__setitem__("momentum", "0.9")),
        "progress-pos-huge": m(lambda x: x["progress"].__setitem__("pos", 10**12)),
        "progress-epoch-float": m(lambda x: x["progress"].__setitem__("epoch", 1.5)),
        "progress-has-order-str": m(lambda x: x["progress"].__setitem__("has_order", "yes")),
        "rng-state-str": m(lambda x: x["rng"].__setitem__("state", "x")),
        "rng-missing": m(lambda x: x.pop("rng")),
        "callbacks-null": m(lambda x: x.__setitem__("callbacks", None)),
        "callback-no-class": m(lambda x: x["callbacks"][0].pop("class")),
        "extra-missing": m(lambda x: x.pop("extra")),
        "extra-settings-list": m(lambda x: x["extra"].__setitem__("settings", [1])),
        "extra-settings-bad-lr": m(lambda x: x["extra"]["settings"].__setitem__("lr", "x")),
        "extra-settings-unknown": m(lambda x: x["extra"]["settings"].__setitem__("zzz", 1)),
        "extra-preprocessor-missing": m(lambda x: x["extra"].pop("preprocessor")),
        "extra-preprocessor-method-bad": m(
            lambda x: x["extra"]["preprocessor"].__setitem__("method", "x")
        ),
        "extra-classes-int": m(lambda x: x["extra"].__setitem__("classes", 3)),
        "extra-image-shape-neg": m(lambda x: x["extra"].__setitem__("image_shape", [-8, 8])),
        "extra-image-shape-str": m(lambda x: x["extra"].__setitem__("image_shape", "8x8")),
        "extra-label-offset-str": m(lambda x: x["extra"].__setitem__("label_offset", "1")),
        "extra-dataset-unknown": m(lambda x: x["extra"]["settings"].__setitem__("dataset", "nope")),
        "format-version-99": m(lambda x: x.__setitem__("format_version", 99)),
        "format-wrong": m(lambda x: x.__setitem__("format", "pytorch")),
    }


def _array_changes() -> dict[str, Callable]:
    """Hostile edits of checkpoint arrays, by case name (order cases also claim an order)."""
    a = _arrays_only
    changes: dict[str, Callable] = {
        "W1-transposed": a(lambda x: x.__setitem__("model/W1", x["model/W1"].T.copy())),
        "b2-missing": a(lambda x: x.pop("model/b2")),
        "W1-int": a(lambda x: x.__setitem__("model/W1", x["model/W1"].astype(np.int32))),
        "W1-nan": a(lambda x: x.__setitem__("model/W1", x["model/W1"] * np.nan)),
        "velocity-wrong-shape": a(
            lambda x: x.__setitem__("optim/W1", np.zeros((3, 3), np.float32))
        ),
        "velocity-extra": a(lambda x: x.__setitem__("optim/W7", np.zeros((64, 8), np.float32))),
        "order-missing": a(lambda x: x.pop("trainer/order", None)),
        "order-out-of-range": a(
            lambda x: x.__setitem__("trainer/order", np.arange(10**6, 10**6 + 1350))
        ),
        "order-short": a(lambda x: x.__setitem__("trainer/order", np.arange(5))),
        "prep-mean-wrong": a(lambda x: x.__setitem__("extra/prep_mean", np.zeros(3, np.float32))),
        "unicode-array": a(lambda x: x.__setitem__("extra/notes", np.array(["hi"]))),
    }
    return {
        name: _with_order(fn) if name.startswith("order-") else fn for name, fn in changes.items()
    }


def checkpoint_cases(base: Base) -> list[Case]:
    good_input = idx_bytes(np.zeros((2, IMG, IMG), np.uint8))
    cases: list[Case] = []

    def add(name, data: bytes, *, ok=False, quick=False, only=None):
        _add_checkpoint_case(cases, good_input, name, data, ok=ok, quick=quick, only=only)

    good = base.checkpoints["mlp"].read_bytes()
    add("genuine", good, ok=True, quick=True)
    for name, fn in _meta_changes().items():
        add(name, _crafted_checkpoint(base, fn), quick=name == "model-hidden-huge")
    for name, fn in _array_changes().items():
        add(name, _crafted_checkpoint(base, fn))
    add("meta-is-list", _meta_list(base))
    unknown = _arrays_only(lambda x: x.__setitem__("junk/zeros", np.zeros(5_000_000, np.uint8)))
    add("unknown-member-5mb", _crafted_checkpoint(base, unknown), ok=True)
    add("empty-file", b"")
    add("text-file", b"checkpoint")
    add("truncated-half", good[: len(good) // 2])
    add("truncated-end", good[:-30])
    rng = np.random.default_rng(4)
    for i in range(8):
        data = bytearray(good)
        data[int(rng.integers(0, len(data)))] ^= 0xA5
        add(f"byte-flip-{i}", bytes(data), only=("predict",))
        cases[-1].outputs, cases[-1].check, cases[-1].expect = ("out.csv",), _maybe_csv, "either"

    def bomb_unused() -> bytes:
        members = _zip_members(good)
        members.append(hf.zero_array_member("junk/huge.npy", "uint8", (3_000_000_000,), crc=False))
        p = Path(tempfile.mkdtemp()) / "ck.npz"
        data = hf.write_zip(p, members).read_bytes()
        shutil.rmtree(p.parent)
        return data

    def bomb_expected(name: str, dtype: str, shape: tuple) -> bytes:
        members = [m for m in _zip_members(good) if m[0] != name]
        members.append(hf.zero_array_member(name, dtype, shape, crc=False))
        p = Path(tempfile.mkdtemp()) / "ck.npz"
        data = hf.write_zip(p, members).read_bytes()
        shutil.rmtree(p.parent)
        return data

    add("unused-3gb-member", bomb_unused(), ok=True, quick=True, only=("predict",))
    add(
        "extra-prep-3gb",
        bomb_expected("extra/prep_mean.npy", "float32", (750_000_000,)),
        only=("predict",),
    )
    add(
        "W1-1gb-declared",
        bomb_expected("model/W1.npy", "float32", (64, 4_000_000)),
        only=("predict",),
    )
    add(
        "velocity-800mb", bomb_expected("optim/W1.npy", "float64", (100_000_000,)), only=("resume",)
    )
    for cmd in ("predict", "evaluate", "resume"):
        argv = {
            "predict": ["predict", "ck", "x.idx", "-o", "o.csv"],
            "evaluate": ["evaluate", "ck"],
            "resume": ["resume", "ck"],
        }[cmd]
        cases.append(
            Case("checkpoint", f"checkpoint-is-folder [{cmd}]", argv, lambda d: (d / "ck").mkdir())
        )
    return cases


def _meta_list(base: Base) -> bytes:
    with np.load(base.checkpoints["mlp"], allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    meta = json.loads(arrays.pop("meta.json").tobytes())
    buf = io.BytesIO()
    np.savez(buf, **arrays, **{"meta.json": np.frombuffer(json.dumps([meta]).encode(), np.uint8)})
    return buf.getvalue()


def _zip_members(data: bytes) -> list[tuple]:
    import zipfile

    out = []
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        for info in zf.infolist():
            out.append(hf.stored(info.filename, zf.read(info)))
    return out


def path_cases(base: Base) -> list[Case]:
    ck = str(base.checkpoints["mlp"])
    x = idx_bytes(np.zeros((2, IMG, IMG), np.uint8))
    cases: list[Case] = []

    def add(name, out: str, setup=None, quick=False):
        def full_setup(d: Path) -> None:
            _write(d / "x.idx", x)
            if setup:
                setup(d)

        cases.append(
            Case("paths", name, ["predict", ck, "x.idx", "-o", out], full_setup, quick=quick)
        )

    add("output-is-folder", "outdir", lambda d: (d / "outdir").mkdir(), quick=True)
    add("output-is-dot", ".")
    add("output-is-dotdot", "..")
    add("output-in-missing-folder-is-file", "afile/out.csv", lambda d: _write(d / "afile", "x"))
    add("output-trailing-slash", "out.csv/")
    add("output-empty", "")
    add("output-dev-full", "/dev/full")
    add("output-proc", "/proc/version")
    add("output-is-input", "x.idx")
    cases[-1].outputs, cases[-1].check, cases[-1].expect = ("x.idx",), _maybe_csv_x, "either"
    for name in ("train", "resume"):
        argv = (
            ["train", "--dataset", "digits-8x8", "--epochs", "1", "--model", "softmax"]
            if name == "train"
            else ["resume", ck, "--more-steps", "1"]
        )
        for out in ("afile", "afile/sub", "/proc/self"):
            cases.append(
                Case(
                    "paths",
                    f"{name}-out-{out.replace('/', '_')}",
                    [*argv, "--out", out],
                    writes("afile", "x"),
                )
            )
    return cases


def _maybe_csv_x(folder: Path) -> str | None:
    return csv_ok(folder / "x.idx")


#: Inputs that are odd but not wrong: a success with valid output is as clean as a refusal.
EITHER = {
    ("csv", "pixel- 12 "),
    ("csv", "header-only"),  # no images: predict may refuse an empty batch
    ("idx", "empty-images"),
    ("checkpoint", "order-short [predict]"),  # predict and evaluate do not use the order
    ("checkpoint", "order-short [resume]"),  # saved at an epoch's end: the order is drawn anew
    ("checkpoint", "order-short [evaluate]"),
    ("checkpoint", "extra-preprocessor-method-bad [resume]"),  # refitted from the settings
    ("png", "truncated-at-128"),
    ("png", "truncated-at-139"),
    ("toml", "batch=100000000000"),
    ("toml", "seed=18446744073709551616"),
    ("options", "--batch=999999999999"),
    ("options", "--hidden=3,,4"),
    ("options", "--seed=99999999999999999999999"),
    ("options", "--max-shift=100"),
    ("options", "--max-rotation=1e9"),
    ("options", "--data-root=/nonexistent/folder"),
    ("options", "--data-root=run.toml"),
    ("paths", "output-trailing-slash"),
    *(
        ("checkpoint", f"{name} [{cmd}]")
        for cmd in ("predict", "evaluate", "resume")
        for name in (
            "optimizer-name-bad",
            "progress-pos-huge",
            "extra-settings-bad-lr",
            "extra-settings-unknown",
            "extra-dataset-unknown",
            "velocity-extra",
            "prep-mean-wrong",
            "extra-preprocessor-missing",
        )
    ),
    *(
        ("checkpoint", f"{name} [resume]")
        for name in ("model-activation-bad", "model-dtype-bad", "model-extra-key")
    ),
}


def _allow_either(case: Case) -> None:
    case.expect = "either"
    if case.check is not None:
        return
    command = case.argv[0] if case.argv else ""
    if command == "predict":
        case.outputs, case.check = ("out.csv",), _maybe_csv
    elif command in ("train", "resume"):
        case.outputs, case.check = ("runs", "ck.npz"), _runs_ok
    else:
        case.check = lambda d: None


CLASSES = {
    "idx": idx_cases,
    "csv": csv_cases,
    "png": png_cases,
    "mat": mat_cases,
    "toml": toml_cases,
    "options": option_cases,
    "checkpoint": checkpoint_cases,
    "paths": path_cases,
    "app": lambda base: app_cases(base),
    "batch": lambda base: batch_cases(base),
    "report": lambda base: report_cases(base),
    "synth": lambda base: synth_cases(base),
    "concurrency": lambda base: concurrency_cases(base),
}

# ------------------------------------------------------------------------------- the app

#: One request to ``digitlab serve``'s application over ``runs/`` (Starlette's TestClient, no
#: socket). argv: METHOD PATH EXPECT [header:value ...] [@bodyfile]. EXPECT is a status class
#: (``2xx``, ``4xx``, ``any``). Exit 0 when the answer is in that class and not a 5xx (JSON
#: answers must parse), 1 when not, after 20 s (a hang), or on a 5xx; a DigitlabError from
#: building the app (a bad $DIGITLAB_MAX_*) is one line and exit 2, as the command does.
APP_WRAPPER = """
import json, sys, threading, warnings
warnings.simplefilter("ignore")
from digitlab.errors import DigitlabError
method, path, expect, *rest = sys.argv[1:]
headers = dict(r.split(":", 1) for r in rest if not r.startswith("@"))
body = next((open(r[1:], "rb").read() for r in rest if r.startswith("@")), None)
try:
    from starlette.testclient import TestClient
    from digitlab.serve import create_app
    from digitlab.serve.app import host_names
    hosts = host_names(headers.pop("x-listen", "127.0.0.1"))
    client = TestClient(create_app("runs", allowed_hosts=hosts), base_url="http://127.0.0.1",
                        raise_server_exceptions=False)
except DigitlabError as exc:
    print(f"digitlab: error: {exc}", file=sys.stderr)
    sys.exit(2)
out = []
def go():
    out.append(client.request(method, path, headers=headers, content=body))
t = threading.Thread(target=go, daemon=True)
t.start()
t.join(20)
if not out:
    print("hang: no answer in 20 s", file=sys.stderr)
    sys.exit(1)
r = out[0]
if r.status_code >= 500 or (expect != "any" and str(r.status_code)[0] != expect[0]):
    print(f"HTTP {r.status_code} (wanted {expect}): {r.text[:200]}", file=sys.stderr)
    sys.exit(1)
if r.headers.get("content-type", "").startswith("application/json"):
    json.loads(r.text)
print(r.status_code)
"""


def _ok(folder: Path) -> str | None:
    return None


def _copy_run(base: Base, dest: Path) -> Path:
    """A copy of the base run folder (config, history, metrics, checkpoint) at ``dest``."""
    shutil.copytree(base.checkpoints["mlp"].parent, dest)
    return dest


def _run_with(base: Base, changes: dict[str, bytes | str | None], name: str = "r") -> Setup:
    """Setup: runs/<name> (a copy of the base run) with files replaced (None: removed),
    ``"->target"``: a symbolic link, ``"|fifo"``: a FIFO; and a good run runs/good."""

    def setup(d: Path) -> None:
        run = _copy_run(base, d / "runs" / name)
        _copy_run(base, d / "runs" / "good")
        for fname, data in changes.items():
            p = run / fname
            p.parent.mkdir(parents=True, exist_ok=True)
            if p.exists() or p.is_symlink():
                p.unlink()
            if data is None:
                continue
            if isinstance(data, str) and data.startswith("->"):
                p.symlink_to(data[2:])
            elif data == "|fifo":
                os.mkfifo(p)
            else:
                _write(p, data)

    return setup


def _rgba_bomb(side: int = 7000) -> bytes:
    from PIL import Image, ImageDraw

    im = Image.new("RGBA", (side, side), (255, 255, 255, 0))
    ImageDraw.Draw(im).line([(side // 2, side // 8), (side // 2, side * 7 // 8)],
                            fill=(0, 0, 0, 255), width=side // 14)  # fmt: skip
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return buf.getvalue()


def app_cases(base: Base) -> list[Case]:
    """Every endpoint of the app over hostile run folders, ids, headers and uploads: never a
    5xx, a hang or a traceback; escapes and foreign origins refused (4xx)."""
    cases: list[Case] = []
    endpoints = ["/api/runs", "/api/run?id=r", "/api/run/history?id=r",
                 "/api/run/weights.png?id=r&unit=0", "/api/run/confusion?id=r",
                 "/api/run/examples.png?id=r&true=1&pred=2", "/api/compare?ids=r,good"]  # fmt: skip
    deep = "[" * 100_000 + "]" * 100_000
    bad_runs = {
        "metrics-deep": {"metrics.json": deep},
        "metrics-string-steps": {"metrics.json": json.dumps({"steps": "<b>x</b>",
                                                             "seconds": "abc"})},  # fmt: skip
        "metrics-confusion-300": {"metrics.json": json.dumps(
            {"confusion_test": [[1] * 300 for _ in range(300)]})},
        "config-train-5": {"config.toml": "train = 5\n"},
        "config-deep": {"config.toml": "a = " + "[" * 50_000 + "]" * 50_000 + "\n"},
        "config-binary": {"config.toml": b"\xff\xfe\x00model"},
        "history-nul": {"history.csv": b"step,val_acc\n1,0.5\x00\n"},
        "history-loop": {"history.csv": "->history.csv"},
        "history-fifo": {"history.csv": "|fifo"},
        "history-out": {"history.csv": "->/etc/passwd"},
        "history-ragged": {"history.csv": "step,val_acc\n1\n2,3,4\n,,\n"},
        "checkpoint-garbage": {"checkpoint.npz": b"PK\x03\x04garbage"},
        "checkpoint-dir": {"checkpoint.npz": None, "checkpoint.npz/x": "x"},
        "no-config": {"config.toml": None},
    }
    for what, changes in bad_runs.items():
        for ep in endpoints:
            cases.append(Case("app", f"{what} {ep.split('?')[0]}", ["GET", ep, "any"],
                              _run_with(base, changes), outputs=("runs",), check=_ok,
                              wrapper=APP_WRAPPER, quick=ep == "/api/runs"))  # fmt: skip
    fifo = _run_with(base, {})

    def fifo_experiment(d: Path) -> None:
        fifo(d)
        os.mkfifo(d / "runs" / "experiment.json")
        (d / "runs" / "exp").mkdir()
        shutil.copytree(d / "runs" / "good", d / "runs" / "exp" / "m")
        os.mkfifo(d / "runs" / "exp" / "experiment.json")

    cases.append(Case("app", "experiment.json fifo", ["GET", "/api/runs", "2xx"], fifo_experiment,
                      outputs=("runs",), check=_ok, wrapper=APP_WRAPPER, quick=True))  # fmt: skip
    for rid in ("../x", "..%2Fx", "%2e%2e/x", "/etc", "r/../../x", "r%00", "r\\..", "a" * 2000,
                "good/../../outside"):
        cases.append(Case("app", f"id {rid[:20]}", ["GET", f"/api/run?id={rid}", "4xx"],
                          _run_with(base, {}), outputs=("runs",), check=_ok,
                          wrapper=APP_WRAPPER))  # fmt: skip
    cases += _app_request_cases(base)
    return cases


def _app_request_cases(base: Base) -> list[Case]:
    """Headers, origins, uploads and crafted checkpoints."""
    cases: list[Case] = []
    digit = png(np.pad(np.full((20, 4), 255, np.uint8), 8))
    post = ["POST", "/api/predict?ids=good"]

    def add(name, argv, setup=None, env=None, quick=False):
        cases.append(Case("app", name, argv, setup or _run_with(base, {}), outputs=("runs", "b"),
                          check=_ok, wrapper=APP_WRAPPER, env=env or {}, quick=quick))  # fmt: skip

    def body(data: bytes) -> Setup:
        def setup(d: Path) -> None:
            _run_with(base, {})(d)
            _write(d / "b", data)

        return setup

    add("host foreign", ["GET", "/api/runs", "4xx", "host:attacker.example"], quick=True)
    add("host foreign on 127.0.0.2", ["GET", "/api/runs", "4xx", "host:evil.example",
                                      "x-listen:127.0.0.2"])  # fmt: skip
    add("host 127.0.0.2 own", ["GET", "/api/runs", "2xx", "host:127.0.0.2",
                               "x-listen:127.0.0.2"])  # fmt: skip
    add("origin foreign", [*post, "4xx", "origin:http://evil.example", "@b"], body(digit),
        quick=True)  # fmt: skip
    add("origin null", [*post, "4xx", "origin:null", "@b"], body(digit))
    add("sec-fetch cross-site", [*post, "4xx", "sec-fetch-site:cross-site", "@b"], body(digit))
    add("origin own", [*post, "2xx", "origin:http://127.0.0.1", "@b"], body(digit))
    add("upload digit", [*post, "2xx", "@b"], body(digit))
    add("upload rgba bomb", [*post, "any", "@b"], body(_rgba_bomb()), quick=True)
    add("upload empty", [*post, "4xx", "@b"], body(b""))
    add("upload garbage", [*post, "4xx", "@b"], body(b"\x89PNG\r\n\x1a\nnope"))
    add("upload 3 MB", [*post, "4xx", "@b"], body(b"\0" * (3 << 20)))
    add("upload header 60000x60000", [*post, "4xx", "@b"], body(hf.png_bytes(60000, 60000)))
    add("upload blank", [*post, "4xx", "@b"], body(png(np.full((50, 50), 255, np.uint8))))
    add("upload over DIGITLAB_MAX_PIXELS", [*post, "4xx", "@b"], body(png(np.zeros((200, 200),
        np.uint8))), env={"DIGITLAB_MAX_PIXELS": "10000"})  # fmt: skip
    add("DIGITLAB_MAX_PIXELS=abc", ["GET", "/api/runs", "any"], env={"DIGITLAB_MAX_PIXELS": "abc"})
    cases[-1].expect = "error"
    add("DIGITLAB_MAX_BYTES=-5", ["GET", "/api/runs", "any"], env={"DIGITLAB_MAX_BYTES": "-5"})
    cases[-1].expect = "error"
    add("predict no ids", ["POST", "/api/predict", "4xx", "@b"], body(digit))
    add("predict 9 ids", ["POST", "/api/predict?ids=" + ",".join(["good"] * 9), "4xx", "@b"],
        body(digit))  # fmt: skip
    for name, change in (("image_shape 20000", lambda m, a: m["extra"].__setitem__(
            "image_shape", [20000, 20000])),
            ("classes short", lambda m, a: m["extra"].__setitem__("classes", ["0"])),
            ("data_root private", lambda m, a: m["extra"]["settings"].__setitem__(
                "data_root", "/etc")),
            ("weights 3e38", lambda m, a: a["model/W1"].fill(3e38))):  # fmt: skip
        data = _crafted_checkpoint(base, change)
        for ep, expect in (("/api/run/confusion?id=r", "any"), ("/api/run?id=r", "2xx")):
            add(f"checkpoint {name} {ep.split('?')[0]}", ["GET", ep, expect],
                _run_with(base, {"checkpoint.npz": data}))  # fmt: skip
        add(f"checkpoint {name} predict", ["POST", "/api/predict?ids=r", "any", "@b"],
            body_and(base, {"checkpoint.npz": data}, digit))  # fmt: skip
    return cases


def body_and(base: Base, changes: dict, data: bytes) -> Setup:
    def setup(d: Path) -> None:
        _run_with(base, changes)(d)
        _write(d / "b", data)

    return setup


# ------------------------------------------------------------------------------- batches


def _rows_ok(n: int, classes: int | None = None) -> Callable[[Path], str | None]:
    """out.csv parses as CSV with ``n`` rows (``classes`` of them predicted)."""

    def check(folder: Path) -> str | None:
        import csv

        try:
            rows = list(csv.reader((folder / "out.csv").read_text().splitlines()))
        except (OSError, UnicodeDecodeError, csv.Error) as e:
            return f"out.csv: {e}"
        if len(rows) != n + 1 or rows[0][:2] != ["file", "class"]:
            return f"out.csv has {len(rows) - 1} rows, not {n}"
        got = sum(bool(r[1]) for r in rows[1:])
        if classes is not None and got != classes:
            return f"out.csv predicts {got} rows, not {classes}"
        return None

    return check


def batch_cases(base: Base) -> list[Case]:
    """``predict`` over folders mixing good and bad images, odd names and outputs."""
    ck = str(base.checkpoints["mlp"])
    good = png(np.pad(np.full((40, 8), 0, np.uint8), 20, constant_values=255))
    bad = {"blank": png(np.full((30, 30), 255, np.uint8)), "broken": b"\x89PNG\r\n\x1a\nx",
           "empty": b"", "text": b"hello", "bmp-trunc": b"BM\x00\x01",
           "huge-header": hf.png_bytes(60000, 60000)}  # fmt: skip
    cases: list[Case] = []

    def folder(files: dict[str, bytes]) -> Setup:
        def setup(d: Path) -> None:
            for name, data in files.items():
                p = os.path.join(os.fsencode(d / "in"), name.encode("utf-8", "surrogateescape"))
                os.makedirs(os.path.dirname(p), exist_ok=True)
                with open(p, "wb") as f:
                    f.write(data)

        return setup

    for what, data in bad.items():
        files = {"a.png": good, f"b-{what}.png": data, "c.png": good}
        cases.append(Case("batch", f"one {what} in three", ["predict", ck, "in", "-o", "out.csv"],
                          folder(files), ("out.csv",), _rows_ok(3, 2), quick=what == "blank"))
        cases.append(Case("batch", f"one {what} in three --strict",
                          ["predict", ck, "in", "-o", "out.csv", "--strict"], folder(files)))
    mixed = {f"{i:03d}.png": (good if i % 3 else bad["blank"]) for i in range(30)}
    cases.append(Case("batch", "30 files, 10 blank", ["predict", ck, "in", "-o", "out.csv",
                      "--proba"], folder(mixed), ("out.csv",), _rows_ok(30, 20)))  # fmt: skip
    for label, name in (("CR", "a\rb.png"), ("LF", "a\nb.png"), ("byte ff", "a\udcffb.png"),
                        ("comma quote", 'a,"b.png'), ("tab", "a\tb.png")):  # fmt: skip
        cases.append(Case("batch", f"file name with {label}", ["predict", ck, "in", "-o",
                          "out.csv"], folder({name: good}), ("out.csv",), _rows_ok(1, 1),
                          quick=label == "CR"))  # fmt: skip
        cases.append(Case("batch", f"file name with {label} --kaggle", ["predict", ck, "in", "-o",
                          "out.csv", "--kaggle"], folder({name: good}), ("out.csv",),
                          _maybe_csv))  # fmt: skip
    for out in ("/dev/full", "adir", "missing/dir/out.csv"):
        def setup(d: Path, out=out) -> None:
            folder({"a.png": good})(d)
            if out == "adir":
                (d / "adir").mkdir()

        cases.append(Case("batch", f"-o {out} with a contact sheet",
                          ["predict", ck, "in", "-o", out, "--contact-sheet", "s.png"], setup,
                          quick=out == "/dev/full"))  # fmt: skip
        if out.startswith("missing"):  # the folders are created: a success is fine
            cases[-1].outputs, cases[-1].check = ("missing", "s.png"), _ok
            cases[-1].expect = "ok"
    cases.append(Case("batch", "run folder as checkpoint", ["predict", str(Path(ck).parent), "in",
                      "-o", "out.csv"], folder({"a.png": good}), ("out.csv",), _rows_ok(1, 1)))
    cases.append(Case("batch", "folder without checkpoint", ["predict", "in", "in"],
                      folder({"a.png": good})))  # fmt: skip
    cases.append(Case("batch", "DIGITLAB_MAX_PIXELS=100", ["predict", ck, "in", "-o", "out.csv"],
                      folder({"a.png": good, "b.png": good}), ("out.csv",), _rows_ok(2, 0),
                      env={"DIGITLAB_MAX_PIXELS": "100"}))  # fmt: skip
    cases.append(Case("batch", "DIGITLAB_MAX_PIXELS=abc", ["predict", ck, "in"],
                      folder({"a.png": good}), env={"DIGITLAB_MAX_PIXELS": "abc"}))  # fmt: skip
    return cases


# ------------------------------------------------------------------------------- reports


def _report_ok(folder: Path) -> str | None:
    html = list(folder.rglob("report.html"))
    return None if html else "no report.html written"


def report_cases(base: Base) -> list[Case]:
    """``digitlab report`` of run folders holding hostile files."""
    cases: list[Case] = []
    changes = {
        "metrics-deep": {"metrics.json": "[" * 100_000 + "]" * 100_000},
        "metrics-seconds-string": {"metrics.json": json.dumps({"seconds": "abc"})},
        "metrics-null": {"metrics.json": "null"},
        "history-nul": {"history.csv": b"step,val_acc\n1,0.5\x00\n"},
        "history-loop": {"history.csv": "->history.csv"},
        "config-train-5": {"config.toml": "train = 5\n"},
        "config-deep": {"config.toml": "a = " + "[" * 50_000 + "]" * 50_000 + "\n"},
        "checkpoint-garbage": {"checkpoint.npz": b"PK\x03\x04garbage"},
        "figures-link-out": {"figures": "->../../victimdir"},
        "report-tmp-link": {".report.html.tmp": "->../../victim"},
        "report-md-tmp-link": {".report.md.tmp": "->../../victim"},
    }

    def with_victims(setup: Setup) -> Setup:
        def both(d: Path) -> None:
            setup(d)
            _write(d / "victim", b"precious")
            (d / "victimdir").mkdir()

        return both

    def check(d: Path) -> str | None:
        if any((d / "victimdir").iterdir()):
            return "wrote figures through a linked figures/ folder"
        return _victim_ok(d) or _report_ok(d)

    for what, change in changes.items():
        c = Case("report", what, ["report", "runs/r"], with_victims(_run_with(base, change)),
                 outputs=("runs",), check=check, quick=what == "metrics-deep")  # fmt: skip
        c.expect = "either"
        cases.append(c)
    none = Case("report", "no argument, plain runs", ["report"], _run_with(base, {}),
                outputs=("runs",), check=_report_ok, quick=True)  # fmt: skip
    cases.append(none)
    cases.append(Case("report", "no argument, no runs", ["report"]))
    cases.append(Case("report", "a file as run", ["report", "f"], writes("f", "x")))
    return cases


# ------------------------------------------------------------------------------- synth

SHARED_DATA = os.environ.get("DIGITLAB_BATTERY_DATA", "/work/shared/data")


def _victim_ok(folder: Path) -> str | None:
    victim = folder / "victim"
    if victim.exists() and victim.read_bytes() != b"precious":
        return "wrote through a planted link into victim"
    return None


def synth_cases(base: Base) -> list[Case]:
    """``data synth`` with planted links, odd options and leftovers (needs full MNIST at
    $DIGITLAB_BATTERY_DATA, default /work/shared/data; skipped without it)."""
    if not (Path(SHARED_DATA) / "mnist").is_dir():
        return []
    env = {"DIGITLAB_DATA": SHARED_DATA}
    argv = ["data", "synth", "mnist-8m", "--n", "61000", "--root", "root"]
    cases: list[Case] = []
    for name in ("t10k-labels-idx1-ubyte.gz.part", "t10k-images-idx3-ubyte.gz.part",
                 "train-images-idx3-ubyte.part", "train-labels-idx1-ubyte.part",
                 "synth.json.part", "t10k-labels-idx1-ubyte.gz", "synth.json"):  # fmt: skip
        def setup(d: Path, name=name) -> None:
            (d / "root" / "mnist-8m").mkdir(parents=True)
            _write(d / "victim", b"precious")
            (d / "root" / "mnist-8m" / name).symlink_to(d / "victim")

        def check(d: Path) -> str | None:
            return _victim_ok(d)

        c = Case("synth", f"link planted at {name}", argv, setup, ("root",), check, env=env,
                 quick=name.endswith(".gz.part"))  # fmt: skip
        c.expect = "either"
        cases.append(c)
        cases[-1].outputs = ("root",)
    deep = "[" * 100_000 + "]" * 100_000
    for what, data in (("deep", deep), ("binary", b"\xff\x00"), ("list", "[]"),
                       ("done-huge", json.dumps({"done": 10**30}))):  # fmt: skip
        cases.append(Case("synth", f"synth.json.part {what}", argv,
                          writes("root/mnist-8m/synth.json.part", data), env=env))  # fmt: skip
    for n in ("0", "-1", "abc", "99999999999999"):
        cases.append(Case("synth", f"--n {n}", ["data", "synth", "mnist-8m", "--n", n, "--root",
                          "root"], env=env))  # fmt: skip
    return cases


# ------------------------------------------------------------------------------- concurrency

#: Runs the digitlab command given (argv after N) N times at once; exit 0 when every run
#: exits 0 without a traceback, else one line and exit 1.
CONCURRENT_WRAPPER = """
import subprocess, sys
n, argv = int(sys.argv[1]), sys.argv[2:]
procs = [subprocess.Popen([sys.executable, "-m", "digitlab.cli", *argv],
         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for _ in range(n)]
bad = []
for p in procs:
    err = p.communicate(timeout=100)[1]
    if p.returncode != 0 or "Traceback" in err:
        bad.append(f"exit {p.returncode}: {err.strip().splitlines()[-1:]}")
if bad:
    print(f"{len(bad)} of {n} failed: {bad[0][:150]}", file=sys.stderr)
    sys.exit(1)
"""


def concurrency_cases(base: Base) -> list[Case]:
    """The same command several times at once in one folder."""
    ck = str(base.checkpoints["mlp"])
    digit = png(np.pad(np.full((40, 8), 0, np.uint8), 20, constant_values=255))
    fast = ["--dataset", "digits-8x8", "--epochs", "1", "--quiet", "--out", "runs"]
    cases = [
        Case("concurrency", "4 reports of one run", ["4", "report", "runs/r"],
             _run_with(base, {}), ("runs",), _report_ok, wrapper=CONCURRENT_WRAPPER, quick=True),
        Case("concurrency", "4 trains, one name", ["4", "train", *fast, "--name", "same"],
             None, ("runs",), _runs_ok, wrapper=CONCURRENT_WRAPPER),
        Case("concurrency", "4 predicts, one output", ["4", "predict", ck, "a.png", "-o",
             "out.csv"], writes("a.png", digit), ("out.csv",), predict_ok(1),
             wrapper=CONCURRENT_WRAPPER),
        Case("concurrency", "3 resumes of one run", ["3", "resume", ck, "--more-steps", "5",
             "--out", "runs", "--quiet"], None, ("runs",), _runs_ok,
             wrapper=CONCURRENT_WRAPPER),
    ]  # fmt: skip
    return cases


# ------------------------------------------------------------------------------- running

LIBRARY_WRAPPER = """
import sys
from digitlab.data.formats import read_letters_mat
from digitlab.errors import DigitlabError
try:
    read_letters_mat(sys.argv[1])
except DigitlabError as exc:
    print(f"digitlab: error: {exc}", file=sys.stderr)
    sys.exit(2)
"""


def _limit() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


def _tree(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


@dataclass
class Outcome:
    case: Case
    clean: bool
    why: str
    seconds: float


def _refused_verdict(case: Case, stderr_lines: list[str], new: set[str], took: float) -> Outcome:
    """A run that exited 2: clean when it printed one line, left no files and was meant to
    be refused."""
    if len(stderr_lines) != 1:
        return Outcome(
            case,
            False,
            f"exit 2 with {len(stderr_lines)} stderr lines: {' | '.join(stderr_lines)[:160]}",
            took,
        )
    if new:
        return Outcome(case, False, f"error left files: {sorted(new)[:4]}", took)
    if case.expect == "ok":
        return Outcome(case, False, f"refused a valid input: {stderr_lines[0][:140]}", took)
    return Outcome(case, True, "error: " + stderr_lines[0][:120], took)


def _success_verdict(case: Case, folder: Path, new: set[str], took: float) -> Outcome:
    """A run that exited 0: clean when success was allowed, it wrote only its outputs and
    they pass the case's check."""
    if case.expect == "error" or case.check is None:
        return Outcome(case, False, "exit 0 on input that must be refused", took)
    stray = {p for p in new if p.split("/")[0] not in case.outputs}
    if stray:
        return Outcome(case, False, f"success left unexpected files: {sorted(stray)[:4]}", took)
    problem = case.check(folder)
    if problem:
        return Outcome(case, False, f"exit 0 but invalid output: {problem}", took)
    return Outcome(case, True, "ok", took)


def _verdict(
    case: Case,
    folder: Path,
    proc: subprocess.CompletedProcess,
    stderr_lines: list[str],
    new: set[str],
    took: float,
) -> Outcome:
    """Classify a finished run: a traceback is never clean, exit 2 is judged as a refusal,
    exit 0 as a success, any other exit status is not clean."""
    if "Traceback" in proc.stderr:
        last = stderr_lines[-1] if stderr_lines else ""
        return Outcome(case, False, f"traceback (exit {proc.returncode}): {last[:160]}", took)
    if proc.returncode == 2:
        return _refused_verdict(case, stderr_lines, new, took)
    if proc.returncode == 0:
        return _success_verdict(case, folder, new, took)
    return Outcome(
        case, False, f"exit {proc.returncode}: {' | '.join(stderr_lines[-2:])[:160]}", took
    )


def run_case(case: Case, scratch: Path, env: dict[str, str]) -> Outcome:
    folder = Path(tempfile.mkdtemp(prefix="case-", dir=scratch))
    start = time.monotonic()
    try:
        if case.setup:
            case.setup(folder)
        before = _tree(folder)
        outside = _tree(scratch.parent / "outside")
        if case.library or case.wrapper:
            cmd = [sys.executable, "-c", case.wrapper or LIBRARY_WRAPPER, *case.argv]
        else:
            cmd = [sys.executable, "-m", "digitlab.cli", *case.argv]
        try:
            proc = subprocess.run(
                cmd,
                cwd=folder,
                env=env | case.env,
                capture_output=True,
                text=True,
                timeout=TIME_LIMIT,
                preexec_fn=_limit,
            )
        except subprocess.TimeoutExpired:
            return Outcome(case, False, f"timeout after {TIME_LIMIT} s", time.monotonic() - start)
        took = time.monotonic() - start
        stderr_lines = [line for line in proc.stderr.splitlines() if line.strip()]
        new = _tree(folder) - before
        if _tree(scratch.parent / "outside") != outside:
            return Outcome(case, False, "touched a path outside its folder", took)
        return _verdict(case, folder, proc, stderr_lines, new, took)
    except Exception as e:  # a bug in the battery itself: report it as such
        return Outcome(
            case, False, f"battery error {type(e).__name__}: {e}", time.monotonic() - start
        )
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def make_base(folder: Path, env: dict[str, str]) -> Base:
    base = Base(folder)
    folder.mkdir(parents=True, exist_ok=True)
    specs = {"mlp": ["--model", "mlp", "--hidden", "8", "--momentum", "0.9"]}
    for name, args in specs.items():
        cmd = [
            sys.executable,
            "-m",
            "digitlab.cli",
            "train",
            "--dataset",
            "digits-8x8",
            "--epochs",
            "1",
            "--out",
            str(folder / "runs"),
            "--name",
            name,
            *args,
        ]
        subprocess.run(cmd, env=env, check=True, capture_output=True, cwd=folder)
        base.checkpoints[name] = next((folder / "runs" / name).rglob("checkpoint.npz"))
    return base


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="a small subset (a few per class)")
    p.add_argument("--jobs", type=int, default=2, help="cases run at once")
    p.add_argument("--only", action="append", choices=sorted(CLASSES), help="classes to run")
    p.add_argument("--require", type=float, default=98.0, help="clean percent needed to pass")
    p.add_argument("--list", action="store_true", help="list the cases and exit")
    args = p.parse_args(argv)

    env = {k: v for k, v in os.environ.items() if not k.startswith("DIGITLAB_")}
    env |= {
        "PYTHONPATH": str(ROOT / "src"),
        "MPLBACKEND": "Agg",
        "OPENBLAS_NUM_THREADS": "1",
        "OMP_NUM_THREADS": "1",
        "PYTHONWARNINGS": "default",
    }
    escaped = Path("/tmp/digitlab-battery-escape")  # where an absolute --name would write
    shutil.rmtree(escaped, ignore_errors=True)
    with tempfile.TemporaryDirectory(prefix="digitlab-battery-") as tmp:
        tmp_path = Path(tmp)
        (tmp_path / "outside").mkdir()
        env["HOME"] = env["XDG_CACHE_HOME"] = str(tmp_path / "outside")
        env["MPLCONFIGDIR"] = str(tmp_path / "mplconfig")  # matplotlib's own cache, not ours
        base = make_base(tmp_path / "base", env)
        cases = [
            c for k, make in CLASSES.items() if not args.only or k in args.only for c in make(base)
        ]
        for c in cases:
            if (c.klass, c.name) in EITHER:
                _allow_either(c)
        if args.quick:
            cases = [c for c in cases if c.quick]
        if args.list:
            for c in cases:
                print(f"{c.klass:10s} {c.name}")
            return 0
        scratch = tmp_path / "cases"
        scratch.mkdir()
        print(f"{len(cases)} hostile inputs, {args.jobs} at a time ...", flush=True)
        with ThreadPoolExecutor(args.jobs) as pool:
            outcomes = list(pool.map(lambda c: run_case(c, scratch, env), cases))
        if escaped.exists():
            shutil.rmtree(escaped, ignore_errors=True)
            outcomes.append(
                Outcome(Case("paths", "absolute --name", []), False, f"{escaped} was created", 0)
            )
    by_class: dict[str, Counter] = defaultdict(Counter)
    failures: dict[str, list[Outcome]] = defaultdict(list)
    for o in outcomes:
        by_class[o.case.klass]["clean" if o.clean else "failed"] += 1
        if not o.clean:
            failures[o.case.klass].append(o)
    clean = sum(o.clean for o in outcomes)
    pct = 100.0 * clean / max(len(outcomes), 1)
    print(f"\n{clean}/{len(outcomes)} clean ({pct:.1f}%)")
    for k, c in by_class.items():
        print(f"  {k:10s} {c['clean']:4d} clean  {c['failed']:4d} failed")
    for k, items in failures.items():
        print(f"\nfailures in {k}:")
        for o in items:
            print(f"  - {o.case.name}: {o.why}")
    slow = sorted(outcomes, key=lambda o: -o.seconds)[:3]
    print(
        "\nslowest: " + ", ".join(f"{o.case.klass}/{o.case.name} {o.seconds:.1f} s" for o in slow)
    )
    return 0 if pct >= args.require else 1


if __name__ == "__main__":
    sys.exit(main())
