"""Whole metric series kept in memory and extended as they grow, for charts served often.

Reading a million points from the database takes about a second; a series read once is kept
(as NumPy arrays) and later reads fetch only the points logged since, so a chart of a long
run is a downsample of memory. Least recently used series are dropped past a budget.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

import numpy as np

from ..store import Backend
from ._downsample import minmax_downsample
from ._feed import Series


class _Entry:
    def __init__(self) -> None:
        self.series = Series()
        self.last_id = 0
        self.lock = threading.Lock()


class SeriesCache:
    """``(steps, values)`` of one metric of one run, read incrementally; thread-safe.

    ``budget`` is the number of points kept over all series (16 bytes each); the series
    used least recently are dropped first, and read again when asked for.
    """

    def __init__(self, backend: Backend, budget: int = 4_000_000):
        self.backend = backend
        self.budget = budget
        self._entries: OrderedDict[tuple[str, str], _Entry] = OrderedDict()
        self._lock = threading.Lock()

    def series(self, run_id: str, key: str) -> tuple[np.ndarray, np.ndarray]:
        with self._lock:
            entry = self._entries.get((run_id, key))
            if entry is None:
                entry = self._entries[(run_id, key)] = _Entry()
            self._entries.move_to_end((run_id, key))
        with entry.lock:
            rows = self.backend.store.metric_rows(run_id, key=key, after_id=entry.last_id)
            if rows:
                entry.last_id = rows[-1][0]
                entry.series.extend([r[2] for r in rows], [r[3] for r in rows])
            # Views stay valid: later points go past n, or into a new array when it grows.
            x, y = entry.series.x, entry.series.y
        self._evict()
        return x, y

    def downsampled(self, run_id: str, key: str, max_points: int
                    ) -> tuple[np.ndarray, np.ndarray, int]:
        """At most ``max_points`` points keeping every bucket's extremes, and the total."""
        x, y = self.series(run_id, key)
        dx, dy = minmax_downsample(x, y, max_points)
        return dx, dy, len(x)

    def _evict(self) -> None:
        with self._lock:
            total = sum(e.series.n for e in self._entries.values())
            while total > self.budget and len(self._entries) > 1:
                _, dropped = self._entries.popitem(last=False)
                total -= dropped.series.n
