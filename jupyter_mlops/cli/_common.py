"""What every CLI verb shares: the parser class, exit codes and the workspace to act on."""

from __future__ import annotations

import argparse
from typing import Any

EXIT_FAILED, EXIT_USAGE = 1, 2


class UsageError(Exception):
    """A mistake in the command line: message printed, exit code 2."""


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2, like every other usage error
        raise UsageError(f"{self.prog}: {message}")


def open_workspace() -> Any:
    """The workspace the command acts on (imported when a verb runs: ``--help`` stays fast)."""
    from ..api import workspace

    return workspace()
