"""CSV, seed 003's letters .mat and PNG-folder readers."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
import scipy.io
from PIL import Image

from digitlab.data.formats import read_csv, read_image_folder, read_letters_mat, write_csv
from digitlab.errors import DataError, DatasetNotFoundError


@pytest.fixture
def images() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (7, 28, 28), dtype=np.uint8)


# -- CSV ----------------------------------------------------------------------------------------


def test_csv_round_trip_with_labels(tmp_path, images):
    labels = np.array([3, 1, 4, 1, 5, 9, 2])
    path = write_csv(tmp_path / "train.csv", images, labels)
    header = path.read_text().splitlines()[0].split(",")
    assert header[:3] == ["label", "pixel0", "pixel1"] and header[-1] == "pixel783"
    x, y = read_csv(path)
    assert x.dtype == np.uint8 and x.shape == (7, 28, 28)
    assert y.dtype == np.int64
    np.testing.assert_array_equal(x, images)
    np.testing.assert_array_equal(y, labels)


def test_csv_test_file_without_labels(tmp_path, images):
    x, y = read_csv(write_csv(tmp_path / "test.csv", images))
    assert y is None
    np.testing.assert_array_equal(x, images)


def test_csv_hand_written_kaggle_layout(tmp_path):
    path = tmp_path / "k.csv"
    path.write_text("label,pixel0,pixel1,pixel2,pixel3\n7,0,255,10,20\n2,1,2,3,4\n")
    x, y = read_csv(path)
    assert y.tolist() == [7, 2]
    np.testing.assert_array_equal(x[0], [[0, 255], [10, 20]])  # row-major


def test_csv_without_header_and_gzip(tmp_path):
    path = tmp_path / "plain.csv.gz"
    with gzip.open(path, "wt") as f:
        f.write("5,1,2,3,4\n6,4,3,2,1\n")  # 5 columns: label then 2x2 pixels
    x, y = read_csv(path)
    assert y.tolist() == [5, 6] and x[1].tolist() == [[4, 3], [2, 1]]
    path2 = tmp_path / "nolabel.csv"
    path2.write_text("1,2,3,4\n")
    x2, y2 = read_csv(path2)
    assert y2 is None and x2.shape == (1, 2, 2)


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        ("label,pixel0,pixel1,pixel2,pixel3\n1,0,0,0,300\n", "0..255"),
        ("label,pixel0,pixel1,pixel2,pixel3\n1,0,0,0\n", "4 columns, header has 5"),
        ("label,pixel0,pixel1,pixel2,pixel3\n1,0,0,0,0\n2,0,0\n", "malformed"),
        ("label,pixel0,pixel1,pixel2,pixel3\n1,0,x,0,0\n", "malformed"),
        ("label,pixel0,pixel1,pixel2\n1,0,0,0\n", "square"),
        ("label,pixel0,pixel1,pixel2,pixel3\n-1,0,0,0,0\n", "negative label"),
        ("", "empty"),
    ],
    ids=[
        "pixel-range",
        "short-rows",
        "ragged",
        "non-numeric",
        "not-square",
        "negative-label",
        "empty",
    ],
)
def test_bad_csv_raises_data_error_naming_file(tmp_path, content, fragment):
    path = tmp_path / "bad-file.csv"
    path.write_text(content)
    with pytest.raises(DataError, match=fragment) as info:
        read_csv(path)
    assert "bad-file.csv" in str(info.value)


def test_csv_missing_file(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="nope.csv"):
        read_csv(tmp_path / "nope.csv")


# -- letters .mat (seed 003) --------------------------------------------------------------------


def _letters_mat(path, n=12, m=5, labels=None, **extra):
    rng = np.random.default_rng(1)
    train = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    test = rng.integers(0, 256, (m, 28, 28), dtype=np.uint8)
    y = np.arange(n) % 26 + 1 if labels is None else labels
    content = {
        "train_x": train.reshape(n, 784),  # rows unrolled in C order, as seed 003 reshapes
        "train_y": y.reshape(-1, 1).astype(np.uint8),
        "test_x": test.reshape(m, 784),
        **extra,
    }
    scipy.io.savemat(path, content)
    return train, y, test


def test_letters_mat_layout(tmp_path):
    train, y, test = _letters_mat(tmp_path / "letters_data.mat", n=30)
    out = read_letters_mat(tmp_path / "letters_data.mat")
    assert set(out) == {"train_x", "train_y", "test_x"}
    assert out["train_x"].dtype == np.uint8 and out["train_x"].shape == (30, 28, 28)
    np.testing.assert_array_equal(out["train_x"], train)
    np.testing.assert_array_equal(out["test_x"], test)
    assert out["train_y"].dtype == np.int64
    np.testing.assert_array_equal(out["train_y"], y - 1)
    assert out["train_y"].min() == 0 and out["train_y"].max() == 25


def test_letters_mat_transpose_and_test_labels(tmp_path):
    train, _, _ = _letters_mat(tmp_path / "l.mat", test_y=np.array([[26], [1], [2], [3], [4]]))
    out = read_letters_mat(tmp_path / "l.mat", transpose=True)
    np.testing.assert_array_equal(out["train_x"], train.transpose(0, 2, 1))
    assert out["test_y"].tolist() == [25, 0, 1, 2, 3]


def test_letters_mat_zero_based_labels_kept(tmp_path):
    _letters_mat(tmp_path / "z.mat", n=3, labels=np.array([0, 25, 4]))
    assert read_letters_mat(tmp_path / "z.mat")["train_y"].tolist() == [0, 25, 4]


def test_letters_mat_errors(tmp_path):
    _letters_mat(tmp_path / "big-label.mat", n=2, labels=np.array([1, 27]))
    with pytest.raises(DataError, match=r"big-label.mat.*1\.\.26"):
        read_letters_mat(tmp_path / "big-label.mat")
    scipy.io.savemat(tmp_path / "no-test.mat", {"train_x": np.zeros((2, 784), np.uint8)})
    with pytest.raises(DataError, match="no-test.mat.*'test_x' missing"):
        read_letters_mat(tmp_path / "no-test.mat")
    scipy.io.savemat(
        tmp_path / "count.mat",
        {"train_x": np.zeros((3, 784)), "train_y": np.ones((2, 1)), "test_x": np.zeros((1, 784))},
    )
    with pytest.raises(DataError, match="count.mat.*train_y"):
        read_letters_mat(tmp_path / "count.mat")
    (tmp_path / "garbage.mat").write_bytes(b"\x00" * 10 + b"not a mat file" * 20)
    with pytest.raises(DataError, match="garbage.mat"):
        read_letters_mat(tmp_path / "garbage.mat")
    with pytest.raises(DatasetNotFoundError):
        read_letters_mat(tmp_path / "absent.mat")


# -- PNG folders --------------------------------------------------------------------------------


def test_image_folder_grayscale_sorted(tmp_path):
    rng = np.random.default_rng(2)
    a = rng.integers(0, 256, (28, 28), dtype=np.uint8)
    b = rng.integers(0, 256, (28, 28), dtype=np.uint8)
    Image.fromarray(b, mode="L").save(tmp_path / "b.png")
    Image.fromarray(a, mode="L").save(tmp_path / "a.png")
    Image.fromarray(np.stack([a] * 3, axis=-1), mode="RGB").save(tmp_path / "c_rgb.PNG")
    (tmp_path / "notes.txt").write_text("ignored")
    x, names = read_image_folder(tmp_path)
    assert names == ["a.png", "b.png", "c_rgb.PNG"]
    assert x.dtype == np.uint8 and x.shape == (3, 28, 28)
    np.testing.assert_array_equal(x[0], a)
    np.testing.assert_array_equal(x[1], b)
    assert np.abs(x[2].astype(int) - a).max() <= 1  # equal R, G, B -> same gray


def test_image_folder_colour_alpha_and_16_bit(tmp_path):
    rgba = np.zeros((4, 4, 4), dtype=np.uint8)
    rgba[..., 0] = 255  # pure red
    rgba[..., 3] = 255
    rgba[0, 0, 3] = 0  # one transparent pixel
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "red.png")
    x, _ = read_image_folder(tmp_path / "red.png")
    assert x.shape == (1, 4, 4)
    assert x[0, 1, 1] == round(0.299 * 255) and x[0, 0, 0] == 0
    deep = np.full((4, 4), 65535, dtype=np.uint16)
    deep[0, 0] = 0
    Image.fromarray(deep).save(tmp_path / "deep.png")
    y, _ = read_image_folder(tmp_path / "deep.png")
    assert y[0, 1, 1] == 255 and y[0, 0, 0] == 0


def test_image_folder_errors(tmp_path):
    with pytest.raises(DatasetNotFoundError):
        read_image_folder(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no .png files"):
        read_image_folder(tmp_path / "empty")
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(mixed / "a.png")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(mixed / "b.png")
    with pytest.raises(DataError, match="b.png.*8x8.*a.png.*28x28"):
        read_image_folder(mixed)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "x.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(DataError, match="x.png"):
        read_image_folder(broken)


def test_csv_with_a_header_and_no_rows_has_no_images(tmp_path):
    path = tmp_path / "empty.csv"
    path.write_text("label," + ",".join(f"pixel{i}" for i in range(16)) + "\n")
    images, labels = read_csv(path)
    assert images.shape == (0, 4, 4) and labels.shape == (0,)
