"""A throwaway PostgreSQL cluster for the tests: Debian's ``postgresql`` server binaries,
``initdb`` into a temporary folder, ``pg_ctl start`` on a free loopback port with its unix
socket in that folder; stopped and removed at the end of the session.

``initdb`` refuses to run as root, so as root the server runs as the ``postgres`` system
user (``runuser``) with the folder handed to it. Durability is switched off (fsync,
synchronous_commit): the cluster lives for one test session. Each test gets a database of
its own (``PostgresCluster.new_database``).
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from itertools import count
from pathlib import Path

PG_BIN_DIRS = [Path(f"/usr/lib/postgresql/{v}/bin") for v in (17, 16, 15, 14, 13)]


def pg_bin_dir() -> Path | None:
    """The folder of Debian's PostgreSQL server binaries (``initdb``, ``pg_ctl``), if any."""
    for folder in PG_BIN_DIRS:
        if (folder / "initdb").is_file() and (folder / "pg_ctl").is_file():
            return folder
    return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class PostgresCluster:
    """A running throwaway cluster; ``url(db)`` is a SQLAlchemy URL to one of its databases."""

    def __init__(self, bin_dir: Path):
        self.bin_dir = bin_dir
        self.root = Path(tempfile.mkdtemp(prefix="mlops-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.port = 0
        self._as_user: list[str] = []
        self._numbers = count(1)
        if os.geteuid() == 0:  # initdb refuses root: run the server as an unprivileged user
            user = pwd.getpwnam("postgres")
            os.chown(self.root, user.pw_uid, user.pw_gid)
            self._as_user = ["runuser", "-u", "postgres", "--"]

    def _run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*self._as_user, *args], capture_output=True, text=True,
                              timeout=timeout, cwd=self.root)

    def start(self) -> None:
        done = self._run(str(self.bin_dir / "initdb"), "-D", str(self.data), "-A", "trust",
                         "-U", "postgres", "-E", "UTF8", "--no-sync", "--locale=C.UTF-8")
        if done.returncode != 0:
            raise RuntimeError(f"initdb failed: {done.stderr.strip()}")
        for _attempt in range(5):  # a free port can be taken between the probe and the bind
            self.port = _free_port()
            options = (f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 "
                       "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
                       "-c max_connections=200")
            done = self._run(str(self.bin_dir / "pg_ctl"), "-D", str(self.data), "-l",
                             str(self.log), "-o", options, "-w", "-t", "120", "start")
            if done.returncode == 0:
                return
        raise RuntimeError(f"pg_ctl start failed: {done.stderr.strip()} "
                           f"{self.log.read_text() if self.log.exists() else ''}")

    def server_pid(self) -> int | None:
        pid_file = self.data / "postmaster.pid"
        try:
            return int(pid_file.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def stop(self) -> None:
        """Stop the server (pg_ctl; the postmaster's own pid if that fails) and remove it."""
        pid = self.server_pid()
        if pid is not None:
            done = self._run(str(self.bin_dir / "pg_ctl"), "-D", str(self.data), "-m",
                             "immediate", "-w", "-t", "60", "stop")
            if done.returncode != 0:
                with suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        shutil.rmtree(self.root, ignore_errors=True)

    def url(self, database: str = "postgres", password: str | None = None) -> str:
        auth = f"postgres:{password}" if password else "postgres"
        return f"postgresql+psycopg://{auth}@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        """Create an empty database and return its URL."""
        import psycopg

        name = f"ws_{os.getpid()}_{next(self._numbers)}"
        with psycopg.connect(host="127.0.0.1", port=self.port, user="postgres",
                             dbname="postgres", autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}" TEMPLATE template0')
        return self.url(name)


@contextmanager
def running_cluster() -> Iterator[PostgresCluster]:
    """A started cluster, stopped and removed on exit."""
    bin_dir = pg_bin_dir()
    if bin_dir is None:
        raise RuntimeError("PostgreSQL server binaries not found under /usr/lib/postgresql; "
                           "install them: apt-get install postgresql")
    cluster = PostgresCluster(bin_dir)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()

