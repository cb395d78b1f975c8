"""digitlab: gradient-descent classifiers for handwritten characters, from scratch in NumPy."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import Any

from digitlab.gradcheck import gradcheck
from digitlab.models import LogisticModel, MLPModel, SoftmaxModel, build_model

try:
    __version__ = version("digitlab")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"

# scikit-learn estimators, imported on first use so that `import digitlab` stays fast
_ESTIMATORS = ("LogisticRegression", "MLPClassifier", "SoftmaxRegression")


def __getattr__(name: str) -> Any:
    if name in _ESTIMATORS:
        from digitlab import estimators

        return getattr(estimators, name)
    raise AttributeError(f"module 'digitlab' has no attribute {name!r}")


__all__ = [
    "LogisticModel",
    "LogisticRegression",
    "MLPClassifier",
    "MLPModel",
    "SoftmaxModel",
    "SoftmaxRegression",
    "__version__",
    "build_model",
    "gradcheck",
]
