"""The one exception type the theory's step raises for input it cannot measure or seed from."""

from __future__ import annotations

__all__ = ["LRError"]


class LRError(ValueError):
    """The theory's step cannot be computed for this model or these arguments.

    The message is one line naming the problem (a warm-up that keeps diverging, a loss that is not finite
    at initialisation, a bad argument). ``naggs-tune`` reports it as its own input error.
    """
