"""Former home of the update rules, kept so ``digitlab.optim.rules`` imports keep working."""

from digitlab.optim.registry import make_optimizer
from digitlab.optim.sgd import SGD

__all__ = ["SGD", "make_optimizer"]
