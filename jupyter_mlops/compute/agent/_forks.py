"""The agent's side of the fork server: ask it for warm job processes, and watch them.

The fork server (``jupyter_mlops.jobs.runner --forkserver``, see ``jobs._forkserver``) is
a child of the agent that has done a job's imports once and then only forks. The two talk
over a ``SOCK_SEQPACKET`` socket pair: the agent sends one JSON request with the new
process's stdin, ready pipe and log as file descriptors (``SCM_RIGHTS``); the server forks
and answers with the pid. A forked process is the server's child, not ours: ``Forked``
watches it by pid and start time (psutil), as ``subprocess.Popen`` would by ``waitpid``.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from typing import Any

ENV_FORK_SOCKET = "JUPYTER_MLOPS_FORK_SOCKET"  # the fork server's end of the socket pair
FORK_TIMEOUT = 10.0  # seconds a fork request may take once the server said it is up


class PolledProcess:
    """``Popen.wait`` for a process known only by ``poll()`` (not started by ``Popen``)."""

    returncode: int | None

    def poll(self) -> int | None:
        raise NotImplementedError

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired("process", timeout or 0.0)
            time.sleep(0.01)
        return self.returncode  # type: ignore[return-value]


class Forked(PolledProcess):
    """A warm job process the fork server started: the part of ``Popen`` the agent uses."""

    def __init__(self, pid: int, stdin: Any):
        import psutil

        self.pid, self.stdin = pid, stdin
        self.returncode: int | None = None
        try:
            self._process: Any = psutil.Process(pid)
        except psutil.NoSuchProcess:
            self._process, self.returncode = None, -1

    def poll(self) -> int | None:
        """None while it runs; -1 once it is gone (its exit code went to the fork server)."""
        import psutil

        if self.returncode is None:
            try:
                alive = (self._process.is_running()
                         and self._process.status() != psutil.STATUS_ZOMBIE)
            except psutil.Error:
                alive = False
            if not alive:
                self.returncode = -1
        return self.returncode


class ForkServer:
    """The agent's handle on its fork server process."""

    def __init__(self, argv: list[str], env: dict[str, str], cwd: str, log: Any):
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self.process = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True, close_fds=True, pass_fds=(theirs.fileno(),),
                env={**env, ENV_FORK_SOCKET: str(theirs.fileno())}, cwd=cwd)
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        self.socket = ours
        self.up = False  # set once the server says its imports are done
        self.broken: str | None = None

    def fileno(self) -> int:
        return self.socket.fileno()

    def read_up(self) -> None:
        """Called when the socket is readable before the server is up: its "up" message, or
        the end of the socket (it died while importing)."""
        try:
            data = self.socket.recv(4096)
        except OSError as exc:
            data, self.broken = b"", str(exc)
        if data.startswith(b"up"):
            self.up = True
        elif data.startswith(b"no:"):  # it found forking unsafe (threads, a CUDA context)
            self.broken = f"the fork server will not fork: {data[3:].decode().strip()}"
        else:
            self.broken = self.broken or "the fork server exited while importing"

    def usable(self) -> bool:
        return self.up and self.broken is None and self.process.poll() is None

    def fork(self, cuda: str, stdin_read: int, ready_write: int, log: int) -> int:
        """A new warm job process for ``CUDA_VISIBLE_DEVICES=cuda``; returns its pid.

        Raises ``OSError`` when the server does not answer (it is then not asked again)."""
        try:
            self.socket.settimeout(FORK_TIMEOUT)
            socket.send_fds(self.socket, [json.dumps({"cuda": cuda}).encode()],
                            [stdin_read, ready_write, log])
            answer = json.loads(self.socket.recv(4096) or b"{}")
        except (OSError, ValueError) as exc:
            self.broken = f"the fork server did not answer: {exc}"
            raise OSError(self.broken) from None
        finally:
            with contextlib.suppress(OSError):
                self.socket.settimeout(None)
        if "pid" not in answer:
            self.broken = f"the fork server refused: {answer.get('error', answer)}"
            raise OSError(self.broken)
        return int(answer["pid"])

    def close(self) -> None:
        """Closing the socket ends the server (it exits at the end of its socket); the
        processes it forked that still wait for a run follow it (parent-death signal)."""
        with contextlib.suppress(OSError):
            self.socket.close()
        try:
            self.process.wait(5.0)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def fork_supported() -> bool:
    return sys.platform.startswith("linux") and hasattr(socket, "send_fds") and hasattr(
        os, "fork")
