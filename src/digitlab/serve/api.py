"""What the JSON and PNG endpoints of ``digitlab serve`` compute, as plain functions.

Every function takes a :class:`~digitlab.serve.runs.RunIndex` (or runs it resolved) and
returns JSON-able dicts or PNG bytes; nothing here knows about HTTP. Checkpoints are read
with ``allow_pickle=False`` and cached by path, mtime and size; test splits needed for the
confusion matrix are prepared with the run's own settings (:func:`digitlab.runner.prepare_data`)
and the last one is kept in memory.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np

from digitlab.errors import DigitlabError, ServeError
from digitlab.models import MODELS
from digitlab.models.inspect import histogram_range
from digitlab.runfiles import CHECKPOINT, load_run_checkpoint
from digitlab.serve.png import diverging, encode_png, tile
from digitlab.serve.runs import RunFiles, RunIndex, metrics_of, run_error, settings_of

#: Largest upload accepted by the predict endpoint, in bytes.
MAX_UPLOAD_BYTES = 2 * 2**20
#: Hidden units of an MLP shown as weight images.
MAX_UNITS = 25
#: Misclassified examples listed per confusion-matrix cell.
MAX_EXAMPLES = 48


# ---------------------------------------------------------------------------------- models
@dataclass
class LoadedModel:
    """A run's checkpoint, ready to predict: model, fitted preprocessor and what it maps to.

    ``classes`` are the names of labels 0..k-1; ``image_shape`` is (h, w).
    """

    model: Any
    prep: Any
    meta: dict[str, Any]
    classes: list[str]
    image_shape: tuple[int, int]

    @property
    def kind(self) -> str:
        return str(self.model.kind)

    def features(self, images: np.ndarray) -> np.ndarray:
        """Model features (n, d[+1]) of uint8 images (n, h, w) in the training format."""
        return self.prep.transform(images)

    def weights(self) -> np.ndarray | None:
        """First-layer weights on the pixels (h*w, m) (bias row dropped), None if absent."""
        name = MODELS[self.kind].image_weights if self.kind in MODELS else None
        W = None if name is None else self.model.params.get(name)
        if W is None:
            return None
        d = self.image_shape[0] * self.image_shape[1]
        return W[:d] if W.shape[0] in (d, d + 1) else None


class ModelCache:
    """Loaded checkpoints keyed by (path, mtime, size); the ``size`` most recent are kept."""

    def __init__(self, size: int = 16) -> None:
        self.size = size
        self._items: OrderedDict[tuple[str, int, int], LoadedModel] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, run: RunFiles) -> LoadedModel:
        path = run.file(CHECKPOINT)
        if path is None:
            raise ServeError(f"run {run.id} has no checkpoint.npz (yet)", 404)
        st = path.stat()
        key = (str(path), st.st_mtime_ns, st.st_size)
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        try:  # checked against its model: image shape, classes, finite weights
            model, prep, meta = load_run_checkpoint(path)
        except DigitlabError as exc:
            raise ServeError(f"run {run.id}: {exc}", 422) from None
        extra = meta["extra"]
        h, w = extra["image_shape"]
        loaded = LoadedModel(model, prep, meta, [str(c) for c in extra["classes"]], (h, w))
        with self._lock:
            self._items[key] = loaded
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return loaded


# ---------------------------------------------------------------------------------- runs
def weight_titles(loaded: LoadedModel) -> list[str]:
    """Titles of the weight images :func:`weights_png` draws, in order."""
    W = loaded.weights()
    if W is None:
        return []
    columns = MODELS[loaded.kind].image_columns
    if columns == "pair":
        neg, pos = loaded.classes[:2]
        return [f"{pos} vs {neg}"]
    if columns == "unit":
        return [f"unit {i + 1}" for i in range(min(MAX_UNITS, W.shape[1]))]
    return list(loaded.classes)


def run_detail(index: RunIndex, models: ModelCache, run_id: str | None) -> dict[str, Any]:
    """Summary, full settings, metrics, the weight images' titles and the range of the
    activation histograms (``hist_range``) of one run."""
    run = index.resolve(run_id)
    out = index.summary(run)
    out["config"], out["metrics"] = {}, None
    try:  # a bad file is this run's error, shown on its page
        out["config"] = settings_of(run)
        out["metrics"] = metrics_of(run)
    except ServeError as exc:
        if exc.status == 403:
            raise
        out["error"] = out.get("error") or str(exc)
    except Exception as exc:  # noqa: BLE001
        out["error"] = out.get("error") or run_error(run.id, exc)
    activation = out["config"].get("activation") if isinstance(out["config"], dict) else None
    # the fixed range of the history's activation histograms (a{i}_hist00 ...)
    out["hist_range"] = list(histogram_range(activation if isinstance(activation, str) else ""))
    out["weights"] = []
    out["weights_error"] = None
    if out["has_checkpoint"]:
        try:
            loaded = models.get(run)
            out["weights"] = weight_titles(loaded)
            out["kind"] = loaded.kind
            out["classes"] = loaded.classes
        except ServeError as exc:
            out["weights_error"] = str(exc)
    return out


def run_history(index: RunIndex, run_id: str | None) -> dict[str, Any]:
    """``{"id", "status", "summary", "columns": {name: [value | None, ...]}}`` of a run."""
    run = index.resolve(run_id)
    summary = index.summary(run)
    try:
        columns = index.history(run)
    except ServeError as exc:
        if exc.status == 403:  # a link out of the root stays refused
            raise
        columns = {}
        summary["error"] = summary.get("error") or str(exc)
    except Exception as exc:  # noqa: BLE001 - a bad history.csv is this run's error
        columns = {}
        summary["error"] = summary.get("error") or run_error(run.id, exc)
    return {"id": run.id, "status": summary["status"], "summary": summary, "columns": columns}


def weights_png(index: RunIndex, models: ModelCache, run_id: str | None, unit: int) -> bytes:
    """Weight image ``unit`` (see :func:`weight_titles`) as a diverging-colour PNG (h, w)."""
    loaded = models.get(index.resolve(run_id))
    W = loaded.weights()
    n = len(weight_titles(loaded))
    if W is None or not 0 <= unit < n:
        raise ServeError(f"run {run_id}: no weight image {unit} (it has {n})", 404)
    return encode_png(diverging(W[:, unit].reshape(loaded.image_shape)))


def compare(index: RunIndex, ids: list[str]) -> dict[str, Any]:
    """Summaries and settings of several runs, and the setting names whose values differ."""
    if not ids:
        raise ServeError("give run ids to compare: ?ids=a,b", 400)
    runs = [index.resolve(i) for i in ids]
    configs = {r.id: settings_of(r) for r in runs}
    keys = sorted({k for c in configs.values() for k in c})
    differing = [k for k in keys if len({json.dumps(c.get(k)) for c in configs.values()}) > 1]
    return {
        "runs": [index.summary(r) for r in runs],
        "settings": configs,
        "differing": differing,
    }


# ---------------------------------------------------------------------------------- confusion
class DataCache:
    """The last prepared dataset (a run's splits), keyed by the settings that define it, and
    the confusion records computed from it, keyed by checkpoint.

    Data is looked for only where the server was told (``data_root``, else the usual sources:
    ``$DIGITLAB_DATA``, the cache, the embedded sample), never in a folder a checkpoint names,
    and it must be the data the checkpoint trained on (as ``digitlab evaluate`` checks).
    """

    KEYS = ("dataset", "data_root", "split", "n_train", "n_test", "holdout", "holdout_mode",
            "classes", "preprocess", "bias_column", "seed")  # fmt: skip

    def __init__(self, data_root: str | None = None) -> None:
        self.data_root = data_root
        self._key: str | None = None
        self._data: Any = None
        self._lock = threading.Lock()
        self._confusions: OrderedDict[tuple[str, int, int], dict[str, Any]] = OrderedDict()

    def confusion(self, key: tuple[str, int, int]) -> dict[str, Any] | None:
        """A confusion record computed before for the checkpoint ``key`` (path, mtime, size)."""
        with self._lock:
            return self._confusions.get(key)

    def keep_confusion(self, key: tuple[str, int, int], record: dict[str, Any]) -> None:
        with self._lock:
            self._confusions[key] = record
            while len(self._confusions) > 32:
                self._confusions.popitem(last=False)

    def get(self, loaded: LoadedModel, path: Any) -> Any:
        """The prepared splits of the checkpoint ``loaded`` (read from ``path``).

        Raises
        ------
        DigitlabError
            The data is not found here, or it is not the data the checkpoint trained on.
        """
        from digitlab.runfiles import run_settings
        from digitlab.runner import check_same_data, prepare_data

        settings = run_settings(loaded.meta, path).replace(data_root=self.data_root)
        key = json.dumps({k: getattr(settings, k, None) for k in self.KEYS}, sort_keys=True)
        with self._lock:
            if key != self._key:
                self._data = None
                self._data = prepare_data(settings)
                self._key = key
            data = self._data
        check_same_data(loaded.meta, data.dataset, path)
        return data


def saved_matrix(metrics: dict[str, Any] | None, k: int) -> list[list[int]] | None:
    """The k x k ``confusion_test`` of a run's ``metrics.json``, None if absent or malformed."""
    m = (metrics or {}).get("confusion_test")
    if not isinstance(m, list) or len(m) != k:
        return None
    if not all(isinstance(r, list) and len(r) == k for r in m):
        return None
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for r in m for v in r):
        return None
    return m


def confusion(
    index: RunIndex, models: ModelCache, data: DataCache, run_id: str | None
) -> dict[str, Any]:
    """Confusion matrix of the run's checkpoint on its test split, with the examples per cell.

    Returns ``{"classes", "matrix": k x k counts (rows: true, columns: predicted),
    "examples": {"t,p": [test index, ...]} (misclassified cells, at most MAX_EXAMPLES each),
    "source", "error"}``. When the data cannot be loaded, ``matrix`` is the one saved in
    ``metrics.json`` (if any), ``examples`` is empty and ``error`` says why.
    """
    run = index.resolve(run_id)
    loaded = models.get(run)
    path = run.file(CHECKPOINT)
    assert path is not None  # models.get checked it
    st = path.stat()
    ckey = (str(path), st.st_mtime_ns, st.st_size)
    cached = data.confusion(ckey)
    if cached is not None:
        return cached
    try:
        prepared = data.get(loaded, path)
    except (DigitlabError, OSError) as exc:
        return {
            "classes": loaded.classes,
            "matrix": saved_matrix(metrics_of(run), len(loaded.classes)),
            "examples": {},
            "source": "metrics.json (the run's test data is not available here)",
            "error": f"cannot load the test split: {exc}",
        }
    X, y = prepared.test
    pred = loaded.model.predict(X)
    k = len(loaded.classes)
    matrix = np.bincount(y * k + pred, minlength=k * k).reshape(k, k)
    wrong = np.flatnonzero(pred != y)
    examples: dict[str, list[int]] = {}
    for i in wrong.tolist():  # misclassified only; a few hundred at most
        cell = examples.setdefault(f"{int(y[i])},{int(pred[i])}", [])
        if len(cell) < MAX_EXAMPLES:
            cell.append(i)
    out = {
        "classes": loaded.classes,
        "matrix": matrix.tolist(),
        "examples": examples,
        "source": f"checkpoint on {len(y)} test images ({prepared.dataset.name})",
        "error": None,
    }
    data.keep_confusion(ckey, out)
    return out


def examples_png(
    index: RunIndex,
    models: ModelCache,
    data: DataCache,
    run_id: str | None,
    true: int,
    pred: int,
) -> bytes:
    """The test images of label ``true`` predicted as ``pred`` (at most MAX_EXAMPLES), tiled."""
    conf = confusion(index, models, data, run_id)
    if conf["error"]:
        raise ServeError(conf["error"], 404)
    idx = conf["examples"].get(f"{true},{pred}", [])
    if not idx:
        raise ServeError(f"no misclassified test images with label {true} predicted {pred}", 404)
    run = index.resolve(run_id)
    loaded = models.get(run)
    prepared = data.get(loaded, run.file("checkpoint.npz"))
    images = prepared.splits.test[0][np.asarray(idx)]
    return encode_png(tile(255 - images.astype(np.uint8), cols=min(len(idx), 12), gap=2, fill=255))


# ---------------------------------------------------------------------------------- predict
def decode_upload(body: bytes) -> np.ndarray:
    """The uploaded image as uint8 (h, w[, c]) through the bounded image reader.

    The pixel cap is ``predict``'s (:func:`digitlab.limits.max_pixels`); a large image is
    reduced while still 8-bit to a longer side below twice
    :data:`~digitlab.data.images.WORK_SIDE` (what :func:`to_model_input` works at anyway),
    so a small, very compressible upload cannot make the server allocate gigabytes.
    """
    from digitlab.data.images import WORK_SIDE, read_image

    if len(body) > MAX_UPLOAD_BYTES:
        raise ServeError(f"upload larger than {MAX_UPLOAD_BYTES} bytes", 413)
    if not body:
        raise ServeError("empty upload: send the image bytes as the request body", 400)
    try:
        return read_image(body, name="<upload>", max_side=WORK_SIDE)
    except DigitlabError as exc:
        msg = re.sub(r" ?<_io\.BytesIO object at 0x[0-9a-fA-F]+>", "", str(exc))
        raise ServeError(f"cannot read the image: {msg}", 422) from None


def linear_evidence(lm: LoadedModel, pixels: np.ndarray) -> dict[str, Any]:
    """``evidence`` (m, h*w): weight x input per pixel of each class (one map for logistic),
    ``evidence_bias`` the per-class constant (bias) term and ``evidence_titles``, for a linear
    model and the uint8 image ``pixels (h, w)``; all None for other models."""
    if lm.kind not in ("logistic", "softmax"):
        return {"evidence": None, "evidence_titles": None, "evidence_bias": None}
    X = lm.features(pixels[None])
    W = lm.model.params["W"].astype(np.float64)
    d = pixels.size
    contrib = (W[:d] * X[0, :d, None]).T  # (m, d)
    bias = W[d:].sum(axis=0) * float(X[0, d:].sum()) if W.shape[0] > d else 0.0
    if "b" in lm.model.params:
        bias = bias + lm.model.params["b"].astype(np.float64)
    return {
        "evidence": np.round(contrib, 5).tolist(),
        "evidence_titles": weight_titles(lm),
        "evidence_bias": np.round(np.atleast_1d(bias), 5).tolist(),
    }


def inside_model(
    lm: LoadedModel, pixels: np.ndarray, pred: int, cls: str | None
) -> dict[str, Any]:
    """``hidden`` (see :func:`digitlab.serve.inside.hidden_layers`) and ``saliency`` (see
    :func:`~digitlab.serve.inside.saliency_maps`) of the predicted class and, if the model
    has a class named ``cls``, of that class too, for the uint8 image ``pixels (h, w)``."""
    from digitlab.serve.inside import hidden_layers, saliency_maps

    X = lm.features(pixels[None])
    classes = [pred]
    if cls is not None and cls in lm.classes and lm.classes.index(cls) != pred:
        classes.append(lm.classes.index(cls))
    intensity = pixels.reshape(-1).astype(np.float64) / 255.0
    return {
        "hidden": hidden_layers(lm.model, X, lm.weights() if lm.kind == "mlp" else None),
        "saliency": saliency_maps(lm.model, lm.prep, X, intensity, classes),
    }


def predict(
    index: RunIndex, models: ModelCache, run_ids: list[str], body: bytes, cls: str | None = None
) -> dict[str, Any]:
    """Class probabilities of one uploaded image under one or several runs' checkpoints, and
    what happens inside each model.

    Returns ``{"shape": [h, w], "image": h x w values in [0, 1] (what the first model sees,
    ink bright), "models": [{"id", "kind", "classes", "probs", "pred", "label", "evidence",
    "evidence_titles", "evidence_bias", "hidden", "saliency"}], "ms"}``: the evidence of
    :func:`linear_evidence`, the hidden layers and saliency maps of :func:`inside_model`
    (``cls``: a class name whose saliency is wanted besides the predicted class's). A model
    whose input differs from the first one's (another size or framing) has its own ``image``.
    """
    from digitlab.data.images import to_model_input
    from digitlab.data.registry import frame_fit
    from digitlab.predict import predict_arrays

    t0 = time.perf_counter()
    if not run_ids:
        raise ServeError("choose at least one run: ?ids=<run id>[,<run id>...]", 400)
    if len(run_ids) > 8:
        raise ServeError("at most 8 runs per prediction", 400)
    loaded = [models.get(index.resolve(i)) for i in run_ids]
    image = decode_upload(body)
    inputs: dict[tuple[int, int, float], np.ndarray] = {}
    results = []
    for run_id, lm in zip(run_ids, loaded, strict=True):
        fit = frame_fit(lm.meta["extra"].get("dataset"))  # the training data's framing
        key = (*lm.image_shape, fit)
        if key not in inputs:
            try:
                inputs[key] = to_model_input(image, shape=lm.image_shape, fit=fit)
            except DigitlabError as exc:
                raise ServeError(f"cannot preprocess the image: {exc}", 422) from None
        # the training format, uint8 ink bright, and the same function as `digitlab predict`
        pixels = np.rint(inputs[key] * 255.0).astype(np.uint8)
        labels, proba = predict_arrays(lm.model, lm.prep, pixels[None])
        p, pred = proba[0].astype(np.float64), int(labels[0])
        item: dict[str, Any] = {
            "id": run_id,
            "kind": lm.kind,
            "classes": lm.classes,
            "probs": [round(float(v), 6) for v in p],
            "pred": pred,
            "label": lm.classes[pred],
        }
        item |= linear_evidence(lm, pixels) | inside_model(lm, pixels, pred, cls)
        if key != next(iter(inputs)):  # another framing or size than the page's image
            item["image"] = np.round(pixels / 255.0, 4).tolist()
        results.append(item)
    first = np.rint(next(iter(inputs.values())) * 255.0) / 255.0
    return {
        "shape": list(first.shape),
        "image": np.round(first, 4).tolist(),
        "models": results,
        "ms": (time.perf_counter() - t0) * 1e3,
    }
