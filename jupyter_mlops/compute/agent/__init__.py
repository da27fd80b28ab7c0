"""The per-host agent of a workspace: warm job processes, handed runs over a Unix socket.

The agent is an optional part of the ``local`` target (``LocalTarget.warm``). The submitting
side is ``hand_off``; the agent's program is ``jupyter_mlops.jobs.agent`` (it adds the
jobs layer's reaper to ``Agent``).
"""

from __future__ import annotations

from ._client import hand_off, ping, request
from ._os import peer_uid, set_parent_death_signal, set_process_name
from ._paths import AgentPaths, AgentUnavailable
from ._server import ENV_AGENT_PID, ENV_PRELOAD_CODE, ENV_READY_FD, Agent

__all__ = [
    "ENV_AGENT_PID",
    "ENV_PRELOAD_CODE",
    "ENV_READY_FD",
    "Agent",
    "AgentPaths",
    "AgentUnavailable",
    "hand_off",
    "peer_uid",
    "ping",
    "request",
    "set_parent_death_signal",
    "set_process_name",
]
