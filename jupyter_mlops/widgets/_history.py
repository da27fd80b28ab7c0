"""Whole metric series kept in memory and extended as they grow, for charts served often.

Reading a million points from the database takes seconds; a run's series read once are kept
(as NumPy arrays) and later reads fetch only the points logged since (one index seek when
nothing is new), so a chart of a long run is a downsample of memory. The runs used least
recently are dropped past a budget of points, and read again when asked for.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

import numpy as np

from ..store import Backend
from ._downsample import minmax_downsample
from ._feed import Series


class _RunSeries:
    def __init__(self) -> None:
        self.series: dict[str, Series] = {}
        self.last_id = 0
        self.points = 0
        self.lock = threading.Lock()


class SeriesCache:
    """Every metric series of the runs asked for, read incrementally; thread-safe.

    ``budget`` is the number of points kept over all runs (16 bytes each).
    """

    def __init__(self, backend: Backend, budget: int = 4_000_000):
        self.backend = backend
        self.budget = budget
        self._runs: OrderedDict[str, _RunSeries] = OrderedDict()
        self._lock = threading.Lock()

    def series(self, run_id: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """``{key: (steps, values)}`` of every metric the run logged so far."""
        with self._lock:
            entry = self._runs.get(run_id)
            if entry is None:
                entry = self._runs[run_id] = _RunSeries()
            self._runs.move_to_end(run_id)
        with entry.lock:
            rows = self.backend.store.metric_rows(run_id, after_id=entry.last_id)
            if rows:
                entry.last_id = rows[-1][0]
                entry.points += len(rows)
                grouped: dict[str, tuple[list[float], list[float]]] = {}
                for _, key, step, value, _wall in rows:
                    xs, ys = grouped.setdefault(key, ([], []))
                    xs.append(step)
                    ys.append(value)
                for key, (xs, ys) in grouped.items():
                    entry.series.setdefault(key, Series()).extend(xs, ys)
            # Views stay valid: later points go past n, or into a new array when one grows.
            found = {key: (s.x, s.y) for key, s in entry.series.items()}
        self._evict()
        return found

    def downsampled(self, run_id: str, keys: list[str] | None, max_points: int
                    ) -> dict[str, tuple[np.ndarray, np.ndarray, int]]:
        """Per key: at most ``max_points`` points keeping every bucket's extremes, and
        the total number of points. Unknown keys are left out."""
        found = self.series(run_id)
        wanted = sorted(found) if keys is None else [k for k in keys if k in found]
        return {key: (*minmax_downsample(*found[key], max_points), len(found[key][0]))
                for key in wanted}

    def _evict(self) -> None:
        with self._lock:
            total = sum(e.points for e in self._runs.values())
            while total > self.budget and len(self._runs) > 1:
                _, dropped = self._runs.popitem(last=False)
                total -= dropped.points
