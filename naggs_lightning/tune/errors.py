"""The one exception type the tuner raises for bad input."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from naggs_lightning.lr.errors import LRError

__all__ = ["TuneError", "reported_as_tune_error"]


class TuneError(ValueError):
    """A problem with the tuner's input: config, search space, storage or options.

    The message is one line that names the offending item, so ``naggs-tune`` can print it and exit
    with status 2. Everything that raises it runs before the study is touched, or leaves the study
    as it was (an existing study is never modified by a rejected run).
    """


@contextlib.contextmanager
def reported_as_tune_error() -> Iterator[None]:
    """Raise the seed's :class:`~naggs_lightning.lr.errors.LRError` (a model that does not train at its mu, a
    loss not finite at initialisation) as a :class:`TuneError` with the same one-line message: to the tuner's
    user it is bad input like any other."""
    try:
        yield
    except LRError as exc:
        raise TuneError(str(exc)) from exc
