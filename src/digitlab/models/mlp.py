"""Feed-forward network: hidden layers (batch normalisation, dropout optional), softmax output."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from digitlab.errors import ConfigError, ShapeError
from digitlab.models.base import Model, as_generator, config_size, init_weight
from digitlab.models.functional import (
    ACTIVATIONS,
    NEEDS_INPUT,
    LinearGrad,
    activate_,
    activation_backward_,
    batch_norm_backward,
    batch_norm_forward_,
    dropout_mask,
    outer_sum,
    softmax_,
    softmax_cross_entropy,
    softmax_cross_entropy_,
)


@dataclass
class _Hidden:
    """What the backward pass needs of one hidden layer's training forward pass."""

    a: np.ndarray  # activation output (n, h), before dropout
    z: np.ndarray | None  # the activation's input, kept where its derivative needs it
    zhat: np.ndarray | None  # batch-normalised pre-activation (n, h)
    inv_std: np.ndarray | None  # (h,)
    mask: np.ndarray | None  # inverted-dropout mask (n, h)


class MLPModel(Model):
    """Multi-layer perceptron with a softmax output.

    Hidden layer ``i`` (1-based) maps ``a_{i-1} (n, n_{i-1})`` to ``z_i = a_{i-1} W{i} + b{i}``
    (``W{i} (n_{i-1}, n_i)``, ``b{i} (n_i,)``), then, with ``batch_norm``,
    ``u_i = gamma{i} (z_i - mean) / sqrt(var + eps) + beta{i}`` (the batch's statistics in
    training, the running ones in evaluation), then ``activation``, then inverted dropout in
    training; the last layer applies the softmax.

    Parameters
    ----------
    n_features : int
    n_classes : int
    hidden : sequence of int
        Hidden layer sizes; ``()`` gives softmax regression.
    activation : str
        A key of :data:`~digitlab.models.functional.ACTIVATIONS`.
    init : str
        Weight initialisation (a key of :data:`~digitlab.models.INITS`; biases start at zero).
    dropout : float or sequence of float
        Probability of dropping each hidden layer's units in training: one rate for every
        layer or one per hidden layer, each in [0, 1).
    batch_norm : bool
        Normalise each hidden layer's pre-activations (parameters ``gamma{i}``, ``beta{i}``;
        buffers ``running_mean{i}``, ``running_var{i}`` updated as
        ``(1 - momentum) old + momentum batch``, the variance unbiased, as in PyTorch).
    bn_momentum, bn_eps : float
    leaky_slope : float
        Negative-side slope of ``leaky_relu`` in (0, 1) (also He initialisation's ``a``).
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
        """Layer sizes ``settings.hidden``, activation ``settings.activation`` and the layer
        options of the settings."""
        kw = cls.settings_kwargs(settings)
        kw |= {k: getattr(settings, k) for k in ("dropout", "batch_norm", "leaky_slope")}
        return cls(n_features, n_classes, settings.hidden, settings.activation, rng=rng, **kw)

    def __init__(
        self,
        n_features: int,
        n_classes: int,
        hidden: Sequence[int] = (400,),
        activation: str = "tanh",
        *,
        init: str = "fan_in",
        dropout: float | Sequence[float] = 0.0,
        batch_norm: bool = False,
        bn_momentum: float = 0.1,
        bn_eps: float = 1e-5,
        leaky_slope: float = 0.01,
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
        self.dropout = _rates(dropout, len(hidden))
        self.batch_norm, self.bn_momentum, self.bn_eps = bool(batch_norm), bn_momentum, bn_eps
        self.leaky_slope = float(leaky_slope)
        if not (0 < self.bn_momentum <= 1 and self.bn_eps > 0 and 0 < self.leaky_slope < 1):
            raise ConfigError("need 0 < bn_momentum <= 1, bn_eps > 0 and 0 < leaky_slope < 1")
        gen = as_generator(rng)
        slope = self.leaky_slope if activation == "leaky_relu" else 0.0
        for name, shape in self.state_shapes(self.config()).items():  # W1, b1, ..., W2, ...
            if name.startswith("W"):
                a = 0.0 if name == f"W{self.n_layers}" else slope  # the output layer: no leak
                self.params[name] = init_weight(shape, init, gen, self.dtype, a)
            elif name.startswith("running"):
                fill = 1.0 if name.startswith("running_var") else 0.0
                self.buffers[name] = np.full(shape, fill, dtype=self.dtype)
            else:
                fill = 1.0 if name.startswith("gamma") else 0.0
                self.params[name] = np.full(shape, fill, dtype=self.dtype)

    @classmethod
    def state_shapes(cls, config: dict[str, Any]) -> dict[str, tuple[int, ...]]:
        """``W{i} (n_{i-1}, n_i)`` and ``b{i} (n_i,)`` for each layer; with ``batch_norm``
        ``gamma{i}``, ``beta{i}``, ``running_mean{i}``, ``running_var{i}`` (n_i,) for each
        hidden layer."""
        hidden = config.get("hidden")
        if not isinstance(hidden, list) or not all(
            isinstance(h, int) and not isinstance(h, bool) and h >= 1 for h in hidden
        ):
            raise ConfigError(f"model hidden must be a list of whole numbers >= 1, got {hidden!r}")
        batch_norm = config.get("batch_norm", False)
        if not isinstance(batch_norm, bool):
            raise ConfigError(f"model batch_norm must be true or false, got {batch_norm!r}")
        sizes = (config_size(config, "n_features"), *hidden, config_size(config, "n_classes"))
        shapes: dict[str, tuple[int, ...]] = {}
        for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True), start=1):
            shapes |= {f"W{i}": (n_in, n_out), f"b{i}": (n_out,)}
            if batch_norm and i < len(sizes) - 1:
                for name in ("gamma", "beta", "running_mean", "running_var"):
                    shapes[f"{name}{i}"] = (n_out,)
        return shapes

    @property
    def n_layers(self) -> int:
        """Number of weight layers (hidden layers + 1)."""
        return len(self.hidden) + 1

    @property
    def batch_coupled(self) -> bool:
        return self.batch_norm

    @property
    def uses_rng(self) -> bool:
        return any(self.dropout)

    def config(self) -> dict[str, Any]:
        return super().config() | {
            "hidden": list(self.hidden),
            "activation": self.activation,
            "init": self.init,
            "dropout": list(self.dropout),
            "batch_norm": self.batch_norm,
            "bn_momentum": self.bn_momentum,
            "bn_eps": self.bn_eps,
            "leaky_slope": self.leaky_slope,
        }

    # ----------------------------------------------------------------- forward passes
    def _forward_hidden(self, X: np.ndarray) -> list[np.ndarray]:
        """Evaluation mode: activations ``[X, a_1, ..., a_{L-1}]`` of the input and every
        hidden layer (running statistics, nothing dropped)."""
        acts = [X]
        for i in range(1, self.n_layers):
            z = acts[-1] @ self.params[f"W{i}"]
            z += self.params[f"b{i}"]
            if self.batch_norm:
                mean, var = self.buffers[f"running_mean{i}"], self.buffers[f"running_var{i}"]
                scale = self.params[f"gamma{i}"] / np.sqrt(var + self.bn_eps)
                z -= mean
                z *= scale
                z += self.params[f"beta{i}"]
            acts.append(activate_(z, self.activation, self.leaky_slope))
        return acts

    def hidden_activations(self, X: np.ndarray) -> list[np.ndarray]:
        """The evaluation-mode output ``(n, n_i)`` of every hidden layer for ``X (n, d)``."""
        return self._forward_hidden(self.check_X(X))[1:]

    def kink_pattern(self, X: np.ndarray, rng: np.random.Generator | None) -> np.ndarray | None:
        """For a kinked activation (relu, leaky_relu): which hidden outputs of the training
        pass are above 0, flat bool; None for smooth activations. A finite difference whose
        two evaluations differ here crossed a kink and measures no derivative."""
        if self.activation not in ("relu", "leaky_relu"):
            return None
        layers = self._forward_train(self.check_X(X), rng, update=False)[1]
        return np.concatenate([layer.a.ravel() > 0 for layer in layers])

    def _forward_train(
        self, X: np.ndarray, rng: np.random.Generator | None, update: bool
    ) -> tuple[list[np.ndarray], list[_Hidden]]:
        """Training mode: the inputs ``[X, out_1, ..., out_{L-1}]`` of every layer and what
        the backward pass needs of each hidden layer; with ``update`` the running statistics
        of batch normalisation move towards this batch's."""
        if self.batch_norm and X.shape[0] < 2:
            raise ShapeError("batch normalisation needs training batches of at least 2 rows")
        acts, layers = [X], []
        for i in range(1, self.n_layers):
            z = acts[-1] @ self.params[f"W{i}"]
            z += self.params[f"b{i}"]
            zhat = inv_std = None
            if self.batch_norm:
                gamma, beta = self.params[f"gamma{i}"], self.params[f"beta{i}"]
                z, zhat, inv_std, mean, var = batch_norm_forward_(z, gamma, beta, self.bn_eps)
                if update:
                    self._update_running(i, mean, var, X.shape[0])
            pre = z.copy() if self.activation in NEEDS_INPUT else None
            a = activate_(z, self.activation, self.leaky_slope)
            rate, mask = self.dropout[i - 1], None
            if rate and rng is not None:
                mask = dropout_mask(a.shape, rate, rng, self.dtype)
            acts.append(a if mask is None else a * mask)
            layers.append(_Hidden(a, pre, zhat, inv_std, mask))
        return acts, layers

    def _update_running(self, i: int, mean: np.ndarray, var: np.ndarray, n: int) -> None:
        m = self.bn_momentum
        for name, batch in ((f"running_mean{i}", mean), (f"running_var{i}", var * n / (n - 1))):
            buf = self.buffers[name]
            buf *= 1.0 - m
            buf += m * batch

    def _output_logits(self, a: np.ndarray) -> np.ndarray:
        L = self.n_layers
        z = a @ self.params[f"W{L}"]
        z += self.params[f"b{L}"]
        return z

    def logits(self, X: np.ndarray) -> np.ndarray:
        """Output-layer logits (evaluation mode), shape (n, k)."""
        return self._output_logits(self._forward_hidden(self.check_X(X))[-1])

    def forward(self, X: np.ndarray) -> np.ndarray:
        """Class probabilities (evaluation mode), shape (n, k)."""
        return softmax_(self.logits(X))

    def _data_loss_sum(
        self,
        X: np.ndarray,
        y: np.ndarray,
        weight: Any = None,
        training: bool = False,
        rng: np.random.Generator | None = None,
    ) -> float:
        if training:
            acts = self._forward_train(X, rng, update=False)[0]
        else:
            acts = self._forward_hidden(X)
        return softmax_cross_entropy(self._output_logits(acts[-1]), y, weight)

    def _data_loss_and_grad(
        self,
        X: np.ndarray,
        y: np.ndarray,
        scale: float,
        factored: bool = False,
        weight: np.ndarray | None = None,
        rng: np.random.Generator | None = None,
    ) -> tuple[float, dict[str, Any]]:
        if self.batch_norm or any(self.dropout):
            acts, layers = self._forward_train(X, rng, update=True)
        else:  # the plain network: its activations are all the backward pass needs
            acts, layers = self._forward_hidden(X), []
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
                delta = delta @ self.params[f"W{i}"].T  # dE/d out_{i-1}
                if layers:
                    delta = self._hidden_backward(i - 1, delta, layers[i - 2], grads)
                else:
                    activation_backward_(delta, a_prev, self.activation, None, self.leaky_slope)
        return loss_sum, {k: grads[k] for k in self.params}

    def _hidden_backward(
        self, i: int, delta: np.ndarray, layer: _Hidden, grads: dict[str, Any]
    ) -> np.ndarray:
        """dE/dz_i from dE/d out_i through dropout, the activation and batch normalisation;
        the gradients of ``gamma{i}`` and ``beta{i}`` go into ``grads``."""
        if layer.mask is not None:
            delta *= layer.mask
        activation_backward_(delta, layer.a, self.activation, layer.z, self.leaky_slope)
        if layer.zhat is None or layer.inv_std is None:
            return delta
        delta, grads[f"gamma{i}"], grads[f"beta{i}"] = batch_norm_backward(
            delta, layer.zhat, layer.inv_std, self.params[f"gamma{i}"]
        )
        return delta


def _rates(dropout: float | Sequence[float], n_hidden: int) -> tuple[float, ...]:
    """One dropout rate per hidden layer from one rate or a list of them."""
    rates = [dropout] if isinstance(dropout, int | float) else list(dropout)
    if len(rates) == 1:
        rates = rates * n_hidden
    if len(rates) != n_hidden or not all(
        isinstance(r, int | float) and not isinstance(r, bool) and 0 <= r < 1 for r in rates
    ):
        raise ConfigError(
            f"dropout must be one rate in [0, 1) or one per hidden layer ({n_hidden}), "
            f"got {dropout!r}"
        )
    return tuple(float(r) for r in rates)
