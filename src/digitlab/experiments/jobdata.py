"""A job's data: the settings' splits, changed by the member's engine keys.

``validation = "test"`` validates on the test split (no hold-out is cut from the training
images); ``bias_input = x`` sets the bias column of the features to ``x`` instead of 1.
"""

from __future__ import annotations

import os
from dataclasses import replace
from typing import Any

import numpy as np

from digitlab.errors import ConfigError

#: The dataset this worker process read last, by what identifies its source (name, root, the
#: files' paths, sizes and modification times): the jobs of a reproduction read the same files,
#: and full MNIST takes 0.2 s of gzip to read each time (about 30 s of CPU over the 147 jobs).
_loaded: dict[tuple[Any, ...], Any] = {}


def worker_dataset(name: str, root: Any = None) -> Any:
    """``digitlab.data.load(name, root=root)``, read once per process while its files stay the
    same; the cached arrays are read-only (no job can change another's data)."""
    from digitlab.data import load
    from digitlab.data.registry import locate

    source = locate(name, root)
    files = []
    for path in source.files:
        st = os.stat(path)
        files.append((str(path), st.st_size, st.st_mtime_ns))
    key = (name, None if root is None else str(root), source.kind, source.name, tuple(files))
    found = _loaded.get(key)
    if found is None:
        found = load(name, root=root)
        for a in (found.x_train, found.y_train, found.x_test, found.y_test):
            a.flags.writeable = False
        _loaded.clear()  # one dataset held: the memory of one copy
        _loaded[key] = found
    return found


def job_data(
    base: Any, bias_input: float, validation: str, dataset: Any = None, expected: Any = None
) -> Any:
    """The prepared data of a job with settings ``base`` (a :class:`~digitlab.settings.Settings`),
    read from ``dataset`` when given; refused (DataError naming this worker) when it is not
    the client's ``expected`` data (:func:`~digitlab.runner.data_identity`)."""
    from digitlab.runner import check_data_identity, prepare_data

    if dataset is None:
        dataset = worker_dataset(base.dataset, base.data_root)
    if expected:
        check_data_identity(expected, dataset)

    if validation == "test":
        data = prepare_data(base.replace(holdout=0.0, early_stopping=0), dataset)
        note = "validation on the test split (no hold-out cut from the training images)"
        data = replace(data, val=data.test, notes=[*data.notes, note])
    else:
        data = prepare_data(base, dataset)
    if bias_input != 1.0:
        if not base.bias_column:
            raise ConfigError("bias_input needs bias_column = true")
        parts = [data.train, data.val, data.test]
        dtype = np.dtype(base.dtype)  # the model's: float64 features computed in float64
        for i, pair in enumerate(parts):
            if pair is not None:
                x = pair[0].astype(dtype)[:]  # the features (n, d + 1) as a new array
                x[:, -1] = bias_input
                parts[i] = (x, pair[1])
        data = replace(data, train=parts[0], val=parts[1], test=parts[2])
        data.notes.append(f"bias input {bias_input:.6g} instead of 1")
    return data


def same_data(a: Any, b: Any) -> bool:
    """Whether two prepared datasets hold the same rows in every split."""
    for pa, pb in ((a.train, b.train), (a.val, b.val), (a.test, b.test)):
        if (pa is None) != (pb is None):
            return False
        if pa is None:
            continue
        xa, xb = (getattr(p[0], "pixels", p[0]) for p in (pa, pb))
        if not (np.array_equal(pa[1], pb[1]) and np.array_equal(xa, xb)):
            return False
    return True
