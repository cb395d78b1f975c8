"""Predictions of a run's checkpoint on image files, folders, and arrays in the training format.

Image files (PNG, JPEG, BMP, TIFF, GIF, WebP; folders give their image files sorted by name)
are turned into the model's input the way MNIST was made
(:func:`digitlab.data.images.to_model_input`, sized to the checkpoint's ``image_shape``)
unless ``raw``, when they must already be grey images of exactly that shape, ink bright.
IDX files and Kaggle-style CSV files hold arrays already in the training format and are used
as they are. Whatever the source, what the model saw is uint8 (n, h, w), 0..255, ink bright:
:func:`contact_sheet` draws it.

Nothing here prints or writes except :func:`contact_sheet` and :func:`write_text` (atomic).
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from digitlab.data.images import IMAGE_SUFFIXES, MNIST_FIT, list_image_files, load_images
from digitlab.errors import DataError, DatasetNotFoundError

CONTACT_SHEET_MAX = 400
"""At most this many inputs are drawn on a contact sheet (the first ones)."""


@dataclass(frozen=True)
class Predictions:
    """What a checkpoint predicted for n inputs.

    Attributes
    ----------
    names
        n names: the file path, or ``path#i`` (1-based) for row i of an IDX/CSV file.
    inputs
        uint8 (n, h, w): what the model saw, in the training format (ink bright on black).
    labels
        int64 (n,): predicted label, ``0..k-1``.
    proba
        float32 (n, k): class probabilities, rows summing to one.
    classes
        k class names; label ``i`` means ``classes[i]``.
    label_offset
        Added to a label to get the number the dataset's own files use (1 for EMNIST letters).
    errors
        n entries: None, or why input i could not be read (its label and probabilities are
        then meaningless, its input is zeros); empty when every input was read.
    """

    names: list[str]
    inputs: np.ndarray
    labels: np.ndarray
    proba: np.ndarray
    classes: list[str]
    label_offset: int = 0
    errors: list[str | None] = field(default_factory=list)

    def failed(self, i: int) -> str | None:
        """Why input ``i`` could not be read, or None."""
        return self.errors[i] if self.errors else None

    @property
    def predicted(self) -> list[str]:
        """The n predicted class names ("" for an input that could not be read)."""
        return [
            "" if self.failed(k) else self.classes[int(i)] for k, i in enumerate(self.labels)
        ]


def _is_array_file(path: Path) -> bool:
    name = path.name.lower()
    return path.is_file() and path.suffix.lower() not in IMAGE_SUFFIXES and not name.startswith(".")


def read_inputs(
    paths: Iterable[str | os.PathLike[str]],
    image_shape: Sequence[int],
    *,
    raw: bool = False,
    fit: float = MNIST_FIT,
    errors: list[str | None] | None = None,
) -> tuple[list[str], np.ndarray]:
    """Read files and folders into model inputs in the training format.

    Parameters
    ----------
    paths
        Image files, folders of image files, IDX files and Kaggle-style CSV files (``.csv``,
        ``.csv.gz``), in the order given.
    image_shape
        The model's (h, w).
    raw
        Images are used as they are (converted to grey, alpha over black) instead of through
        :func:`~digitlab.data.images.to_model_input`; they must be exactly ``image_shape``.
    fit
        Fraction of the frame a digit fills in the training data (see
        :func:`~digitlab.data.images.to_model_input`).
    errors
        When given, an image file that cannot be read (corrupt, blank, too large, the wrong
        size with ``raw``) does not stop the batch: its row is zeros and its message is
        appended here; every other row appends None.

    Returns
    -------
    names : list of str
        n names (file paths; ``path#i``, 1-based, for the rows of an IDX or CSV file).
    images : numpy.ndarray
        uint8 (n, h, w), ink bright.

    Raises
    ------
    DatasetNotFoundError
        A path does not exist.
    DataError
        An unreadable file, an image without ink, or arrays of another shape than the model's.
    """
    from digitlab.data import read_csv, read_idx

    h, w = (int(s) for s in image_shape)
    names: list[str] = []
    parts: list[np.ndarray] = []
    pending: list[Path] = []  # consecutive image files, read together

    def flush() -> None:
        if pending and errors is None:
            got, x = load_images(pending, (h, w), raw=raw, fit=fit)
            names.extend(got)
            parts.append(np.rint(x * 255.0).astype(np.uint8))
        for f in pending if errors is not None else []:
            try:
                _, x = load_images([f], (h, w), raw=raw, fit=fit)
                errors.append(None)
            except DataError as exc:
                x = np.zeros((1, h, w), dtype=np.float32)
                errors.append(str(exc) if str(f) in str(exc) else f"{f}: {exc}")
            names.append(str(f))
            parts.append(np.rint(x * 255.0).astype(np.uint8))
        pending.clear()

    for p in map(Path, paths):
        if not p.exists():
            raise DatasetNotFoundError(f"{p}: no such file or folder")
        if not _is_array_file(p):
            pending.extend(list_image_files([p]))
            continue
        flush()
        lower = p.name.lower()
        arr = read_csv(p)[0] if lower.endswith((".csv", ".csv.gz")) else read_idx(p)
        if arr.ndim != 3 or arr.dtype != np.uint8:
            raise DataError(f"{p}: expected uint8 images (n, h, w), got {arr.dtype} {arr.shape}")
        if arr.shape[1:] != (h, w):
            raise DataError(
                f"{p}: images are {arr.shape[1]}x{arr.shape[2]}, the model was trained on "
                f"{h}x{w} (give image files to have them fitted the MNIST way)"
            )
        names.extend(f"{p}#{i}" for i in range(1, len(arr) + 1))
        parts.append(arr)
        if errors is not None:
            errors.extend([None] * len(arr))
    flush()
    if not parts:
        raise DataError("no inputs given")
    return names, np.concatenate(parts)


def predict_arrays(
    model: Any, preprocessor: Any, images: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Labels and class probabilities of uint8 images (n, h, w) in the training format.

    Returns
    -------
    labels : numpy.ndarray
        int64 (n,).
    proba : numpy.ndarray
        float32 (n, k); a binary (logistic) model gives k = 2, ``[P(0), P(1)]``.
    """
    X = preprocessor.transform(images)
    p = np.asarray(model.forward(X), dtype=np.float32)
    if p.ndim == 1:
        p = np.stack([1.0 - p, p], axis=1)
    return model.predict(X).astype(np.int64), p


def predict(
    checkpoint: str | os.PathLike[str],
    paths: Iterable[str | os.PathLike[str]],
    *,
    raw: bool = False,
    keep_going: bool = False,
) -> Predictions:
    """Predict the classes of images with a checkpoint written by a digitlab run.

    Parameters
    ----------
    checkpoint
        ``checkpoint.npz`` of a run folder.
    paths
        Inputs, as for :func:`read_inputs` (sized to the checkpoint's ``image_shape``).
    raw
        See :func:`read_inputs`.
    keep_going
        An image file that cannot be read does not stop the batch: its row's
        :meth:`Predictions.failed` says why (otherwise the first such file raises).

    Raises
    ------
    CheckpointError
        Not a checkpoint of a digitlab run.
    DatasetNotFoundError, DataError
        As :func:`read_inputs`.
    """
    from digitlab.runfiles import load_run_checkpoint

    model, prep, meta = load_run_checkpoint(checkpoint)
    from digitlab.data.registry import frame_fit

    extra = meta["extra"]
    errors: list[str | None] | None = [] if keep_going else None
    fit = frame_fit(extra.get("dataset"))  # the training data's framing (8x8 digits fill it)
    names, images = read_inputs(paths, extra["image_shape"], raw=raw, fit=fit, errors=errors)
    labels, proba = predict_arrays(model, prep, images)
    return Predictions(
        names=names,
        inputs=images,
        labels=labels,
        proba=proba,
        classes=[str(c) for c in extra["classes"]],
        label_offset=int(extra.get("label_offset", 0)),
        errors=errors if errors and any(errors) else [],
    )


def printable_name(name: str) -> str:
    """``name`` as text any UTF-8 file can hold: bytes that were not UTF-8 (a file name with
    byte 0xff) as ``\\xff``, control characters (CR, LF, TAB...) as escapes."""
    text = name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def predictions_csv(pred: Predictions, *, proba: bool = False, digits: int = 6) -> str:
    """CSV text: ``file,class`` and, with ``proba``, one ``p_<class>`` column per class."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["file", "class", *([f"p_{c}" for c in pred.classes] if proba else [])])
    fmt = f"{{:.{digits}f}}"
    for i, (name, cls) in enumerate(zip(pred.names, pred.predicted, strict=True)):
        probs = [("" if pred.failed(i) else fmt.format(v)) for v in pred.proba[i]] if proba else []
        w.writerow([printable_name(name), cls, *probs])
    return buf.getvalue()


def kaggle_csv(categories: Sequence[object]) -> str:
    """Kaggle submission text: ``Id,Category`` with Ids 1..n."""
    return "Id,Category\n" + "".join(f"{i},{c}\n" for i, c in enumerate(categories, start=1))


def write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` (UTF-8) atomically: the file appears complete or not at all."""
    from digitlab.fileio import atomic_write_bytes

    return atomic_write_bytes(path, lambda f: f.write(text.encode()))


def contact_sheet(
    images: np.ndarray,
    captions: Sequence[str],
    path: str | os.PathLike[str],
    *,
    columns: int = 10,
    scale: int = 3,
    max_images: int = CONTACT_SHEET_MAX,
) -> Path:
    """Write a PNG grid of what the model saw, each image with its caption, atomically.

    Parameters
    ----------
    images
        uint8 (n, h, w), ink bright on black (drawn as it is: white ink on black).
    captions
        n captions (the predicted class), drawn under each image.
    path
        PNG file to write.
    columns, scale
        Images per row; pixels per input pixel.
    max_images
        Only the first ``max_images`` are drawn.

    Returns
    -------
    pathlib.Path
    """
    from PIL import Image, ImageDraw, ImageFont

    from digitlab.fileio import atomic_write_bytes

    n = min(len(images), max_images)
    if n == 0:
        raise DataError("no images to draw on a contact sheet")
    h, w = images.shape[1] * scale, images.shape[2] * scale
    font = ImageFont.load_default()
    cap_h = 14
    cw, ch = max(w, 40) + 6, h + cap_h + 6
    cols = min(columns, n)
    rows = -(-n // cols)
    sheet = Image.new("L", (cols * cw, rows * ch), 96)
    big = np.repeat(np.repeat(images[:n], scale, axis=1), scale, axis=2)
    draw = ImageDraw.Draw(sheet)
    for k in range(n):
        r, c = divmod(k, cols)
        x0, y0 = c * cw + (cw - w) // 2, r * ch + 3
        sheet.paste(Image.fromarray(np.ascontiguousarray(big[k])), (x0, y0))
        text = str(captions[k])[:12]
        draw.text((c * cw + 3, y0 + h + 1), text, fill=255, font=font)
    return atomic_write_bytes(path, lambda f: sheet.save(f, format="PNG"))
