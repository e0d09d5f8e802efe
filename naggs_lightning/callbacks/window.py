"""The last ``size`` losses and their median, kept sorted as they come: the detectors read the median every batch."""

from __future__ import annotations

import bisect
from collections import deque
from collections.abc import Iterable, Iterator

__all__ = ["MedianWindow"]


class MedianWindow:
    """A sliding window of floats with its median in O(size) per append (``statistics.median`` sorts it anew).

    Iterates oldest first, as the deque it replaces did, so the detectors' saved states keep their form.

    Args:
        size: the values kept; an integer >= 1.
        values: the initial values, oldest first (the last ``size`` are kept).
    """

    def __init__(self, size: int, values: Iterable[float] = ()) -> None:
        if not isinstance(size, int) or isinstance(size, bool) or size < 1:
            raise ValueError(f"MedianWindow size must be an integer >= 1, got {size!r}")
        self.size = size
        self._order: deque[float] = deque()
        self._sorted: list[float] = []
        for value in values:
            self.append(value)

    def append(self, value: float) -> None:
        if len(self._order) == self.size:
            oldest = self._order.popleft()
            del self._sorted[bisect.bisect_left(self._sorted, oldest)]
        self._order.append(value)
        bisect.insort(self._sorted, value)

    def median(self) -> float:
        """The median of the values held (the mean of the middle two for an even count)."""
        n = len(self._sorted)
        if n == 0:
            raise ValueError("the median of an empty MedianWindow")
        mid = n // 2
        return self._sorted[mid] if n % 2 else 0.5 * (self._sorted[mid - 1] + self._sorted[mid])

    def clear(self) -> None:
        self._order.clear()
        self._sorted.clear()

    def __len__(self) -> int:
        return len(self._order)

    def __iter__(self) -> Iterator[float]:
        return iter(self._order)
