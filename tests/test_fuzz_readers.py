"""Property-based tests of every reader: a DigitlabError (one line) or a valid result, never
any other exception.

Readers: IDX (raw and gzip), Kaggle CSV (plain and gzip), the letters ``.mat``, PNG folders,
checkpoints (``load_checkpoint`` and then rebuilding a model and a trainer from what it
returned) and the TOML settings file. Inputs are built from structure (plausible headers with
hostile fields) and then mutated (truncated, bytes flipped), so that most examples get past
the first check. The suite is sized to run in well under a minute.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import math
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from digitlab.checkpoint import FORMAT, FORMAT_VERSION, load_checkpoint, save_checkpoint
from digitlab.data.formats import read_csv, read_image_folder, read_letters_mat
from digitlab.data.idx import IDX_DTYPES, MAX_RANK, read_idx
from digitlab.errors import DigitlabError

# a warning would reach the user's terminal as more than the one error line: fail on it
pytestmark = pytest.mark.filterwarnings("error")

FUZZ = settings(
    max_examples=120,
    deadline=None,
    derandomize=True,  # the same examples every run: a failure reproduces
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def holds_contract(read, *args):
    """Call ``read``; return its result, or None after a one-line DigitlabError."""
    try:
        return read(*args)
    except DigitlabError as exc:
        message = str(exc)
        assert message and "\n" not in message, repr(message)
        return None


@st.composite
def mutated(draw, content: bytes) -> bytes:
    """``content`` unchanged, truncated, with bytes flipped, or with junk appended."""
    how = draw(st.sampled_from(["same", "truncate", "flip", "append"]))
    if how == "truncate" and content:
        return content[: draw(st.integers(0, len(content) - 1))]
    if how == "flip" and content:
        data = bytearray(content)
        for _ in range(draw(st.integers(1, 4))):
            i = draw(st.integers(0, len(data) - 1))
            data[i] = draw(st.integers(0, 255))
        return bytes(data)
    if how == "append":
        return content + draw(st.binary(min_size=1, max_size=16))
    return content


@contextlib.contextmanager
def scratch():
    """A fresh folder for one example, removed afterwards."""
    folder = Path(tempfile.mkdtemp(prefix="digitlab-fuzz-"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


# ------------------------------------------------------------------------------------ IDX

DIMS = st.one_of(st.integers(0, 6), st.integers(0, 2**32 - 1), st.sampled_from([2**31, 2**32 - 1]))


@st.composite
def idx_files(draw) -> bytes:
    code = draw(st.one_of(st.sampled_from(sorted(IDX_DTYPES)), st.integers(0, 255)))
    rank = draw(st.one_of(st.integers(0, MAX_RANK + 1), st.integers(0, 255)))
    shape = [draw(DIMS) for _ in range(min(rank, 6))]
    header = bytes([0, 0, code, rank]) + b"".join(d.to_bytes(4, "big") for d in shape)
    itemsize = IDX_DTYPES[code].itemsize if code in IDX_DTYPES else 1
    need = math.prod(shape) * itemsize if len(shape) == rank else 0
    body_len = need if need <= 512 else draw(st.integers(0, 64))
    body = draw(st.binary(min_size=body_len, max_size=body_len))
    return draw(mutated(header + body))


@FUZZ
@given(content=st.one_of(idx_files(), st.binary(max_size=64)), compress=st.booleans())
def test_idx_reader(content, compress):
    with scratch() as folder:
        path = folder / "x.idx"
        path.write_bytes(gzip.compress(content, mtime=0) if compress else content)
        arr = holds_contract(read_idx, path)
    if arr is not None:
        assert 1 <= arr.ndim <= MAX_RANK
        assert arr.dtype.isnative and arr.flags.writeable
        assert 4 + 4 * arr.ndim + arr.nbytes == len(content)


@FUZZ
@given(content=idx_files(), cut=st.integers(1, 40))
def test_idx_reader_on_corrupt_gzip(content, cut):
    """gzip streams cut short or with a damaged trailer."""
    packed = gzip.compress(content, mtime=0)
    with scratch() as folder:
        path = folder / "x.idx.gz"
        path.write_bytes(packed[: max(len(packed) - cut, 2)])
        holds_contract(read_idx, path)
        path.write_bytes(packed[:-4] + bytes(4))  # trailer says length 0
        arr = holds_contract(read_idx, path)
    if arr is not None:
        assert 4 + 4 * arr.ndim + arr.nbytes == len(content)


# ------------------------------------------------------------------------------------ CSV

FIELDS = st.one_of(
    st.integers(0, 255).map(str),
    st.integers(-(2**40), 2**40).map(str),
    st.sampled_from(["", "label", "pixel0", "nan", "inf", "1e3", "2.5", "-0", '"7"', "x", " 3 "]),
    st.text(max_size=4),
)


@st.composite
def csv_texts(draw) -> str:
    n_cols = draw(st.sampled_from([1, 4, 5, 9, 10, 17]))
    rows = []
    if draw(st.booleans()):
        rows.append(",".join(["label"] + [f"pixel{i}" for i in range(n_cols - 1)]))
    for _ in range(draw(st.integers(0, 4))):
        width = draw(st.sampled_from([n_cols, n_cols, n_cols - 1, n_cols + 1]))
        rows.append(",".join(draw(FIELDS) for _ in range(max(width, 0))))
    sep = draw(st.sampled_from(["\n", "\r\n", "\n\n"]))
    return sep.join(rows)


@FUZZ
@given(text=st.one_of(csv_texts(), st.text(max_size=80)), compress=st.booleans())
def test_csv_reader(text, compress):
    data = text.encode("utf-8", "surrogatepass")
    with scratch() as folder:
        path = folder / ("x.csv.gz" if compress else "x.csv")
        path.write_bytes(gzip.compress(data, mtime=0) if compress else data)
        out = holds_contract(read_csv, path)
    if out is not None:
        images, labels = out
        assert images.dtype == np.uint8 and images.ndim == 3
        assert images.shape[1] == images.shape[2]
        if labels is not None:
            assert labels.dtype == np.int64 and labels.shape == images.shape[:1]
            assert labels.size == 0 or labels.min() >= 0


@FUZZ
@given(content=st.binary(max_size=64))
def test_csv_reader_on_binary(content):
    with scratch() as folder:
        path = folder / "x.csv.gz"
        path.write_bytes(content)  # gzip by name, anything inside
        holds_contract(read_csv, path)


# ------------------------------------------------------------------------------------ .mat

MAT_VALUES = st.one_of(
    st.tuples(st.integers(0, 5), st.sampled_from([1, 4, 9, 784])).map(
        lambda s: np.zeros(s, np.uint8)
    ),
    st.tuples(st.integers(0, 5), st.integers(0, 3)).map(lambda s: np.ones(s, np.float64) * 300),
    st.tuples(st.integers(0, 5), st.integers(1, 2)).map(
        lambda s: np.arange(math.prod(s)).reshape(s)
    ),
    st.just("text"),
    st.just(np.array([1.5, np.nan])),
    st.just({"a": 1}),
    st.just(np.zeros((2, 2, 2, 2))),
    st.just(np.array([[1 + 2j]])),
)


@st.composite
def mat_files(draw) -> bytes:
    from scipy.io import savemat

    names = draw(st.sets(st.sampled_from(["train_x", "train_y", "test_x", "test_y", "other"])))
    values = {n: draw(MAT_VALUES) for n in names}
    if draw(st.booleans()):  # a well-formed pair, so some examples read successfully
        n = draw(st.integers(0, 3))
        values |= {"train_x": np.zeros((n, 784), np.uint8), "test_x": np.zeros((1, 784), np.uint8),
                   "train_y": np.ones((n, 1)) * draw(st.integers(-1, 27))}  # fmt: skip
    buf = io.BytesIO()
    savemat(buf, values, do_compression=draw(st.booleans()))
    return draw(mutated(buf.getvalue()))


@FUZZ
@given(content=st.one_of(mat_files(), st.binary(max_size=200)), transpose=st.booleans())
def test_mat_reader(content, transpose):
    with scratch() as folder:
        path = folder / "letters.mat"
        path.write_bytes(content)
        out = holds_contract(read_letters_mat, path, transpose)
    if out is not None:
        assert out["train_x"].dtype == np.uint8 and out["train_x"].ndim == 3
        assert out["train_y"].shape == out["train_x"].shape[:1]
        assert out["train_y"].size == 0 or 0 <= out["train_y"].min() <= out["train_y"].max() <= 25


# ------------------------------------------------------------------------------------ PNG


@st.composite
def png_files(draw) -> bytes:
    from PIL import Image

    mode = draw(st.sampled_from(["L", "RGB", "RGBA", "LA", "I;16", "P", "1"]))
    size = (draw(st.integers(1, 12)), draw(st.integers(1, 12)))
    buf = io.BytesIO()
    Image.new(mode, size).save(buf, format="PNG")
    return draw(mutated(buf.getvalue()))


@FUZZ
@given(files=st.lists(st.one_of(png_files(), st.binary(max_size=40)), min_size=0, max_size=3))
def test_png_folder_reader(files):
    with scratch() as folder:
        for i, content in enumerate(files):
            (folder / f"{i}.png").write_bytes(content)
        out = holds_contract(read_image_folder, folder)
    if out is not None:
        images, names = out
        assert images.dtype == np.uint8 and images.ndim == 3 and len(names) == len(images)


# ------------------------------------------------------------------------------ checkpoint


def _real_checkpoint() -> tuple[dict[str, np.ndarray], dict]:
    """Arrays and metadata of a genuine (tiny) MLP run with momentum and early stopping."""
    from digitlab.models import MLPModel
    from digitlab.optim import SGD
    from digitlab.train import EarlyStopping, Trainer

    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(40, 4)).astype(np.float32), rng.integers(0, 3, 40)
    trainer = Trainer(MLPModel(4, 3, hidden=(5,), rng=0), optimizer=SGD(momentum=0.9),
                      batch_size=8, eval_every=2, callbacks=[EarlyStopping("val_loss", 5)],
                      rng=0)  # fmt: skip
    trainer.fit((X, y), (X, y), steps=3)
    return trainer.state_dict()


REAL_ARRAYS, TRAINER_META = _real_checkpoint()
REAL_META = json.loads(json.dumps({"format": FORMAT, "format_version": FORMAT_VERSION,
                                   **TRAINER_META}))  # as stored  # fmt: skip

JSON_VALUES = st.recursive(
    st.one_of(
        st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(), st.text(max_size=5)
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=6,
)


def _paths(obj, prefix=()):
    """Every key path of a nested dict/list."""
    yield prefix
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _paths(v, (*prefix, i))


META_PATHS = [p for p in _paths(REAL_META) if p]


@st.composite
def crafted_meta(draw) -> object:
    meta = json.loads(json.dumps(REAL_META))
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(META_PATHS))
        parent = meta
        try:
            for k in path[:-1]:
                parent = parent[k]
            if draw(st.booleans()) and isinstance(parent, dict):
                parent.pop(path[-1], None)
            else:
                parent[path[-1]] = draw(JSON_VALUES)
        except (KeyError, IndexError, TypeError):
            pass
    return draw(st.one_of(st.just(meta), st.just(meta), st.just([meta]), JSON_VALUES))


ARRAY_SHAPES = st.lists(st.integers(0, 6), max_size=3).map(tuple)


@st.composite
def crafted_arrays(draw) -> dict[str, np.ndarray]:
    arrays = {k: v.copy() for k, v in REAL_ARRAYS.items()}
    for _ in range(draw(st.integers(0, 3))):
        key = draw(st.sampled_from([*sorted(arrays), "optim/W9", "extra/junk", "cb0/b1", "zzz"]))
        kind = draw(st.sampled_from(["drop", "reshape", "dtype"]))
        if kind == "drop":
            arrays.pop(key, None)
        elif kind == "reshape":
            arrays[key] = np.zeros(draw(ARRAY_SHAPES), np.float32)
        else:
            dtype = draw(st.sampled_from(["int8", "bool", "float16", "complex64", "U3"]))
            arrays[key] = np.zeros(arrays.get(key, np.zeros(2)).shape, dtype)
    return arrays


def _write_checkpoint(path: Path, arrays: dict, meta: object) -> None:
    blob = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    with open(path, "wb") as f:
        np.savez(f, **arrays, **{"meta.json": blob})


def _resume_with(arrays, meta) -> None:
    """What `digitlab resume` does with a checkpoint once it is loaded."""
    from digitlab.models import build_model
    from digitlab.optim import make_optimizer
    from digitlab.train import EarlyStopping, Trainer

    model = build_model(meta["model"])
    trainer = Trainer(model, optimizer=make_optimizer(meta["optimizer"]),
                      callbacks=[EarlyStopping("val_loss", 5)])  # fmt: skip
    trainer.load_state_dict(arrays, meta)


@FUZZ
@given(arrays=crafted_arrays(), meta=crafted_meta(), how=st.sampled_from(["npz", "bytes"]))
def test_checkpoint_loader(arrays, meta, how):
    with scratch() as folder:
        path = folder / "ck.npz"
        _write_checkpoint(path, arrays, meta)
        out = holds_contract(load_checkpoint, path)
    if out is not None:
        loaded, loaded_meta = out
        assert set(loaded) <= set(arrays) and "zzz" not in loaded
        holds_contract(_resume_with, loaded, loaded_meta)


@FUZZ
@given(content=st.data())
def test_checkpoint_loader_on_damaged_files(content):
    with scratch() as folder:
        path = folder / "ck.npz"
        save_checkpoint(path, REAL_ARRAYS, TRAINER_META)
        path.write_bytes(content.draw(mutated(path.read_bytes())))
        out = holds_contract(load_checkpoint, path)
    if out is not None:
        holds_contract(_resume_with, *out)


def test_genuine_checkpoint_survives_the_checks(tmp_path):
    """The unmutated checkpoint loads and resumes: the fuzz cases above can succeed."""
    save_checkpoint(tmp_path / "ck.npz", REAL_ARRAYS, TRAINER_META)
    arrays, meta = load_checkpoint(tmp_path / "ck.npz")
    assert set(arrays) == set(REAL_ARRAYS)
    _resume_with(arrays, meta)


# ----------------------------------------------------------------------------- settings


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return (
            "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf") if math.isinf(v) else repr(v)
        )
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return "{" + ", ".join(f"{json.dumps(k)} = {_toml_value(x)}" for k, x in v.items()) + "}"


TOML_VALUES = st.recursive(
    st.one_of(
        st.booleans(),
        st.integers(-(2**63), 2**63 - 1),
        st.floats(),
        st.text(max_size=6),
        st.sampled_from(["mlp", "softmax", "tanh", "mnist-5k", "sgd", "adam"]),
    ),  # fmt: skip
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=3), inner, max_size=2)
    ),
    max_leaves=5,
)


def _settings_class():
    try:  # the declarative settings module (issue 10), else the runner's Settings
        from digitlab.settings import Settings
    except ImportError:
        from digitlab.settings import Settings
    return Settings


@FUZZ
@given(data=st.data())
def test_settings_file(data):
    Settings = _settings_class()  # noqa: N806 - a class
    names = list(Settings.names())
    keys = data.draw(
        st.lists(st.one_of(st.sampled_from(names), st.text(min_size=1, max_size=4)), max_size=4)
    )
    lines = [f"{json.dumps(k)} = {_toml_value(data.draw(TOML_VALUES))}" for k in keys]
    if data.draw(st.booleans()):
        lines.insert(0, "[train]")
    text = "\n".join(lines)
    if data.draw(st.booleans()):
        text = data.draw(st.text(max_size=40))
    with scratch() as folder:
        path = folder / "run.toml"
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
        holds_contract(Settings.from_toml, path)


def test_deeply_nested_settings_file(tmp_path):
    pytest.importorskip("digitlab.settings", reason="the settings gate of digitlab.settings")
    Settings = _settings_class()  # noqa: N806 - a class
    path = tmp_path / "deep.toml"
    path.write_text("hidden = " + "[" * 20000 + "]" * 20000)
    with pytest.raises(DigitlabError):
        Settings.from_toml(path)
