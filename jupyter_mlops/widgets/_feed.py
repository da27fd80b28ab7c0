"""Incremental reading of one run from the store: each poll asks only for what is new."""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..store import TERMINAL, Backend


class Series:
    """A growing (step, value) series in NumPy arrays that double when full."""

    def __init__(self) -> None:
        self._x = np.empty(256, dtype=np.float64)
        self._y = np.empty(256, dtype=np.float64)
        self.n = 0

    def extend(self, steps: list[float], values: list[float]) -> None:
        k = len(steps)
        if self.n + k > len(self._x):
            size = max(len(self._x) * 2, self.n + k)
            self._x = np.resize(self._x, size)
            self._y = np.resize(self._y, size)
        self._x[self.n:self.n + k] = steps
        self._y[self.n:self.n + k] = values
        self.n += k

    @property
    def x(self) -> np.ndarray:
        return self._x[:self.n]

    @property
    def y(self) -> np.ndarray:
        return self._y[:self.n]


@dataclass
class Changes:
    """What one poll found: which parts of a view need redrawing."""

    row: bool = False
    metrics: set[str] = field(default_factory=set)
    log: bool = False
    artifacts: bool = False


class RunFeed:
    """Everything a view shows about a run, brought up to date by ``poll()``.

    Keeps the last metric row id and log chunk id it has seen, so each poll reads only rows
    written since; a feed created after a kernel restart starts from 0 and so reads the
    whole history once, then continues incrementally.
    """

    ARTIFACT_EVERY = 2.0  # seconds between artifact listings while the run goes

    def __init__(self, backend: Backend, run_id: str, log_lines: int = 200):
        self.backend, self.run_id = backend, run_id
        self.row: dict[str, Any] = {}
        self.series: dict[str, Series] = {}
        self.latest: dict[str, dict[str, Any]] = {}
        self.log_tail: deque[str] = deque(maxlen=log_lines)
        self._partial = ""  # a log line still being written
        self.artifacts: list[dict[str, Any]] = []
        self.last_metric_id = 0
        self.last_log_id = 0
        self.rows_read = 0  # metric rows fetched so far (tests check reads stay incremental)
        self._artifacts_at = 0.0
        self._lock = threading.Lock()

    @property
    def status(self) -> str:
        return self.row.get("status", "queued")

    @property
    def finished(self) -> bool:
        return self.status in TERMINAL

    def poll(self) -> Changes:
        with self._lock:
            return self._poll()

    def _poll(self) -> Changes:
        store = self.backend.store
        changes = Changes()
        row = self.backend.run_row(self.run_id)  # a job that died reads as lost
        if row != self.row:
            changes.row = True
            self.row = row
        rows = store.metric_rows(self.run_id, after_id=self.last_metric_id)
        if rows:
            self.rows_read += len(rows)
            self.last_metric_id = rows[-1][0]
            grouped: dict[str, tuple[list[float], list[float]]] = {}
            for _, key, step, value, wall in rows:
                xs, ys = grouped.setdefault(key, ([], []))
                xs.append(step)
                ys.append(value)
                self.latest[key] = {"value": value, "step": step, "wall_time": wall}
            for key, (xs, ys) in grouped.items():
                self.series.setdefault(key, Series()).extend(xs, ys)
            changes.metrics = set(grouped)
        chunks = store.log_chunks(self.run_id, after_id=self.last_log_id)
        if chunks:
            self.last_log_id = chunks[-1][0]
            text = self._partial + "".join(c[2] for c in chunks)
            *complete, self._partial = text.split("\n")
            self.log_tail.extend(complete)
            changes.log = True
        now = time.monotonic()
        if (changes.row and self.finished) or now - self._artifacts_at > self.ARTIFACT_EVERY:
            self._artifacts_at = now
            artifacts = store.artifacts(self.run_id)
            if artifacts != self.artifacts:
                self.artifacts = artifacts
                changes.artifacts = True
        return changes

    def log_text(self) -> str:
        lines = list(self.log_tail) + ([self._partial] if self._partial else [])
        return "\n".join(lines)

    def counts(self) -> dict[str, int]:
        return {k: s.n for k, s in self.series.items()}

    def elapsed(self) -> str:
        start = self.row.get("started_at")
        if not start:
            return "not started"
        seconds = (self.row.get("ended_at") or time.time()) - start
        return f"{seconds:.1f} s" if seconds < 120 else f"{seconds / 60:.1f} min"
