"""SQL of the model registry and the dataset versions (tables of migration 0004).

Same contract as ``Store`` (whose sessions it uses): plain dicts out, one transaction per
call. Version numbers are allocated by incrementing ``last_version`` of the parent row inside
the transaction that inserts the version. On SQLite the write transaction is ``BEGIN
IMMEDIATE`` (one writer at a time); on PostgreSQL the ``UPDATE`` row lock (and ``SELECT ...
FOR UPDATE``) orders concurrent registrations of one name. Either way two processes
registering the same name get N+1 and N+2, and a number is never handed out twice, even
after its version was deleted.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ..errors import NotFound
from . import _schema as t
from ._store import Store, record_event

ModelRow = dict[str, Any]


class RegistryStore:
    """Reads and writes of ``models``, ``model_*``, ``datasets``, ``dataset_versions`` and
    ``run_inputs``."""

    def __init__(self, store: Store):
        self.store = store

    # -- shared ---------------------------------------------------------------------------

    @staticmethod
    def _lock_parent(conn: Connection, table: sa.Table, name: str, create: bool) -> int | None:
        """The id of the ``models``/``datasets`` row called ``name`` (created if asked),
        locked for the rest of the transaction on databases that lock rows."""
        query = sa.select(table.c.id).where(table.c.name == name).with_for_update()
        found = conn.execute(query).scalar()
        if found is not None or not create:
            return found
        try:
            with conn.begin_nested():  # a concurrent creator on PostgreSQL: use its row
                result = conn.execute(
                    table.insert().values(name=name, last_version=0, created_at=time.time())
                )
                return int(result.inserted_primary_key[0])
        except sa.exc.IntegrityError:
            return conn.execute(query).scalar_one()

    @staticmethod
    def _next_version(conn: Connection, table: sa.Table, parent_id: int) -> int:
        conn.execute(
            table.update()
            .where(table.c.id == parent_id)
            .values(last_version=table.c.last_version + 1)
        )
        return int(
            conn.execute(sa.select(table.c.last_version).where(table.c.id == parent_id)).scalar()
        )

    # -- models ---------------------------------------------------------------------------

    def _model_query(self) -> sa.Select:
        v, m = t.model_versions, t.models
        return sa.select(v, m.c.name).join(m, v.c.model_id == m.c.id)

    def _with_aliases(self, conn: Connection, rows: list[dict[str, Any]]) -> list[ModelRow]:
        if not rows:
            return rows
        a = t.model_aliases
        ids = [r["id"] for r in rows]
        found: dict[int, list[str]] = {}
        for version_id, alias in conn.execute(
            sa.select(a.c.version_id, a.c.alias).where(a.c.version_id.in_(ids)).order_by(a.c.alias)
        ):
            found.setdefault(version_id, []).append(alias)
        for row in rows:
            row["aliases"] = found.get(row["id"], [])
        return rows

    def add_model_version(
        self,
        name: str,
        fields: dict[str, Any],
        files: Sequence[tuple[str, int, str]],
        reuse: bool = False,
    ) -> tuple[ModelRow, bool]:
        """Insert version N+1 of ``name`` with its file list; returns (row, created).

        With ``reuse`` an existing version with the same content hash is returned instead
        (``created`` False) and nothing is written.
        """
        v = t.model_versions
        with self.store.write() as conn:
            model_id = self._lock_parent(conn, t.models, name, create=True)
            if reuse:
                same = conn.execute(
                    self._model_query()
                    .where(v.c.model_id == model_id, v.c.sha256 == fields["sha256"])
                    .order_by(v.c.version.desc())
                ).first()
                if same is not None:
                    return self._with_aliases(conn, [dict(same._mapping)])[0], False
            version = self._next_version(conn, t.models, model_id)
            result = conn.execute(
                v.insert().values(model_id=model_id, version=version, created_at=time.time(),
                                  **fields)
            )
            version_id = int(result.inserted_primary_key[0])
            if files:
                conn.execute(
                    t.model_files.insert(),
                    [{"version_id": version_id, "path": p, "size": s, "sha256": h}
                     for p, s, h in files],
                )
            row = conn.execute(self._model_query().where(v.c.id == version_id)).one()
            record_event(conn, "model.registered", name, version=version)
            return self._with_aliases(conn, [dict(row._mapping)])[0], True

    def model_versions(
        self,
        name: str | None = None,
        run_id: str | None = None,
    ) -> list[ModelRow]:
        """Versions, by name then newest first."""
        v, m = t.model_versions, t.models
        query = self._model_query().order_by(m.c.name, v.c.version.desc())
        if name is not None:
            query = query.where(m.c.name == name)
        if run_id is not None:
            query = query.where(v.c.run_id == run_id)
        with self.store.read() as conn:
            return self._with_aliases(conn, [dict(r._mapping) for r in conn.execute(query)])

    def model_version(self, name: str, ref: int | str) -> ModelRow | None:
        """Version ``ref`` of ``name``: a number, ``"latest"`` or an alias."""
        v, m, a = t.model_versions, t.models, t.model_aliases
        query = self._model_query().where(m.c.name == name)
        if isinstance(ref, int):
            query = query.where(v.c.version == ref)
        elif ref == "latest":
            query = query.order_by(v.c.version.desc()).limit(1)
        else:
            query = query.join(a, a.c.version_id == v.c.id).where(a.c.alias == ref)
        with self.store.read() as conn:
            row = conn.execute(query).first()
            return self._with_aliases(conn, [dict(row._mapping)])[0] if row else None

    def model_version_by_id(self, version_id: int) -> ModelRow | None:
        with self.store.read() as conn:
            row = conn.execute(
                self._model_query().where(t.model_versions.c.id == version_id)
            ).first()
            return self._with_aliases(conn, [dict(row._mapping)])[0] if row else None

    def model_names(self) -> list[str]:
        with self.store.read() as conn:
            return list(conn.execute(sa.select(t.models.c.name).order_by(t.models.c.name))
                        .scalars())

    def model_files(self, version_id: int) -> list[tuple[str, int, str]]:
        f = t.model_files
        query = sa.select(f.c.path, f.c.size, f.c.sha256).where(f.c.version_id == version_id)
        with self.store.read() as conn:
            return [tuple(r) for r in conn.execute(query.order_by(f.c.path))]

    def model_aliases(self, version_id: int) -> list[str]:
        a = t.model_aliases
        with self.store.read() as conn:
            return list(conn.execute(
                sa.select(a.c.alias).where(a.c.version_id == version_id).order_by(a.c.alias)
            ).scalars())

    def model_tags(self, version_id: int) -> dict[str, Any]:
        with self.store.read() as conn:
            tags = conn.execute(
                sa.select(t.model_versions.c.tags).where(t.model_versions.c.id == version_id)
            ).scalar()
        if tags is None:
            raise NotFound(f"model version {version_id} was deleted")
        return dict(tags)

    def update_model_tags(
        self, version_id: int, set_tags: dict[str, Any], remove: Sequence[str] = ()
    ) -> dict[str, Any]:
        v = t.model_versions
        with self.store.write() as conn:
            tags = conn.execute(sa.select(v.c.tags).where(v.c.id == version_id)
                                .with_for_update()).scalar()  # PostgreSQL: no lost update
            if tags is None:
                raise NotFound(f"model version {version_id} was deleted")
            merged = {k: x for k, x in {**tags, **set_tags}.items() if k not in remove}
            conn.execute(v.update().where(v.c.id == version_id).values(tags=merged))
            self._model_event(conn, "model.updated", version_id)
            return merged

    def set_model_alias(self, model_id: int, alias: str, version_id: int) -> int | None:
        """Point ``alias`` at ``version_id``; returns the version id it pointed to before."""
        a = t.model_aliases
        with self.store.write() as conn:
            # PostgreSQL: the model's row lock orders concurrent moves of its aliases.
            conn.execute(sa.select(t.models.c.id).where(t.models.c.id == model_id)
                         .with_for_update())
            before = conn.execute(
                sa.select(a.c.version_id).where(a.c.model_id == model_id, a.c.alias == alias)
            ).scalar()
            conn.execute(a.delete().where(a.c.model_id == model_id, a.c.alias == alias))
            conn.execute(a.insert().values(model_id=model_id, alias=alias,
                                           version_id=version_id, updated_at=time.time()))
            self._model_event(conn, "model.updated", version_id)
            return before

    def remove_model_alias(self, model_id: int, alias: str) -> bool:
        a = t.model_aliases
        with self.store.write() as conn:
            version_id = conn.execute(sa.select(a.c.version_id).where(
                a.c.model_id == model_id, a.c.alias == alias)).scalar()
            result = conn.execute(
                a.delete().where(a.c.model_id == model_id, a.c.alias == alias)
            )
            if version_id is not None:
                self._model_event(conn, "model.updated", version_id)
            return result.rowcount == 1

    def delete_model_version(self, version_id: int) -> bool:
        """Remove a version's rows (files, aliases, the version) in one transaction."""
        with self.store.write() as conn:
            self._model_event(conn, "model.deleted", version_id)
            conn.execute(t.model_aliases.delete().where(t.model_aliases.c.version_id == version_id))
            conn.execute(t.model_files.delete().where(t.model_files.c.version_id == version_id))
            result = conn.execute(
                t.model_versions.delete().where(t.model_versions.c.id == version_id)
            )
            return result.rowcount == 1

    def _model_event(self, conn: Connection, kind: str, version_id: int) -> None:
        row = conn.execute(sa.select(t.models.c.name, t.model_versions.c.version)
                           .join(t.models, t.model_versions.c.model_id == t.models.c.id)
                           .where(t.model_versions.c.id == version_id)).first()
        if row is not None:
            record_event(conn, kind, row[0], version=row[1])

    def model_storages(self) -> set[str]:
        with self.store.read() as conn:
            return set(conn.execute(sa.select(t.model_versions.c.storage)).scalars())

    # -- datasets -------------------------------------------------------------------------

    def _dataset_query(self) -> sa.Select:
        v, d = t.dataset_versions, t.datasets
        return sa.select(v, d.c.name).join(d, v.c.dataset_id == d.c.id)

    def add_dataset_version(
        self, name: str, fields: dict[str, Any]
    ) -> tuple[dict[str, Any], bool]:
        """Insert version N+1 of dataset ``name`` unless the newest version already has this
        content at this location; returns (row, created)."""
        v = t.dataset_versions
        with self.store.write() as conn:
            dataset_id = self._lock_parent(conn, t.datasets, name, create=True)
            latest = conn.execute(
                self._dataset_query()
                .where(v.c.dataset_id == dataset_id)
                .order_by(v.c.version.desc())
                .limit(1)
            ).first()
            if latest is not None:
                row = dict(latest._mapping)
                if (row["sha256"], row["uri"], row["storage"] is not None) == (
                    fields["sha256"], fields["uri"], fields["storage"] is not None
                ):
                    return row, False
            version = self._next_version(conn, t.datasets, dataset_id)
            result = conn.execute(
                v.insert().values(dataset_id=dataset_id, version=version,
                                  created_at=time.time(), **fields)
            )
            row = conn.execute(
                self._dataset_query().where(v.c.id == int(result.inserted_primary_key[0]))
            ).one()
            record_event(conn, "dataset.registered", name, version=version)
            return dict(row._mapping), True

    def dataset_versions(self, name: str | None = None) -> list[dict[str, Any]]:
        v, d = t.dataset_versions, t.datasets
        query = self._dataset_query().order_by(d.c.name, v.c.version.desc())
        if name is not None:
            query = query.where(d.c.name == name)
        with self.store.read() as conn:
            return [dict(r._mapping) for r in conn.execute(query)]

    def dataset_version(self, name: str, ref: int | str) -> dict[str, Any] | None:
        v, d = t.dataset_versions, t.datasets
        query = self._dataset_query().where(d.c.name == name)
        if isinstance(ref, int):
            query = query.where(v.c.version == ref)
        else:  # "latest"
            query = query.order_by(v.c.version.desc()).limit(1)
        with self.store.read() as conn:
            row = conn.execute(query).first()
        return dict(row._mapping) if row else None

    def dataset_names(self) -> list[str]:
        with self.store.read() as conn:
            return list(conn.execute(sa.select(t.datasets.c.name).order_by(t.datasets.c.name))
                        .scalars())

    def update_dataset_tags(self, version_id: int, set_tags: dict[str, Any]) -> dict[str, Any]:
        v = t.dataset_versions
        with self.store.write() as conn:
            tags = conn.execute(sa.select(v.c.tags).where(v.c.id == version_id)
                                .with_for_update()).scalar()  # PostgreSQL: no lost update
            merged = {**(tags or {}), **set_tags}
            conn.execute(v.update().where(v.c.id == version_id).values(tags=merged))
            row = conn.execute(sa.select(t.datasets.c.name, v.c.version)
                               .join(t.datasets, v.c.dataset_id == t.datasets.c.id)
                               .where(v.c.id == version_id)).first()
            if row is not None:
                record_event(conn, "dataset.updated", row[0], version=row[1])
            return merged

    def dataset_storages(self) -> set[str]:
        v = t.dataset_versions
        with self.store.read() as conn:
            return set(conn.execute(sa.select(v.c.storage).where(v.c.storage.isnot(None)))
                       .scalars())

    # -- run inputs -----------------------------------------------------------------------

    def record_run_input(self, run_id: str, dataset_version_id: int) -> None:
        """Note that a run read a dataset version (idempotent)."""
        r = t.run_inputs
        with self.store.write() as conn:
            Store.lock_run(conn, run_id)  # PostgreSQL: one recorder of the run at a time
            if conn.execute(sa.select(r.c.run_id).where(
                r.c.run_id == run_id, r.c.dataset_version_id == dataset_version_id
            )).first() is None:
                conn.execute(r.insert().values(run_id=run_id,
                                               dataset_version_id=dataset_version_id,
                                               created_at=time.time()))

    def run_inputs(self, run_id: str) -> list[dict[str, Any]]:
        """The dataset versions a run read, in the order it recorded them."""
        r = t.run_inputs
        query = (
            self._dataset_query()
            .join(r, r.c.dataset_version_id == t.dataset_versions.c.id)
            .where(r.c.run_id == run_id)
            .order_by(r.c.created_at)
        )
        with self.store.read() as conn:
            return [dict(row._mapping) for row in conn.execute(query)]

    def runs_reading(self, dataset_version_id: int) -> list[str]:
        r = t.run_inputs
        with self.store.read() as conn:
            return list(conn.execute(
                sa.select(r.c.run_id).where(r.c.dataset_version_id == dataset_version_id)
                .order_by(r.c.created_at)
            ).scalars())

    # -- sweeps (read only: the sweep controller owns them) --------------------------------

    def sweep(self, sweep_id: str) -> dict[str, Any] | None:
        s = t.sweeps
        query = sa.select(s, t.experiments.c.name.label("experiment")).join(
            t.experiments, s.c.experiment_id == t.experiments.c.id
        ).where(s.c.id == sweep_id)
        with self.store.read() as conn:
            row = conn.execute(query).first()
        return dict(row._mapping) if row else None

    def sweep_trial_count(self, sweep_id: str) -> int:
        with self.store.read() as conn:
            return int(conn.execute(
                sa.select(sa.func.count()).select_from(t.runs).where(t.runs.c.sweep_id == sweep_id)
            ).scalar())
