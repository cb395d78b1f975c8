"""digitlab: gradient-descent classifiers for handwritten characters, from scratch in NumPy."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from digitlab.gradcheck import gradcheck
from digitlab.models import LogisticModel, MLPModel, SoftmaxModel, build_model

try:
    __version__ = version("digitlab")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"

__all__ = [
    "LogisticModel",
    "MLPModel",
    "SoftmaxModel",
    "__version__",
    "build_model",
    "gradcheck",
]
