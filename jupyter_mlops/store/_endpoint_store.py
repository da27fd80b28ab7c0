"""SQL of endpoints and their logs (tables of migration 0007); same contract as ``Store``."""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

import sqlalchemy as sa

from ..errors import Conflict, NotFound
from . import _schema as t
from ._store import Store, record_event

ENDPOINT_ACTIVE = ("starting", "ready")
ENDPOINT_STATUSES = ("starting", "ready", "failed", "lost", "stopped")


class EndpointStore:
    """Reads and writes of ``endpoints`` and ``endpoint_logs``."""

    def __init__(self, store: Store):
        self.store = store

    def create(self, endpoint_id: str, name: str, **fields: Any) -> None:
        """Record a new endpoint ``starting``; refused while another of that name is active."""
        now = time.time()
        self.store.stamp_heartbeat(fields)
        with self.store.write() as conn:
            self.store.lock_name(conn, "endpoint:" + name)  # PostgreSQL: one creator a name
            clash = conn.execute(sa.select(t.endpoints.c.id).where(
                t.endpoints.c.name == name,
                t.endpoints.c.status.in_(ENDPOINT_ACTIVE))).first()
            if clash is not None:
                raise Conflict(f"an endpoint named {name!r} is already active ({clash[0]})")
            conn.execute(t.endpoints.insert().values(
                id=endpoint_id, name=name, status="starting", revision=1, created_at=now,
                updated_at=now, **fields))
            record_event(conn, "endpoint.created", endpoint_id, status="starting", name=name)

    def update(self, endpoint_id: str, **fields: Any) -> None:
        fields.setdefault("updated_at", time.time())
        self.store.stamp_heartbeat(fields)
        with self.store.write() as conn:
            conn.execute(t.endpoints.update().where(t.endpoints.c.id == endpoint_id)
                         .values(**fields))

    def set_status(self, endpoint_id: str, status: str, *,
                   only_from: Iterable[str] = ENDPOINT_ACTIVE, **fields: Any) -> bool:
        """Move to ``status`` unless the endpoint already left ``only_from``."""
        self.store.stamp_heartbeat(fields)
        with self.store.write() as conn:
            result = conn.execute(
                t.endpoints.update()
                .where(t.endpoints.c.id == endpoint_id,
                       t.endpoints.c.status.in_(list(only_from)))
                .values(status=status, updated_at=time.time(), **fields))
            if result.rowcount == 1:
                record_event(conn, "endpoint.status", endpoint_id, status=status)
            return result.rowcount == 1

    def redeploy(self, endpoint_id: str, **fields: Any) -> int:
        """Ask the live server of an endpoint to swap to new content; returns the revision."""
        with self.store.write() as conn:
            row = conn.execute(sa.select(t.endpoints.c.revision, t.endpoints.c.status)
                               .where(t.endpoints.c.id == endpoint_id)
                               .with_for_update()).first()
            if row is None:
                raise NotFound(f"no endpoint with id {endpoint_id!r}")
            revision = row[0] + 1
            conn.execute(t.endpoints.update().where(t.endpoints.c.id == endpoint_id).values(
                revision=revision, updated_at=time.time(), **fields))
            return revision

    def request_stop(self, endpoint_id: str) -> None:
        with self.store.write() as conn:
            conn.execute(t.endpoints.update().where(
                t.endpoints.c.id == endpoint_id, t.endpoints.c.stop_requested_at.is_(None))
                .values(stop_requested_at=time.time()))

    def heartbeat(self, endpoint_id: str, stats: dict[str, Any] | None = None) -> dict[str, Any]:
        """Record that the server lives (and its request figures); returns the row, so the
        server learns of a stop request or a new revision in the same round trip."""
        values: dict[str, Any] = {"heartbeat_at": self.store.now()}
        if stats is not None:
            values["stats"] = stats
        with self.store.write() as conn:
            conn.execute(t.endpoints.update().where(t.endpoints.c.id == endpoint_id)
                         .values(**values))
            row = conn.execute(sa.select(t.endpoints)
                               .where(t.endpoints.c.id == endpoint_id)).first()
        if row is None:
            raise NotFound(f"no endpoint with id {endpoint_id!r}")
        return dict(row._mapping)

    def replica_stats(self, endpoint_id: str, replica: str, snapshot: dict[str, Any]
                      ) -> None:
        """Merge one replica's request figures into the endpoint's (Ray Serve: each replica
        reports its own); also its heartbeat. Totals are summed, latencies the worst."""
        fields: dict[str, Any] = {"heartbeat_at": time.time()}
        self.store.stamp_heartbeat(fields)
        with self.store.write() as conn:
            row = conn.execute(sa.select(t.endpoints.c.stats)
                               .where(t.endpoints.c.id == endpoint_id)
                               .with_for_update()).first()
            if row is None:
                return
            replicas = {**((row[0] or {}).get("replicas") or {}), replica: snapshot}
            latencies = {k: [s[k] for s in replicas.values() if s.get(k) is not None]
                         for k in ("p50", "p99")}
            stats = {"requests": sum(s.get("requests") or 0 for s in replicas.values()),
                     "errors": sum(s.get("errors") or 0 for s in replicas.values()),
                     **{k: max(v) if v else None for k, v in latencies.items()},
                     "workers": len(replicas), "replicas": replicas}
            conn.execute(t.endpoints.update().where(t.endpoints.c.id == endpoint_id)
                         .values(stats=stats, **fields))

    def get(self, endpoint_id: str) -> dict[str, Any] | None:
        with self.store.read() as conn:
            row = conn.execute(sa.select(t.endpoints)
                               .where(t.endpoints.c.id == endpoint_id)).first()
        return dict(row._mapping) if row else None

    def find(self, ref: str) -> list[dict[str, Any]]:
        """By id; else the newest endpoint of that name; else by id or name prefix."""
        return self.store._find_by_ref(sa.select(t.endpoints), t.endpoints, ref)

    def list(self, status: Iterable[str] | None = None) -> list[dict[str, Any]]:
        query = sa.select(t.endpoints).order_by(t.endpoints.c.created_at.desc())
        if status is not None:
            query = query.where(t.endpoints.c.status.in_(list(status)))
        with self.store.read() as conn:
            return [dict(r._mapping) for r in conn.execute(query)]

    def serving(self, model_name: str, version: int) -> list[dict[str, Any]]:
        """Active endpoints whose served (or about to be served) version is this one."""
        query = sa.select(t.endpoints).where(
            t.endpoints.c.model_name == model_name, t.endpoints.c.model_version == version,
            t.endpoints.c.status.in_(ENDPOINT_ACTIVE))
        with self.store.read() as conn:
            return [dict(r._mapping) for r in conn.execute(query)]

    def append_logs(self, endpoint_id: str, lines: Iterable[tuple[str, float]]) -> None:
        batch = [{"endpoint_id": endpoint_id, "text": text, "wall_time": wall}
                 for text, wall in lines]
        if batch:
            with self.store.write() as conn:
                conn.execute(t.endpoint_logs.insert(), batch)

    def logs(self, endpoint_id: str, after_id: int = 0, limit: int | None = None
             ) -> list[tuple[int, str, float]]:
        """Log lines in order, after ``after_id``; with ``limit``, the newest ``limit``."""
        lg = t.endpoint_logs
        query = sa.select(lg.c.id, lg.c.text, lg.c.wall_time).where(
            lg.c.endpoint_id == endpoint_id, lg.c.id > after_id)
        if limit:
            query = query.order_by(lg.c.id.desc()).limit(limit)
        else:
            query = query.order_by(lg.c.id)
        with self.store.read() as conn:
            rows = [tuple(r) for r in conn.execute(query)]
        return sorted(rows) if limit else rows
