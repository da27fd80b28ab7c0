"""The few Linux calls the agent needs that the standard library does not wrap."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import socket
import struct
import sys

PR_SET_PDEATHSIG = 1


def set_parent_death_signal(sig: int) -> bool:
    """Ask the kernel to send ``sig`` to this process when its parent dies (0 clears it).

    A warm process waiting for work must not outlive the agent that would give it work;
    one that has been given a run must outlive it. False where unsupported (not Linux).
    """
    if not sys.platform.startswith("linux"):
        return False
    return _libc().prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0) == 0


PR_SET_NAME = 15


def set_process_name(name: str) -> None:
    """Name this process for ``top`` and ``ps -o comm`` (15 bytes at most): a fork keeps its
    parent's command line, so the fork server's children would all look alike."""
    if sys.platform.startswith("linux"):
        _libc().prctl(PR_SET_NAME, name.encode()[:15], 0, 0, 0)


@functools.lru_cache(maxsize=1)
def _libc() -> ctypes.CDLL:
    """Found once per process (``find_library`` runs ``ldconfig -p``: milliseconds), and
    inherited by the fork server's children."""
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def peer_uid(conn: socket.socket) -> int | None:
    """The user id of the process at the other end of a Unix socket (``SO_PEERCRED``), or
    None where the platform cannot tell (then nobody is trusted)."""
    option = getattr(socket, "SO_PEERCRED", None)
    if option is None:
        return None
    _pid, uid, _gid = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, option,
                                                          struct.calcsize("3i")))
    return uid
