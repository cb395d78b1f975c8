"""A job's data: the settings' splits, changed by the member's engine keys.

``validation = "test"`` validates on the test split (no hold-out is cut from the training
images); ``bias_input = x`` sets the bias column of the features to ``x`` instead of 1.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

from digitlab.errors import ConfigError


def job_data(
    base: Any, bias_input: float, validation: str, dataset: Any = None, expected: Any = None
) -> Any:
    """The prepared data of a job with settings ``base`` (a :class:`~digitlab.settings.Settings`),
    read from ``dataset`` when given; refused (DataError naming this worker) when it is not
    the client's ``expected`` data (:func:`~digitlab.runner.data_identity`)."""
    from digitlab.data import load
    from digitlab.runner import check_data_identity, prepare_data

    if expected:
        dataset = dataset if dataset is not None else load(base.dataset, root=base.data_root)
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
