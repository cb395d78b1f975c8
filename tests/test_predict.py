"""digitlab predict: images as people have them, arrays in the training format, CSV and sheets."""

from __future__ import annotations

import csv
import importlib.util
import io
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from digitlab.cli import main
from digitlab.data import load, write_idx
from digitlab.data.images import to_model_input
from digitlab.predict import (
    contact_sheet,
    kaggle_csv,
    predict,
    predict_arrays,
    predictions_csv,
    read_inputs,
)
from digitlab.runfiles import load_run_checkpoint

ROOT = Path(__file__).resolve().parents[1]


def _photo_digits():
    spec = importlib.util.spec_from_file_location("photo_digits", ROOT / "scripts/photo_digits.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["photo_digits"] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A small MLP trained on the embedded sample (about 93% on its test digits)."""
    out = tmp_path_factory.mktemp("runs")
    args = ["--dataset", "mnist-5k", "--hidden", "64", "--epochs", "8", "--batch", "64",
            "--lr", "0.1", "--momentum", "0.9"]  # fmt: skip
    assert main(["train", "--model", "mlp", *args, "--out", str(out)]) == 0
    (ck,) = out.glob("*/*/checkpoint.npz")
    return ck


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    ds = load("mnist-5k")
    return ds.x_test[:12], ds.y_test[:12]


def _on_paper(digit: np.ndarray, size: int = 120, canvas: tuple[int, int] = (200, 260)):
    """Dark ink on light paper, off-centre: uint8 (h, w)."""
    page = np.full(canvas, 235, np.uint8)
    big = np.asarray(Image.fromarray(255 - digit).resize((size, size), Image.Resampling.BILINEAR))
    page[30 : 30 + size, 100 : 100 + size] = np.minimum(235, big)
    return page


def _rows(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def test_image_files_and_folders_give_names_classes_and_probabilities(
    tmp_path, checkpoint, digits, capsys, monkeypatch
):
    x, y = digits
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(6):
        Image.fromarray(_on_paper(x[i])).save(folder / f"{i:02d}.{'png' if i % 2 else 'jpg'}")
    Image.fromarray(x[6]).save(tmp_path / "white_on_black.bmp")
    model, prep, _ = load_run_checkpoint(checkpoint)
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    assert main(["predict", str(checkpoint), "photos", "white_on_black.bmp", "--proba",
                 "-o", "-"]) == 0  # fmt: skip
    captured = capsys.readouterr()
    assert not (tmp_path / "-").exists() and captured.err == ""
    rows = _rows(captured.out)
    names = [f"photos/{i:02d}.{'png' if i % 2 else 'jpg'}" for i in range(6)]
    assert [r["file"] for r in rows] == [*names, "white_on_black.bmp"]
    assert list(rows[0]) == ["file", "class", *[f"p_{c}" for c in range(10)]]
    proba = np.array([[float(r[f"p_{c}"]) for c in range(10)] for r in rows])
    np.testing.assert_allclose(proba.sum(1), 1.0, atol=1e-4)
    assert [int(r["class"]) for r in rows] == proba.argmax(1).tolist()
    # exactly what the library gives on the MNIST-fitted images
    fitted = np.stack([to_model_input(np.asarray(Image.open(tmp_path / n))) for n in
                       [*names, "white_on_black.bmp"]])  # fmt: skip
    want = model.predict(prep.transform(np.rint(fitted * 255).astype(np.uint8)))
    assert [int(r["class"]) for r in rows] == want.tolist()
    assert (want == y[:7]).mean() >= 6 / 7


def test_predict_writes_a_file_and_a_contact_sheet_of_what_the_model_saw(
    tmp_path, checkpoint, digits, capsys
):
    x, _ = digits
    for i in range(3):
        Image.fromarray(_on_paper(x[i])).save(tmp_path / f"d{i}.png")
    out, sheet = tmp_path / "out" / "pred.csv", tmp_path / "sheet.png"
    assert main(["predict", str(checkpoint), *(str(tmp_path / f"d{i}.png") for i in range(3)),
                 "-o", str(out), "--contact-sheet", str(sheet)]) == 0  # fmt: skip
    assert "wrote 3 predictions" in capsys.readouterr().out
    rows = list(csv.DictReader(out.open()))
    assert list(rows[0]) == ["file", "class"]
    pred = predict(checkpoint, [tmp_path / f"d{i}.png" for i in range(3)])
    assert [r["class"] for r in rows] == pred.predicted
    img = np.asarray(Image.open(sheet))
    assert img.shape == (104, 3 * 90)  # 3 cells of (84 + 6) x (84 + 14 + 6)
    for k in range(3):  # each cell holds the input, 3x enlarged
        cell = img[3 : 3 + 84, k * 90 + 3 : k * 90 + 3 + 84]
        assert np.array_equal(cell, np.kron(pred.inputs[k], np.ones((3, 3), np.uint8)))


def test_arrays_in_the_training_format_pass_as_they_are(tmp_path, checkpoint, digits):
    x, _ = digits
    model, prep, _ = load_run_checkpoint(checkpoint)
    write_idx(tmp_path / "x.idx", x[:4])
    Image.fromarray(x[4]).save(tmp_path / "raw.png")
    names, images = read_inputs([tmp_path / "x.idx", tmp_path / "raw.png"], (28, 28), raw=True)
    assert names == [f"{tmp_path / 'x.idx'}#{i}" for i in range(1, 5)] + [str(tmp_path / "raw.png")]
    assert np.array_equal(images, x[:5])
    labels, proba = predict_arrays(model, prep, images)
    assert np.array_equal(labels, model.predict(prep.transform(x[:5])))
    assert proba.shape == (5, 10) and proba.dtype == np.float32


def test_kaggle_writer_and_options(tmp_path, checkpoint, digits, capsys):
    assert kaggle_csv(["3", 5]) == "Id,Category\n1,3\n2,5\n"
    x, _ = digits
    write_idx(tmp_path / "x.idx", x[:3])
    model, prep, _ = load_run_checkpoint(checkpoint)
    out = tmp_path / "k.csv"
    assert main(["predict", str(checkpoint), str(tmp_path / "x.idx"), "--kaggle",
                 "-o", str(out)]) == 0  # fmt: skip
    want = model.predict(prep.transform(x[:3]))
    assert out.read_text() == kaggle_csv(want.tolist())
    capsys.readouterr()
    assert main(["predict", str(checkpoint), str(tmp_path / "x.idx"), "--kaggle", "--proba"]) == 2
    assert "--proba" in capsys.readouterr().err


def test_predictions_csv_quotes_odd_file_names():
    from digitlab.predict import Predictions

    pred = Predictions(["a,b.png", 'q"uote.png'], np.zeros((2, 2, 2), np.uint8),
                       np.array([1, 0]), np.array([[0.25, 0.75], [1.0, 0.0]], np.float32),
                       ["cat", "dog"])  # fmt: skip
    rows = _rows(predictions_csv(pred, proba=True))
    assert [r["file"] for r in rows] == ["a,b.png", 'q"uote.png']
    assert [r["class"] for r in rows] == ["dog", "cat"] and rows[0]["p_dog"] == "0.750000"


def test_errors_are_one_line_and_leave_no_file(tmp_path, checkpoint, digits, capsys):
    x, _ = digits
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(_on_paper(x[0])).save(folder / "a.png")
    (folder / "b.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    Image.new("L", (50, 50), 200).save(tmp_path / "blank.png")
    write_idx(tmp_path / "small.idx", np.zeros((2, 8, 8), np.uint8))
    out = tmp_path / "pred.csv"
    out.write_text("earlier results\n")
    sheet = tmp_path / "sheet.png"
    cases = {
        "b.png": [str(folder)],
        "blank.png: no ink": [str(tmp_path / "blank.png")],
        "8x8": [str(tmp_path / "small.idx")],
        "no such file": [str(tmp_path / "missing.png")],
        "drop --raw": [str(folder / "a.png"), "--raw"],
    }  # fmt: skip
    for needle, args in cases.items():
        capsys.readouterr()
        code = main(["predict", str(checkpoint), *args, "-o", str(out), "--contact-sheet",
                     str(sheet), "--strict"])  # fmt: skip
        err = capsys.readouterr().err
        assert code == 2, needle
        assert needle in err and err.count("\n") == 1, err
        assert out.read_text() == "earlier results\n" and not sheet.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "blank.png", "in", "pred.csv", "small.idx"
    ]  # fmt: skip


def test_photographed_style_digits_are_read_by_a_small_mlp(tmp_path, checkpoint):
    """The issue's check in small: 50 generated photos of sample test digits, a small MLP."""
    photos = _photo_digits()
    ds = load("mnist-5k")
    photos.make_set(ds.x_test, ds.y_test, tmp_path / "photos", n=50, seed=0)
    out = tmp_path / "pred.csv"
    assert main(["predict", str(checkpoint), str(tmp_path / "photos"), "-o", str(out)]) == 0
    correct, total = photos.score(tmp_path / "photos" / "labels.csv", out)
    assert total == 50 and correct >= 42  # about 46 with this model; a plain resize gets ~5
    # the set really is hard without the MNIST recipe
    model, prep, _ = load_run_checkpoint(checkpoint)
    files = sorted((tmp_path / "photos").glob("photo_*"))
    plain = np.stack([np.asarray(Image.open(f).convert("L").resize((28, 28))) for f in files])
    truth = np.array([int(r["label"]) for r in csv.DictReader(
        (tmp_path / "photos" / "labels.csv").open())])  # fmt: skip
    assert (model.predict(prep.transform(plain)) == truth).mean() < 0.3


def test_generated_photos_are_reproducible_and_varied(tmp_path):
    photos = _photo_digits()
    ds = load("mnist-5k")
    a = photos.make_set(ds.x_test, ds.y_test, tmp_path / "a", n=12, seed=3)
    b = photos.make_set(ds.x_test, ds.y_test, tmp_path / "b", n=12, seed=3)
    assert a == b
    for (name, _), _ in zip(a, b, strict=True):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    sizes = {Image.open(tmp_path / "a" / n).size for n, _ in a}
    assert len(sizes) == 12 and all(64 <= s <= 600 for wh in sizes for s in wh)
    assert {Path(n).suffix for n, _ in a} == {".jpg", ".png"}


def test_contact_sheet_caps_the_number_of_cells(tmp_path):
    imgs = np.zeros((30, 8, 8), np.uint8)
    contact_sheet(imgs, [str(i) for i in range(30)], tmp_path / "s.png", columns=5, max_images=7)
    w, h = Image.open(tmp_path / "s.png").size
    cw, ch = 40 + 6, 24 + 14 + 6
    assert (w, h) == (5 * cw, 2 * ch)
