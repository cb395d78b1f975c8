"""Photographed-style digits from MNIST *test* digits, reproducibly, and scoring predictions.

Each image is one MNIST test digit (never a training digit) drawn onto a canvas of random size
(64-600 px a side) as a photograph of paper would show it: paper colour with texture and
noise, dark or coloured ink (sometimes chalk on a board), random scale, offset and slight
rotation, a light gradient and vignette, blur, sensor noise, saved as JPEG at a random quality
or as PNG. Labels go to ``labels.csv`` (``file,label``) next to the images.

    python scripts/photo_digits.py make OUT_DIR [--n 300] [--seed 0] [--dataset mnist]
    digitlab predict CHECKPOINT OUT_DIR -o pred.csv
    python scripts/photo_digits.py score OUT_DIR/labels.csv pred.csv
    python scripts/photo_digits.py baseline CHECKPOINT OUT_DIR   # plain resize, for contrast

``make`` takes the MNIST test set (found as ``digitlab`` finds it: ``DIGITLAB_DATA``,
``--data-root``, ...; the test part of the embedded sample when the full set is missing, or
with ``--dataset mnist-5k``).
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], scale: float) -> np.ndarray:
    """Zero-mean, unit-std noise varying over ``scale`` pixels, float32 (h, w)."""
    n = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), max(scale, 0.5))
    return (n - n.mean()) / (n.std() + 1e-6)


def render(digit: np.ndarray, rng: np.random.Generator) -> tuple[Image.Image, str]:
    """One photographed-style picture of a 28x28 digit.

    Parameters
    ----------
    digit
        uint8 (28, 28), MNIST convention (ink bright on black).
    rng
        The only source of randomness.

    Returns
    -------
    image : PIL.Image.Image
        RGB or L image, 64-600 px a side.
    fmt : str
        ``"JPEG"`` or ``"PNG"``, the format to save it in.
    """
    H, W = (int(v) for v in rng.integers(64, 601, size=2))
    # the digit's 20x20 box becomes 35-80% of the short side; slight rotation
    side = max(12, int(round(min(H, W) * rng.uniform(0.35, 0.8) * 28 / 20)))
    ink_img = Image.fromarray(digit).resize((side, side), Image.Resampling.BICUBIC)
    ink_img = ink_img.rotate(float(rng.uniform(-12, 12)), Image.Resampling.BICUBIC, expand=True)
    ink_small = np.asarray(ink_img, np.float32) / 255.0
    rows = np.flatnonzero(ink_small.max(1) > 0.1)
    cols = np.flatnonzero(ink_small.max(0) > 0.1)
    ink_small = ink_small[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    h, w = ink_small.shape
    h, w = min(h, H - 2), min(w, W - 2)
    ink_small = ink_small[:h, :w]
    oy = int(rng.integers(1, H - h)) if H - h > 1 else 0
    ox = int(rng.integers(1, W - w)) if W - w > 1 else 0
    ink = np.zeros((H, W), np.float32)
    ink[oy : oy + h, ox : ox + w] = np.clip(ink_small, 0, 1)

    board = rng.random() < 0.15  # chalk on a dark board
    if board:
        paper = np.array([0.12, 0.2, 0.15]) + rng.uniform(-0.08, 0.08, 3)
        colour = np.array([0.92, 0.92, 0.88]) + rng.uniform(-0.05, 0.05, 3)
    else:
        paper = rng.uniform(0.78, 1.0) - rng.uniform(0.0, 0.12, 3)  # white, cream, grey, tinted
        inks = {
            "black": [0.05, 0.05, 0.07],
            "pencil": [0.35, 0.35, 0.38],
            "blue": [0.1, 0.15, 0.55],
            "red": [0.65, 0.1, 0.1],
            "green": [0.1, 0.4, 0.15],
            "purple": [0.35, 0.1, 0.45],
        }
        colour = np.array(list(inks.values())[int(rng.integers(len(inks)))])
    opacity = rng.uniform(0.75, 1.0)
    texture = _smooth_noise(rng, (H, W), rng.uniform(1, 6)) * rng.uniform(0.0, 0.04)
    a = (ink * opacity)[..., None]
    img = (paper + texture[..., None]) * (1 - a) + colour * a

    yy, xx = np.mgrid[:H, :W].astype(np.float32)
    yy, xx = yy / H - 0.5, xx / W - 0.5
    angle = rng.uniform(0, 2 * np.pi)
    gradient = 1.0 - rng.uniform(0.0, 0.5) * (0.5 + np.cos(angle) * xx + np.sin(angle) * yy)
    vignette = 1.0 - rng.uniform(0.0, 0.8) * (xx**2 + yy**2)
    img = img * (gradient * vignette)[..., None]
    sigma = rng.uniform(0.0, 1.2) * min(H, W) / 200
    if sigma > 0.3:
        img = ndimage.gaussian_filter(img, (sigma, sigma, 0))
    img = img + rng.normal(0.0, rng.uniform(0.005, 0.03), img.shape)
    pixels = np.rint(np.clip(img, 0, 1) * 255).astype(np.uint8)
    image = Image.fromarray(pixels, "RGB")
    if rng.random() < 0.2:
        image = image.convert("L")
    return image, ("JPEG" if rng.random() < 0.5 else "PNG")


def make_set(
    digits: np.ndarray, labels: np.ndarray, out: Path, n: int, seed: int
) -> list[tuple[str, int]]:
    """Write ``n`` rendered digits (drawn without replacement) and ``labels.csv`` into ``out``.

    Parameters
    ----------
    digits, labels
        MNIST test digits uint8 (N, 28, 28) and their labels int (N,).
    out
        Folder (created).
    n, seed
        How many images, and the seed of the only random generator.

    Returns
    -------
    list of (file name, label)
    """
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(digits), size=n, replace=False)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, j in enumerate(pick):
        image, fmt = render(digits[j], rng)
        name = f"photo_{i:04d}.{'jpg' if fmt == 'JPEG' else 'png'}"
        kw = {"quality": int(rng.integers(40, 96))} if fmt == "JPEG" else {}
        image.save(out / name, format=fmt, **kw)
        rows.append((name, int(labels[j])))
    with (out / "labels.csv").open("w", newline="") as f:
        csv.writer(f).writerows([("file", "label"), *rows])
    return rows


def score(labels_csv: Path, pred_csv: Path) -> tuple[int, int]:
    """(correct, total) of a ``digitlab predict`` CSV against ``labels.csv``, matched by file."""
    with labels_csv.open() as f:
        truth = {r["file"]: r["label"] for r in csv.DictReader(f)}
    with pred_csv.open() as f:
        pred = {Path(r["file"]).name: r["class"] for r in csv.DictReader(f)}
    missing = sorted(set(truth) - set(pred))
    if missing:
        raise SystemExit(f"{pred_csv}: no prediction for {len(missing)} files, e.g. {missing[0]}")
    return sum(pred[k] == v for k, v in truth.items()), len(truth)


def _test_digits(dataset: str, data_root: str | None) -> tuple[np.ndarray, np.ndarray, str]:
    from digitlab.data import load

    ds = load(dataset, root=data_root)
    return ds.x_test, ds.y_test, ds.name


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("make", help="write the images and labels.csv")
    m.add_argument("out")
    m.add_argument("--n", type=int, default=300)
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--dataset", default="mnist", help="mnist (default) or mnist-5k")
    m.add_argument("--data-root", default=None)
    s = sub.add_parser("score", help="accuracy of a predict CSV")
    s.add_argument("labels")
    s.add_argument("predictions")
    b = sub.add_parser("baseline", help="accuracy after a plain resize to the model's size")
    b.add_argument("checkpoint")
    b.add_argument("folder")
    a = p.parse_args(argv)
    if a.cmd == "make":
        x, y, name = _test_digits(a.dataset, a.data_root)
        rows = make_set(x, y, Path(a.out), a.n, a.seed)
        print(f"wrote {len(rows)} images from the {name} test set to {a.out}")
    elif a.cmd == "score":
        ok, n = score(Path(a.labels), Path(a.predictions))
        print(f"accuracy {ok / n:.4f} ({ok}/{n})")
    else:
        from digitlab.runfiles import load_run_checkpoint

        model, prep, meta = load_run_checkpoint(a.checkpoint)
        h, w = meta["extra"]["image_shape"]
        with (Path(a.folder) / "labels.csv").open() as f:
            truth = list(csv.DictReader(f))
        x = np.stack([
            np.asarray(Image.open(Path(a.folder) / r["file"]).convert("L").resize((w, h)))
            for r in truth
        ])  # fmt: skip
        pred = model.predict(prep.transform(x))
        ok = int((pred == np.array([int(r["label"]) for r in truth])).sum())
        print(f"plain resize: accuracy {ok / len(truth):.4f} ({ok}/{len(truth)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
