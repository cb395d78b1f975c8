"""Feed-forward network: hidden layers with tanh/sigmoid/relu, softmax output."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from digitlab.errors import ConfigError
from digitlab.models.base import Model, as_generator, config_size, init_weight
from digitlab.models.functional import (
    ACTIVATIONS,
    LinearGrad,
    activate_,
    activation_backward_,
    outer_sum,
    softmax_,
    softmax_cross_entropy,
    softmax_cross_entropy_,
)


class MLPModel(Model):
    """Multi-layer perceptron with a softmax output.

    Layer ``i`` (1-based) maps ``a_{i-1} (n, n_{i-1})`` to ``z_i = a_{i-1} W{i} + b{i}``
    with ``W{i} (n_{i-1}, n_i)`` and ``b{i} (n_i,)``; hidden layers apply ``activation``,
    the last one the softmax.

    Parameters
    ----------
    n_features : int
    n_classes : int
    hidden : sequence of int
        Hidden layer sizes; ``()`` gives softmax regression.
    activation : {"tanh", "sigmoid", "relu"}
    init : {"zeros", "normal", "fan_in", "uniform"}
        Weight initialisation (biases start at zero).
    rng : Generator or int or None
    **kwargs
        ``l1``, ``l2``, ``reduction``, ``regularize_bias``, ``dtype`` (see :class:`Model`).
    """

    kind = "mlp"
    image_weights = "W1"
    image_columns = "unit"

    @classmethod
    def from_settings(
        cls, settings: Any, n_features: int, n_classes: int, rng: np.random.Generator
    ) -> MLPModel:
        """Layer sizes ``settings.hidden``, activation ``settings.activation``."""
        kw = cls.settings_kwargs(settings)
        return cls(n_features, n_classes, settings.hidden, settings.activation, rng=rng, **kw)

    def __init__(
        self,
        n_features: int,
        n_classes: int,
        hidden: Sequence[int] = (400,),
        activation: str = "tanh",
        *,
        init: str = "fan_in",
        rng: np.random.Generator | int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if activation not in ACTIVATIONS:
            raise ConfigError(f"activation={activation!r} is not one of {', '.join(ACTIVATIONS)}")
        hidden = tuple(int(h) for h in hidden)
        if any(h < 1 for h in hidden):
            raise ConfigError(f"hidden layer sizes must be >= 1, got {hidden}")
        self.n_features, self.n_classes = int(n_features), int(n_classes)
        self.hidden, self.activation, self.init = hidden, activation, init
        gen = as_generator(rng)
        for name, shape in self.state_shapes(self.config()).items():  # W1, b1, W2, b2, ...
            if name.startswith("W"):
                self.params[name] = init_weight(shape, init, gen, self.dtype)
            else:
                self.params[name] = np.zeros(shape, dtype=self.dtype)

    @classmethod
    def state_shapes(cls, config: dict[str, Any]) -> dict[str, tuple[int, ...]]:
        """``W{i} (n_{i-1}, n_i)`` and ``b{i} (n_i,)`` for each layer."""
        hidden = config.get("hidden")
        if not isinstance(hidden, list) or not all(
            isinstance(h, int) and not isinstance(h, bool) and h >= 1 for h in hidden
        ):
            raise ConfigError(f"model hidden must be a list of whole numbers >= 1, got {hidden!r}")
        sizes = (config_size(config, "n_features"), *hidden, config_size(config, "n_classes"))
        shapes: dict[str, tuple[int, ...]] = {}
        for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True), start=1):
            shapes |= {f"W{i}": (n_in, n_out), f"b{i}": (n_out,)}
        return shapes

    @property
    def n_layers(self) -> int:
        """Number of weight layers (hidden layers + 1)."""
        return len(self.hidden) + 1

    def config(self) -> dict[str, Any]:
        return super().config() | {
            "hidden": list(self.hidden),
            "activation": self.activation,
            "init": self.init,
        }

    def _forward_hidden(self, X: np.ndarray) -> list[np.ndarray]:
        """Activations ``[X, a_1, ..., a_{L-1}]`` of the input and every hidden layer."""
        acts = [X]
        for i in range(1, self.n_layers):
            z = acts[-1] @ self.params[f"W{i}"]
            z += self.params[f"b{i}"]
            acts.append(activate_(z, self.activation))
        return acts

    def _output_logits(self, a: np.ndarray) -> np.ndarray:
        L = self.n_layers
        z = a @ self.params[f"W{L}"]
        z += self.params[f"b{L}"]
        return z

    def logits(self, X: np.ndarray) -> np.ndarray:
        """Output-layer logits, shape (n, k)."""
        return self._output_logits(self._forward_hidden(self.check_X(X))[-1])

    def forward(self, X: np.ndarray) -> np.ndarray:
        """Class probabilities, shape (n, k)."""
        return softmax_(self.logits(X))

    def _data_loss_sum(self, X: np.ndarray, y: np.ndarray, weight: Any = None) -> float:
        return softmax_cross_entropy(self._output_logits(self._forward_hidden(X)[-1]), y, weight)

    def _data_loss_and_grad(
        self,
        X: np.ndarray,
        y: np.ndarray,
        scale: float,
        factored: bool = False,
        weight: np.ndarray | None = None,
    ) -> tuple[float, dict[str, Any]]:
        acts = self._forward_hidden(X)
        z = self._output_logits(acts[-1])
        loss_sum, delta = softmax_cross_entropy_(z, y, scale, weight)
        grads: dict[str, Any] = {}
        # Backpropagation, layer L down to 1: delta holds dE/dz_i, shape (n, n_i).
        # (delta is a new array each layer, so a LinearGrad's factors stay valid.)
        for i in range(self.n_layers, 0, -1):
            a_prev = acts[i - 1]
            # dE/dW{i} = a_prev^T delta, (n_{i-1}, n_i)
            grads[f"W{i}"] = LinearGrad(a_prev, delta) if factored else outer_sum(a_prev, delta)
            grads[f"b{i}"] = np.add.reduce(delta, axis=0)  # sum over rows, (n_i,)
            if i > 1:
                delta = delta @ self.params[f"W{i}"].T  # dE/da_{i-1}
                activation_backward_(delta, a_prev, self.activation)  # dE/dz_{i-1}
        return loss_sum, {k: grads[k] for k in self.params}
