"""How fast is ``mlops.log``? Logging N scalar points from a tight Python loop.

Measures, in one run and on this machine:

* jupyter-mlops — ns per ``mlops.log`` call inside the loop (median and mean over batches
  of 1,000 calls) and points/s *until durable*: from loop start until ``mlops.flush()``
  returns, with the rows counted in the database afterwards (any lost point is an error);
* MLflow (if installed) — ``mlflow.log_metric`` on a SQLite tracking URI, per call, on a
  small sample (it costs milliseconds a call), and ``MlflowClient.log_batch`` in batches
  of 1,000 metrics (points/s);
* W&B offline (if installed) — ``wandb.log`` per call and points/s until ``wandb.finish()``
  on a sample;
* raw ``sqlite3`` baselines — a WAL file with a table and index shaped like ours:
  ``executemany`` of one-row INSERTs in batches of 10,000 rows with a commit each, and
  the multi-row INSERT the store itself uses (249 rows a statement): the practical limit
  for the durable rate;
* a plain ``list.append`` loop — the floor for a per-call figure.

It ends with ratios and PASS/MISS against the targets of the issue: under 2 µs per
``mlops.log`` call and at least 300,000 points/s durable.

Then *concurrent writers* (issue 16): 8 processes (``--writers``) each log
``--writer-points`` points into one workspace at once, in its own run, on SQLite and on
PostgreSQL; points/s from the go signal until every run has ended (durable), and the rows
counted per run from the database afterwards: any lost point is an error. PostgreSQL is
``--postgres-url``, or else a throwaway local cluster (tests/_postgres.py: Debian's
``postgresql`` binaries). ``--concurrent-only`` runs just this part.

Measured on the project's 2-core machine while other work ran (load average 2.5-5),
PostgreSQL 15 local on loopback (fsync off: the throwaway cluster), metric rows by ``COPY``:

    --concurrent-only                        points     points/s   lost (rows counted)
    8 writers x 50,000  -> SQLite            400,000     187,163   0
    8 writers x 50,000  -> PostgreSQL        400,000      73,068   0
    8 writers x 200,000 -> SQLite          1,600,000     256,091   0
    8 writers x 200,000 -> PostgreSQL      1,600,000      88,903   0

Under heavier load (load average 6-9) the same 8 x 50,000 gave 55,000-73,000 (SQLite) and
28,000-35,000 (PostgreSQL) points/s, still 0 lost. SQLite's multi-row INSERTs into a local
file beat a client-server round trip per batch on one machine; PostgreSQL is what lets
writers on several machines share a workspace.

Run it on demand (it is not a test)::

    pip install -e '.[bench]'          # MLflow and W&B are optional
    python benchmarks/logging.py [--points N] [--sample S] [--batch-sample B]
"""

from __future__ import annotations

import os
import sys

# This file is called logging.py: drop its folder from the import path, or every
# ``import logging`` (SQLAlchemy, Alembic, MLflow...) would import this script. Put the
# checkout it belongs to first instead, so it measures this jupyter_mlops, whatever
# copy is installed.
_here = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [
    os.path.dirname(_here),
    *(p for p in sys.path if os.path.abspath(p or os.curdir) != _here),
]

import argparse  # noqa: E402
import contextlib  # noqa: E402
import gc  # noqa: E402
import importlib  # noqa: E402
import importlib.util  # noqa: E402
import io  # noqa: E402
import itertools  # noqa: E402
import platform  # noqa: E402
import sqlite3  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402
from time import perf_counter_ns  # noqa: E402
from typing import Any  # noqa: E402

BATCH = 1_000  # calls timed together; the per-call figure is the batch time / BATCH
TARGET_NS_PER_CALL = 2_000
TARGET_POINTS_PER_S = 300_000


@dataclass
class Result:
    """One line of the table."""

    name: str
    points: int
    median_ns: float | None = None  # per call
    mean_ns: float | None = None
    points_per_s: float | None = None
    note: str = ""
    skipped: str | None = None  # why there is no figure
    extra: dict[str, float] = field(default_factory=dict)


def _per_call(batch_ns: list[float]) -> tuple[float, float]:
    """Median and mean per-call ns from per-batch per-call figures."""
    return statistics.median(batch_ns), statistics.fmean(batch_ns)


@contextlib.contextmanager
def _tempdir(prefix: str) -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        yield Path(tmp)


# -- contenders ----------------------------------------------------------------------------


def bench_list_append(n: int) -> Result:
    """The floor: the same loop shape appending a tuple to a list."""
    points: list[tuple[str, int, float]] = []
    append = points.append
    batch_ns: list[float] = []
    for start in range(0, n, BATCH):
        end = min(start + BATCH, n)
        t0 = perf_counter_ns()
        for i in range(start, end):
            append(("loss", i, i * 0.5))
        batch_ns.append((perf_counter_ns() - t0) / (end - start))
    assert len(points) == n
    median, mean = _per_call(batch_ns)
    return Result("list.append (floor)", n, median, mean, note="no I/O at all")


RAW_RUN_ID = "0123456789abcdef0123456789abcdef"  # 32 characters, as our run ids


def _raw_metrics_table(path: Path) -> sqlite3.Connection:
    """A WAL SQLite file with a table and index shaped like the workspace's metrics."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")  # as the workspace store
    conn.execute(
        "CREATE TABLE metrics (id INTEGER PRIMARY KEY, run_id VARCHAR(32) NOT NULL, "
        "key VARCHAR(250) NOT NULL, step BIGINT NOT NULL, value FLOAT, "
        "wall_time FLOAT NOT NULL)"
    )
    conn.execute("CREATE INDEX ix_metrics_run_key ON metrics (run_id, key, id)")
    return conn


def bench_raw_sqlite(n: int, batch: int = 10_000) -> Result:
    """sqlite3 executemany, one row per statement, into a WAL file shaped like ours."""
    with _tempdir("bench-sqlite-") as tmp:
        conn = _raw_metrics_table(tmp / "raw.db")
        now = time.time()
        t0 = perf_counter_ns()
        for start in range(0, n, batch):
            end = min(start + batch, n)
            rows = [(RAW_RUN_ID, "loss", i, i * 0.5, now) for i in range(start, end)]
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(
                "INSERT INTO metrics (run_id, key, step, value, wall_time) VALUES (?, ?, ?, ?, ?)",
                rows,
            )
            conn.execute("COMMIT")
        elapsed = perf_counter_ns() - t0
        count = conn.execute("SELECT count(*) FROM metrics").fetchone()[0]
        conn.close()
    if count != n:
        raise SystemExit(f"raw sqlite3 stored {count} rows of {n}")
    return Result(
        "sqlite3 executemany (raw)",
        n,
        points_per_s=n / (elapsed / 1e9),
        note=f"WAL, 1 row/statement, {batch:,} rows/commit",
    )


def bench_raw_sqlite_multirow(n: int, batch: int = 50_000, per_statement: int = 249) -> Result:
    """sqlite3 multi-row INSERT (run id bound once, 249 rows a statement), as the store does."""
    values = ",".join(
        f"(?1,?{4 * j + 2},?{4 * j + 3},?{4 * j + 4},?{4 * j + 5})" for j in range(per_statement)
    )
    insert = f"INSERT INTO metrics (run_id, key, step, value, wall_time) VALUES {values}"
    with _tempdir("bench-sqlite-") as tmp:
        conn = _raw_metrics_table(tmp / "raw.db")
        now = time.time()
        t0 = perf_counter_ns()
        for start in range(0, n, batch):
            rows = [("loss", i, i * 0.5, now) for i in range(start, min(start + batch, n))]
            flat = list(itertools.chain.from_iterable(rows))
            full = len(rows) - len(rows) % per_statement
            width = 4 * per_statement
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(
                insert, [(RAW_RUN_ID, *flat[i : i + width]) for i in range(0, 4 * full, width)]
            )
            conn.executemany(  # the rest, one row a statement
                "INSERT INTO metrics (run_id, key, step, value, wall_time) VALUES (?, ?, ?, ?, ?)",
                [(RAW_RUN_ID, *row) for row in rows[full:]],
            )
            conn.execute("COMMIT")
        elapsed = perf_counter_ns() - t0
        count = conn.execute("SELECT count(*) FROM metrics").fetchone()[0]
        conn.close()
    if count != n:
        raise SystemExit(f"raw sqlite3 (multi-row) stored {count} rows of {n}")
    return Result(
        "sqlite3 multi-row INSERT (raw)",
        n,
        points_per_s=n / (elapsed / 1e9),
        note=f"WAL, {per_statement} rows/statement, {batch:,} rows/commit: practical limit",
    )


def bench_mlops(n: int) -> Result:
    """mlops.log in a tight loop inside start_run, then flush; rows counted afterwards."""
    with _tempdir("bench-mlops-") as tmp:
        os.environ["JUPYTER_MLOPS_WORKSPACE"] = str(tmp / "ws")
        import jupyter_mlops as mlops

        ws = mlops.workspace()
        database = ws.store.engine.url.database
        log = mlops.log
        batch_ns: list[float] = []
        with mlops.start_run("bench", experiment="bench") as run:
            t_start = perf_counter_ns()
            for start in range(0, n, BATCH):
                end = min(start + BATCH, n)
                t0 = perf_counter_ns()
                for i in range(start, end):
                    log("loss", i * 0.5, step=i)
                batch_ns.append((perf_counter_ns() - t0) / (end - start))
            t_loop = perf_counter_ns()
            mlops.flush()
            t_durable = perf_counter_ns()
            with contextlib.closing(sqlite3.connect(database)) as check:
                count, last_step, nulls = check.execute(
                    "SELECT count(*), max(step), sum(value IS NULL) FROM metrics "
                    "WHERE run_id = ? AND key = 'loss'",
                    (run.id,),
                ).fetchone()
        ws.store.close()
        del os.environ["JUPYTER_MLOPS_WORKSPACE"]
    if count != n or last_step != n - 1 or nulls:
        raise SystemExit(
            f"jupyter-mlops LOST POINTS: {count} rows of {n} in the database "
            f"(last step {last_step}, {nulls} NULL values)"
        )
    median, mean = _per_call(batch_ns)
    return Result(
        "jupyter-mlops mlops.log",
        n,
        median,
        mean,
        points_per_s=n / ((t_durable - t_start) / 1e9),
        note=f"durable: loop start → flush() returned, {count:,} rows counted",
        extra={"loop_s": (t_loop - t_start) / 1e9, "flush_s": (t_durable - t_loop) / 1e9},
    )


def bench_mlflow_log_metric(sample: int) -> Result:
    """mlflow.log_metric, one call per point, on a SQLite tracking store."""
    name = "mlflow.log_metric (sqlite)"
    mlflow, why = _optional("mlflow")
    if mlflow is None:
        return Result(name, 0, skipped=why)

    with _tempdir("bench-mlflow-") as tmp:
        mlflow.set_tracking_uri(f"sqlite:///{tmp / 'mlflow.db'}")
        with _quiet():
            mlflow.set_experiment("bench")  # creates the database: not timed
        per_call: list[float] = []
        with mlflow.start_run():
            t_start = perf_counter_ns()
            for i in range(sample):
                t0 = perf_counter_ns()
                mlflow.log_metric("loss", i * 0.5, step=i)
                per_call.append(perf_counter_ns() - t0)
            elapsed = perf_counter_ns() - t_start
    median, mean = _per_call(per_call)
    return Result(
        name,
        sample,
        median,
        mean,
        points_per_s=sample / (elapsed / 1e9),
        note=f"SAMPLE of {sample:,} points (each call is a transaction)",
    )


def bench_mlflow_log_batch(n: int, batch: int = 1_000) -> Result:
    """MlflowClient.log_batch with 1,000 Metric objects a call (MLflow's per-call maximum)."""
    name = f"MlflowClient.log_batch ({batch:,}/call)"
    mlflow, why = _optional("mlflow")
    if mlflow is None:
        return Result(name, 0, skipped=why)
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    with _tempdir("bench-mlflow-batch-") as tmp:
        mlflow.set_tracking_uri(f"sqlite:///{tmp / 'mlflow.db'}")
        with _quiet():
            mlflow.set_experiment("bench")
        client = MlflowClient()
        with mlflow.start_run() as run:
            run_id = run.info.run_id
            t_start = perf_counter_ns()
            for start in range(0, n, batch):
                now = int(time.time() * 1000)
                metrics = [
                    Metric("loss", i * 0.5, now, i) for i in range(start, min(start + batch, n))
                ]
                client.log_batch(run_id, metrics=metrics)
            elapsed = perf_counter_ns() - t_start
        stored = len(client.get_metric_history(run_id, "loss"))
    if stored != n:
        raise SystemExit(f"MLflow log_batch stored {stored} points of {n}")
    return Result(
        name,
        n,
        points_per_s=n / (elapsed / 1e9),
        note=f"Metric objects built in the loop; {stored:,} points read back",
    )


def bench_wandb(sample: int) -> Result:
    """wandb.log in offline mode, one call per point, then wandb.finish()."""
    name = "wandb.log (offline)"
    os.environ["WANDB_MODE"] = "offline"
    os.environ.setdefault("WANDB_SILENT", "true")
    wandb, why = _optional("wandb")
    if wandb is None:
        return Result(name, 0, skipped=why)

    with _tempdir("bench-wandb-") as tmp:
        try:
            with _quiet():
                wandb_run = wandb.init(
                    mode="offline", dir=str(tmp), project="bench", settings=_wandb_settings()
                )
        except Exception as exc:  # any failure only skips this contender
            return Result(name, 0, skipped=f"wandb.init failed: {exc}")
        batch_ns: list[float] = []
        t_start = perf_counter_ns()
        for start in range(0, sample, BATCH):
            end = min(start + BATCH, sample)
            t0 = perf_counter_ns()
            for i in range(start, end):
                wandb_run.log({"loss": i * 0.5}, step=i)
            batch_ns.append((perf_counter_ns() - t0) / (end - start))
        with _quiet():
            wandb_run.finish()
        elapsed = perf_counter_ns() - t_start
    median, mean = _per_call(batch_ns)
    return Result(
        name,
        sample,
        median,
        mean,
        points_per_s=sample / (elapsed / 1e9),
        note=f"SAMPLE of {sample:,} points; rate until wandb.finish() returned",
    )


def _wandb_settings() -> object:
    import wandb

    # No system metrics, code or git capture: measure logging only.
    return wandb.Settings(x_disable_stats=True, x_disable_meta=True, console="off", save_code=False)


def _optional(module: str) -> tuple[Any, str]:
    """``(module, "")`` if it imports, else ``(None, why not)``."""
    if importlib.util.find_spec(module) is None:
        return None, "not installed"
    try:
        with _quiet():
            return importlib.import_module(module), ""
    except Exception as exc:  # a broken install only skips this contender
        return None, f"installed but cannot be imported: {exc}"


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence the chatter of third-party set-up calls (their warnings are not figures)."""
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        yield


# -- report --------------------------------------------------------------------------------


def _ns(value: float | None) -> str:
    if value is None:
        return "—"
    if value >= 1e6:
        return f"{value / 1e6:,.2f} ms"
    if value >= 1e3:
        return f"{value / 1e3:,.2f} µs"
    return f"{value:,.0f} ns"


def _rate(value: float | None) -> str:
    return "—" if value is None else f"{value:,.0f}"


WRITER = """
import sys
import jupyter_mlops as mlops
n, number = int(sys.argv[1]), sys.argv[2]
mlops.workspace()  # opened (and migrated) before the go signal
print("ready", flush=True)
sys.stdin.readline()
with mlops.start_run(f"writer-{number}", experiment="concurrent-writers") as run:
    log = mlops.log
    for i in range(n):
        log("loss", i * 0.5, step=i)
print(run.id, flush=True)  # after the run ended: its points are in the database
"""


def bench_concurrent_writers(label: str, writers: int, n: int, database_url: str | None
                             ) -> Result:
    """``writers`` processes log ``n`` points each into one workspace at once."""
    import subprocess

    import sqlalchemy as sa

    name = f"{writers} writers -> {label}"
    total = writers * n
    with _tempdir("bench-writers-") as tmp:
        env = {**os.environ, "JUPYTER_MLOPS_WORKSPACE": str(tmp / "ws"),
               "PYTHONPATH": os.path.dirname(_here)}
        env.pop("JUPYTER_MLOPS_DATABASE_URL", None)
        if database_url:
            env["JUPYTER_MLOPS_DATABASE_URL"] = database_url
        # One process migrates first, so the writers time logging, not schema creation.
        subprocess.run([sys.executable, "-c", "import jupyter_mlops as m; m.workspace()"],
                       env=env, check=True, timeout=300)
        procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(n), str(k)], env=env,
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
                 for k in range(writers)]
        try:
            for proc in procs:
                assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
            t0 = perf_counter_ns()
            for proc in procs:
                assert proc.stdin is not None
                proc.stdin.write("go\n")
                proc.stdin.flush()
            run_ids = [proc.stdout.readline().strip() for proc in procs if proc.stdout]
            elapsed = (perf_counter_ns() - t0) / 1e9
            for proc in procs:
                proc.wait(timeout=300)
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
        url = database_url or f"sqlite:///{tmp / 'ws' / 'mlops.db'}"
        engine = sa.create_engine(url)
        with engine.connect() as conn:
            counted = {run_id: conn.execute(sa.text(
                "SELECT count(*), max(step), sum(CASE WHEN value IS NULL THEN 1 ELSE 0 END) "
                "FROM metrics WHERE run_id = :r AND key = 'loss'"), {"r": run_id}).one()
                for run_id in run_ids}
            statuses = {run_id: conn.execute(sa.text(
                "SELECT status FROM runs WHERE id = :r"), {"r": run_id}).scalar()
                for run_id in run_ids}
        engine.dispose()
    stored = sum(int(count) for count, _, _ in counted.values())
    bad = [run_id for run_id, (count, last, nulls) in counted.items()
           if count != n or last != n - 1 or nulls or statuses[run_id] != "completed"]
    if len(run_ids) != writers or bad or stored != total:
        raise SystemExit(f"{name} LOST POINTS: {stored:,} rows of {total:,} "
                         f"(runs short or not completed: {bad}, statuses {statuses})")
    return Result(name, total, points_per_s=total / elapsed,
                  note=f"{stored:,} rows counted, 0 lost, {elapsed:.1f} s go -> all ended")


@contextlib.contextmanager
def _postgres_url(given: str | None) -> Iterator[str | None]:
    """``given``, or a throwaway local PostgreSQL cluster's database (None: none here)."""
    if given:
        yield given
        return
    sys.path.insert(0, os.path.dirname(_here))
    from tests._postgres import pg_bin_dir, running_cluster

    if pg_bin_dir() is None:
        yield None
        return
    with running_cluster() as cluster:
        yield cluster.new_database()


def concurrent_results(writers: int, n: int, postgres_url: str | None) -> list[Result]:
    results = [bench_concurrent_writers("SQLite", writers, n, None)]
    with _postgres_url(postgres_url) as url:
        if url is None:
            results.append(Result(f"{writers} writers -> PostgreSQL", 0,
                                  skipped="no PostgreSQL: pass --postgres-url or "
                                          "apt-get install postgresql"))
        else:
            results.append(bench_concurrent_writers("PostgreSQL", writers, n, url))
    return results


def print_table(results: list[Result]) -> None:
    header = ("contender", "points", "median/call", "mean/call", "points/s", "note")
    rows = [
        (
            r.name,
            f"{r.points:,}" if r.points else "—",
            _ns(r.median_ns),
            _ns(r.mean_ns),
            _rate(r.points_per_s),
            r.skipped or r.note,
        )
        for r in results
    ]
    widths = [max(len(row[c]) for row in [header, *rows]) for c in range(len(header))]
    right = {1, 2, 3, 4}

    def line(cells: tuple[str, ...]) -> str:
        return "  ".join(
            cell.rjust(w) if c in right else cell.ljust(w)
            for c, (cell, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    print(line(header))
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print(line(row))


def print_ratios(by_name: dict[str, Result]) -> None:
    mlops = by_name["jupyter-mlops mlops.log"]
    print()
    print("Ratios")
    assert mlops.median_ns is not None and mlops.points_per_s is not None
    floor = by_name["list.append (floor)"]
    if floor.median_ns:
        ratio = mlops.median_ns / floor.median_ns
        print(f"  mlops.log per call costs {ratio:,.1f}x a list.append")
    for name, label in (
        ("mlflow.log_metric (sqlite)", "mlflow.log_metric"),
        ("wandb.log (offline)", "wandb.log (offline)"),
    ):
        other = by_name.get(name)
        if other and other.median_ns:
            print(
                f"  mlops.log per call is {other.median_ns / mlops.median_ns:,.0f}x faster "
                f"than {label} (median)"
            )
    for name in by_name:
        other = by_name[name]
        if name.startswith("MlflowClient.log_batch") and other.points_per_s:
            print(
                f"  durable rate is {mlops.points_per_s / other.points_per_s:,.1f}x "
                f"MlflowClient.log_batch's"
            )
    for name in ("sqlite3 executemany (raw)", "sqlite3 multi-row INSERT (raw)"):
        raw = by_name[name]
        if raw.points_per_s:
            print(
                f"  durable rate is {100 * mlops.points_per_s / raw.points_per_s:.0f}% of "
                f"{name.replace(' (raw)', '')} (raw)"
            )
    loop_s, flush_s = mlops.extra["loop_s"], mlops.extra["flush_s"]
    print(f"  (jupyter-mlops: loop {loop_s:.2f} s, then flush() waited {flush_s:.2f} s)")

    print()
    print("Targets (issue)")
    ok_call = mlops.median_ns < TARGET_NS_PER_CALL
    ok_rate = mlops.points_per_s >= TARGET_POINTS_PER_S
    print(
        f"  {'PASS' if ok_call else 'MISS'}  mlops.log per call  {_ns(mlops.median_ns)} median "
        f"(mean {_ns(mlops.mean_ns)})  target < {_ns(TARGET_NS_PER_CALL)}"
    )
    print(
        f"  {'PASS' if ok_rate else 'MISS'}  durable rate        {_rate(mlops.points_per_s)} "
        f"points/s  target ≥ {TARGET_POINTS_PER_S:,}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--points", type=int, default=1_000_000, help="N points (1,000,000)")
    parser.add_argument(
        "--sample",
        type=int,
        default=2_000,
        help="points for mlflow.log_metric, ~5 ms a call (2,000); wandb.log logs 10x this",
    )
    parser.add_argument(
        "--batch-sample",
        type=int,
        default=200_000,
        help="points for MlflowClient.log_batch, at most N (200,000)",
    )
    parser.add_argument("--writers", type=int, default=8,
                        help="concurrent writer processes (8)")
    parser.add_argument("--writer-points", type=int, default=50_000,
                        help="points each concurrent writer logs (50,000)")
    parser.add_argument("--postgres-url", default=None,
                        help="PostgreSQL for the concurrent writers (default: a throwaway "
                             "local cluster)")
    parser.add_argument("--concurrent-only", action="store_true",
                        help="measure only the concurrent writers")
    args = parser.parse_args(argv)
    if args.concurrent_only:
        print(f"{args.writers} concurrent writer processes x {args.writer_points:,} points "
              f"- {os.cpu_count()} CPUs")
        if hasattr(os, "getloadavg"):
            print("load average before: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
        print_table(concurrent_results(args.writers, args.writer_points, args.postgres_url))
        return 0
    n = args.points
    if n < 1 or args.sample < 1 or args.batch_sample < 1:
        parser.error("counts must be positive")

    print(
        f"Logging {n:,} scalar points — Python {platform.python_version()}, "
        f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.platform(terse=True)}"
    )
    if hasattr(os, "getloadavg"):  # figures from a busy machine are lower: say so
        print("load average before: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
    steps = [
        ("list.append", lambda: bench_list_append(n)),
        ("raw sqlite3 executemany", lambda: bench_raw_sqlite(n)),
        ("raw sqlite3 multi-row INSERT", lambda: bench_raw_sqlite_multirow(n)),
        ("jupyter-mlops", lambda: bench_mlops(n)),
        ("mlflow.log_metric", lambda: bench_mlflow_log_metric(min(args.sample, n))),
        ("mlflow log_batch", lambda: bench_mlflow_log_batch(min(args.batch_sample, n))),
        ("wandb", lambda: bench_wandb(min(10 * args.sample, n))),
    ]
    results: list[Result] = []
    for label, step in steps:
        print(f"  measuring {label}...", file=sys.stderr, flush=True)
        gc.collect()
        results.append(step())
    print("  measuring concurrent writers...", file=sys.stderr, flush=True)
    results += concurrent_results(args.writers, args.writer_points, args.postgres_url)
    print()
    print_table(results)
    by_name = {r.name: r for r in results}
    print_ratios(by_name)
    mlops = by_name["jupyter-mlops mlops.log"]
    assert mlops.median_ns is not None and mlops.points_per_s is not None
    met = mlops.median_ns < TARGET_NS_PER_CALL and mlops.points_per_s >= TARGET_POINTS_PER_S
    return 0 if met else 1  # a MISS is a failure for scripts and CI that run this


if __name__ == "__main__":
    sys.exit(main())
