"""MNIST-style preprocessing of images as people have them, and the bounded image reader."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from digitlab.data import load
from digitlab.data.images import (
    MAX_PIXELS,
    list_image_files,
    load_images,
    read_image,
    to_model_input,
)
from digitlab.errors import DataError, DatasetNotFoundError, ShapeError


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    """40 MNIST test digits (uint8 (40, 28, 28)) of the embedded sample and their labels."""
    ds = load("mnist-5k")
    return ds.x_test[:40], ds.y_test[:40]


@pytest.fixture(scope="module")
def classifier():
    """A softmax model trained on the sample's training digits: images (n, 28, 28) -> labels."""
    import tempfile

    from digitlab.runner import run
    from digitlab.settings import Settings

    settings = Settings.from_dict(
        {"model": "softmax", "dataset": "mnist-5k", "batch": 128, "lr": 0.5, "epochs": 3}
    )
    with tempfile.TemporaryDirectory() as tmp:
        result = run(settings, out=tmp)
    model, prep = result.trainer.model, result.data.preprocessor
    return lambda x: model.predict(prep.transform(np.rint(np.asarray(x) * 255).astype(np.uint8)))


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    """Best Pearson correlation of a and b over integer shifts of a by -1..1 pixel."""
    best = -1.0
    bb = b.ravel() - b.mean()
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            aa = np.roll(a, (dy, dx), axis=(0, 1)).ravel()
            aa = aa - aa.mean()
            best = max(best, float(aa @ bb / np.sqrt((aa @ aa) * (bb @ bb))))
    return best


def _paper(
    digit: np.ndarray,
    rng: np.random.Generator,
    size: int = 150,
    canvas: tuple[int, int] = (320, 420),
) -> tuple[np.ndarray, np.ndarray]:
    """A digit scaled to ``size`` px at a random place of a canvas: ink amount in [0, 1]."""
    big = (
        np.asarray(
            Image.fromarray(digit).resize((size, size), Image.Resampling.BILINEAR), np.float32
        )
        / 255.0
    )
    H, W = canvas
    ink = np.zeros((H, W), np.float32)
    oy, ox = rng.integers(0, H - size), rng.integers(0, W - size)
    ink[oy : oy + size, ox : ox + size] = big
    yy, xx = np.mgrid[:H, :W] / np.array([H, W], np.float32).reshape(2, 1, 1)
    return ink, np.stack([yy, xx])


def _u8(x: np.ndarray) -> np.ndarray:
    return np.rint(np.clip(x, 0, 1) * 255).astype(np.uint8)


def _renderings(digit: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    ink, (yy, xx) = _paper(digit, rng)
    light = 0.35 + 0.65 * xx  # light from the right
    vignette = 1.0 - 0.5 * ((yy - 0.5) ** 2 + (xx - 0.5) ** 2)
    paper_rgb = np.array([0.95, 0.9, 0.75], np.float32)  # yellowish paper
    ink_rgb = np.array([0.1, 0.15, 0.6], np.float32)  # blue ballpoint
    rgb = paper_rgb * (1 - ink[..., None]) + ink_rgb * ink[..., None]
    rgba = np.zeros((*ink.shape, 4), np.float32)
    rgba[..., 3] = ink  # black strokes on a transparent canvas
    return {
        "dark on light": _u8(1 - 0.85 * ink),
        "light on dark": _u8(0.1 + 0.8 * ink),
        "colour": _u8(rgb * vignette[..., None]),
        "transparent": _u8(rgba),
        "gradient + noise": _u8((1 - 0.7 * ink) * light + rng.normal(0, 0.03, ink.shape)),
    }


def test_mnist_digits_come_back_as_they_are(digits):
    x, _ = digits
    out = np.stack([to_model_input(img) for img in x])
    assert out.shape == (40, 28, 28) and out.dtype == np.float32
    assert out.min() >= 0 and out.max() <= 1
    corr = [_corr(o, img / 255) for o, img in zip(out, x, strict=True)]
    assert np.median(corr) > 0.98 and min(corr) > 0.9
    # centred by mass at (14, 14) like MNIST, within the half pixel integer shifts allow
    yy, xx = np.mgrid[:28, :28]
    m = out.sum(axis=(1, 2))
    cy, cx = (out * yy).sum(axis=(1, 2)) / m, (out * xx).sum(axis=(1, 2)) / m
    assert np.abs(cy - 14).max() <= 0.55 and np.abs(cx - 14).max() <= 0.55


def test_photographed_digits_become_the_original_and_classify_the_same(digits, classifier):
    x, _ = digits
    rng = np.random.default_rng(0)
    want = classifier(x[:20] / 255.0)
    got: dict[str, list[np.ndarray]] = {}
    for i in range(20):
        for kind, img in _renderings(x[i], rng).items():
            got.setdefault(kind, []).append(to_model_input(img))
    agree = []
    for kind, inputs in got.items():
        corr = [_corr(g, d / 255) for g, d in zip(inputs, x, strict=False)]
        assert np.median(corr) > 0.93 and min(corr) > 0.85, kind
        agree.append(classifier(np.stack(inputs)) == want)
        assert agree[-1].mean() >= 0.8, kind  # the small model is unsure of a few digits
    assert np.mean(agree) >= 0.88


def test_a_plain_resize_would_not_do(digits, classifier):
    # the contrast the recipe is for: the same dark-on-paper images, merely resized, fail
    x, y = digits
    rng = np.random.default_rng(1)
    plain, recipe = [], []
    for img in x[:20]:
        page = _renderings(img, rng)["dark on light"]
        small = np.asarray(Image.fromarray(page).resize((28, 28), Image.Resampling.BILINEAR))
        plain.append(small / 255.0)
        recipe.append(to_model_input(page))
    assert (classifier(np.stack(plain)) == y[:20]).mean() < 0.3
    assert (classifier(np.stack(recipe)) == y[:20]).mean() >= 0.9


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "BMP", "TIFF", "GIF"])
def test_files_round_trip_through_read_image(tmp_path, digits, classifier, fmt):
    x, _ = digits
    rng = np.random.default_rng(2)
    want = classifier(x[:5] / 255.0)
    for i in range(5):
        img = _renderings(x[i], rng)["colour"]
        path = tmp_path / f"d{i}.{fmt.lower()}"
        Image.fromarray(img).save(path, format=fmt, **({"quality": 70} if fmt == "JPEG" else {}))
        back = read_image(path)
        assert back.dtype == np.uint8 and back.shape[:2] == img.shape[:2]
        got = to_model_input(back)
        assert _corr(got, x[i] / 255) > 0.85
        assert classifier(got[None])[0] == want[i]


def test_other_target_shapes_keep_the_20_of_28_box(digits):
    x, _ = digits
    for shape in [(8, 8), (16, 12), (56, 56)]:
        out = to_model_input(x[3], shape)
        h, w = shape
        rows, cols = np.flatnonzero(out.any(1)), np.flatnonzero(out.any(0))
        assert out.shape == shape
        assert max(rows[-1] - rows[0] + 1, 0) <= round(h * 20 / 28)
        assert cols[-1] - cols[0] + 1 <= round(w * 20 / 28)
        # the long side fills the box
        assert (rows[-1] - rows[0] + 1 == round(h * 20 / 28)
                or cols[-1] - cols[0] + 1 == round(w * 20 / 28))  # fmt: skip


def test_wide_ink_keeps_its_aspect_ratio():
    img = np.full((100, 300), 255, np.uint8)
    img[45:55, 20:280] = 0  # a dash: 10 x 260
    out = to_model_input(img)
    rows, cols = np.flatnonzero(out.any(1)), np.flatnonzero(out.any(0))
    assert len(cols) == 20 and len(rows) <= 2
    assert abs(out.sum(0).argmax() - 14) <= 10 and abs(rows.mean() - 14) <= 1


def _stroke_width(x: np.ndarray) -> float:
    """Twice the area over the outline length of the ink (x > 0.5): the stroke width."""
    m = x > 0.5
    outline = np.count_nonzero(m[:, 1:] != m[:, :-1]) + np.count_nonzero(m[1:] != m[:-1])
    return 2 * np.count_nonzero(m) / max(outline, 1)


def test_thin_strokes_are_thickened_to_mnist_proportions(digits):
    yy, xx = np.mgrid[:300, :300]
    r = np.hypot(yy - 150, (xx - 150) * 1.4)
    page = np.where(np.abs(r - 110) < 1.5, 20, 235).astype(np.uint8)  # a ballpoint "0"
    out = to_model_input(page)
    assert 1.4 <= _stroke_width(out) <= 3.0  # MNIST: 2.0 (median), 1.5-2.8 (10-90%)
    assert out[14, 14] == 0 and out[14, 2:8].max() > 0.9  # still a ring
    # MNIST's own strokes are left as they are
    x, _ = digits
    for d in x[:10]:
        assert abs(_stroke_width(to_model_input(d)) - _stroke_width(d / 255)) < 0.35


def test_no_ink_is_an_error_or_a_blank_on_request():
    rng = np.random.default_rng(3)
    for img in [np.full((50, 60), 200, np.uint8), _u8(0.8 + rng.normal(0, 0.02, (80, 80)))]:
        with pytest.raises(DataError, match="no ink"):
            to_model_input(img)
        blank = to_model_input(img, empty="blank")
        assert blank.shape == (28, 28) and not blank.any()


def test_specks_away_from_the_digit_are_dropped(digits):
    x, _ = digits
    rng = np.random.default_rng(4)
    ink, _ = _paper(x[0], rng, canvas=(300, 300))
    ink[5:7, 5:7] = 1.0  # dust in a corner
    ink[290:292, 150:152] = 1.0
    got = to_model_input(_u8(1 - ink))
    assert _corr(got, x[0] / 255) > 0.9


def test_bad_arrays_and_shapes_are_refused():
    with pytest.raises(ShapeError):
        to_model_input(np.zeros((4, 4, 2), np.uint8))
    with pytest.raises(ShapeError):
        to_model_input(np.zeros((0, 4), np.uint8))
    with pytest.raises(ShapeError):
        to_model_input(np.zeros((4, 4), np.uint8), (28,))
    with pytest.raises(DataError):
        to_model_input(np.full((4, 4), 2.0))
    with pytest.raises(DataError):
        to_model_input(np.zeros((4, 4), np.int64))


# ---------------------------------------------------------------------------- read_image
def _png_with_size(width: int, height: int) -> bytes:
    """A PNG whose header announces width x height (its data is one tiny valid row)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" + b"\x00" * 8)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def test_huge_headers_are_refused_before_decoding(tmp_path):
    p = tmp_path / "bomb.png"
    p.write_bytes(_png_with_size(100_000, 100_000))
    with pytest.raises(DataError, match="than the 50,000,000 accepted"):
        read_image(p)
    bmp = tmp_path / "bomb.bmp"
    buf = io.BytesIO()
    Image.new("L", (8, 8)).save(buf, format="BMP")
    data = bytearray(buf.getvalue())
    data[18:26] = struct.pack("<ii", 60_000, 60_000)
    bmp.write_bytes(bytes(data))
    with pytest.raises(DataError, match="pixels"):
        read_image(bmp)
    small = tmp_path / "small.png"
    Image.new("L", (100, 100)).save(small)
    assert read_image(small).shape == (100, 100)
    with pytest.raises(DataError, match="10,000 pixels"):
        read_image(small, max_pixels=5000)
    assert MAX_PIXELS >= 24_000_000  # a phone photo is accepted


def test_corrupt_truncated_and_foreign_files_are_one_line_data_errors(tmp_path):
    good = io.BytesIO()
    Image.fromarray(np.arange(64 * 64, dtype=np.uint8).reshape(64, 64)).save(good, format="PNG")
    jpg = io.BytesIO()
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(jpg, format="JPEG")
    cases = {
        "truncated.png": good.getvalue()[: len(good.getvalue()) // 2],
        "truncated.jpg": jpg.getvalue()[:200],
        "garbage.png": b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4,
        "text.png": b"hello, not an image\n",
        "empty.png": b"",
    }
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(DataError) as err:
            read_image(tmp_path / name)
        assert name in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(DatasetNotFoundError):
        read_image(tmp_path / "missing.png")
    with pytest.raises(DataError, match="^upload.png: cannot read"):
        read_image(cases["truncated.png"], name="upload.png")


def test_bytes_and_file_objects_decode_like_files(tmp_path):
    a = np.arange(40 * 30, dtype=np.uint8).reshape(40, 30)
    Image.fromarray(a).save(tmp_path / "a.png")
    data = (tmp_path / "a.png").read_bytes()
    assert np.array_equal(read_image(data), a)
    assert np.array_equal(read_image(io.BytesIO(data)), a)
    with pytest.raises(DataError, match="^image: image is 30x40 = 1,200 pixels"):
        read_image(data, max_pixels=1000)


def test_modes_become_uint8_grey_colour_or_alpha(tmp_path):
    a = np.arange(12 * 10, dtype=np.uint8).reshape(12, 10)
    cases = {
        "l.png": (Image.fromarray(a), (12, 10)),
        "rgb.png": (Image.fromarray(np.stack([a] * 3, -1)), (12, 10, 3)),
        "rgba.png": (Image.fromarray(np.stack([a] * 4, -1)), (12, 10, 4)),
        "la.png": (Image.fromarray(np.stack([a] * 4, -1)).convert("LA"), (12, 10, 4)),
        "bw.png": (Image.fromarray(a > 60), (12, 10)),
        "p.gif": (Image.fromarray(np.stack([a] * 3, -1)).convert("P"), (12, 10, 3)),
        "i16.png": (Image.fromarray(a.astype(np.uint16) * 257), (12, 10)),
        "f.tiff": (Image.fromarray(a.astype(np.float32) / 255), (12, 10)),
    }
    for name, (im, shape) in cases.items():
        im.save(tmp_path / name)
        got = read_image(tmp_path / name)
        assert got.dtype == np.uint8 and got.shape == shape, name
    assert np.array_equal(read_image(tmp_path / "i16.png"), a)
    assert np.abs(read_image(tmp_path / "f.tiff").astype(int) - a).max() <= 1


# ---------------------------------------------------------------------------- load_images
def test_load_images_reads_files_and_sorted_folders(tmp_path, digits):
    x, _ = digits
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, name in enumerate(["b.png", "a.jpg", "c.bmp"]):
        Image.fromarray(255 - x[i]).save(folder / name)
    (folder / "notes.txt").write_text("not an image")
    (folder / ".hidden.png").write_bytes(b"junk")
    Image.fromarray(x[3]).save(tmp_path / "single.png")
    names, imgs = load_images([tmp_path / "single.png", folder])
    assert names == [str(tmp_path / "single.png")] + [str(folder / n) for n in
                                                      ["a.jpg", "b.png", "c.bmp"]]  # fmt: skip
    assert imgs.shape == (4, 28, 28) and imgs.dtype == np.float32
    for got, want in zip(imgs, [x[3], x[1], x[0], x[2]], strict=True):
        assert _corr(got, want / 255) > 0.9
    names, raw = load_images([tmp_path / "single.png"], raw=True)
    assert np.array_equal(raw[0], x[3] / np.float32(255))
    with pytest.raises(DataError, match="drop --raw"):
        load_images([folder], (8, 8), raw=True)


def test_load_images_names_the_bad_file(tmp_path):
    Image.new("L", (30, 30), 128).save(tmp_path / "flat.png")
    with pytest.raises(DataError, match="flat.png: no ink"):
        load_images([tmp_path])
    names, imgs = load_images([tmp_path], empty="blank")
    assert not imgs.any()
    (tmp_path / "sub").mkdir()
    with pytest.raises(DataError, match="no image files"):
        list_image_files([tmp_path / "sub"])
    with pytest.raises(DatasetNotFoundError):
        list_image_files([tmp_path / "nope"])


@settings(max_examples=150, deadline=None)
@given(
    st.integers(1, 40),
    st.integers(1, 40),
    st.sampled_from([(), (3,), (4,)]),
    st.tuples(st.integers(1, 30), st.integers(1, 30)),
    st.integers(0, 2**32 - 1),
)
def test_any_small_image_gives_a_valid_input_or_no_ink(h, w, channels, shape, seed):
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 256, (h, w, *channels), dtype=np.uint8)
    if seed % 2:  # mostly paper, some ink
        img = np.where(rng.random((h, w, *channels)) < 0.8, 230, img).astype(np.uint8)
    try:
        out = to_model_input(img, shape)
    except DataError as e:
        assert "no ink" in str(e)
        return
    assert out.shape == shape and out.dtype == np.float32
    assert np.isfinite(out).all() and out.min() >= 0 and out.max() <= 1 and out.max() > 0
