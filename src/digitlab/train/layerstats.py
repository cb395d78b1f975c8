"""Per-layer statistics at every evaluation, as history columns (see
:mod:`digitlab.models.inspect` for what each column is)."""

from __future__ import annotations

import numpy as np

from digitlab.models.inspect import activation_statistics, step_statistics, weight_statistics
from digitlab.train.callbacks import Callback, Step, TrainerView

#: Rows of the fixed probe batch the activations are measured on.
PROBE_ROWS = 256


class LayerStats(Callback):
    """Adds each layer's weight and gradient norms, update/weight ratio, activation statistics
    and histogram (on a fixed probe batch) to every evaluation's record.

    Parameters
    ----------
    probe : ndarray (p, d)
        The probe batch (features, as the model takes them); the same rows at every
        evaluation, so the statistics are comparable over training.
    """

    def __init__(self, probe: np.ndarray) -> None:
        self.probe = np.asarray(probe)

    def measure(self, trainer: TrainerView, step: Step) -> dict[str, float]:
        model = trainer.model
        probe = model.check_X(self.probe)
        out = weight_statistics(model) | step_statistics(model, step.grads, step.before)
        return out | activation_statistics(model, probe)
