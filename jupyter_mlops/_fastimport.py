"""Keep import stalls out of our command-line and job processes.

``jsonschema`` (imported by nbformat, hence by papermill) optionally imports
``rfc3987_syntax`` to check the ``iri`` string format; that package compiles a Lark grammar
at import, which took 1.8 s of the 2.5 s papermill import on our machines. Notebook
validation never uses that format, so in processes we own (the CLI, the job runner and the
sweep controller — never the user's kernel) we tell Python the module is absent and
jsonschema skips it.

jsonschema imports more format checkers the same way, which nbformat never uses either
(it validates without a format checker): ``rfc3986_validator`` compiles large regular
expressions (50-80 ms) and ``isoduration`` imports ``arrow`` (25-40 ms). They are skipped
only in the processes we start ourselves (job runner, sweep controller, ``jupyter mlops``),
recognised by their command line, where nothing else validates JSON formats: a user's
notebook or kernel that imports this package keeps them.
"""

from __future__ import annotations

import os
import sys

# Format checkers of jsonschema that nbformat never uses and that cost import time.
_UNUSED_FORMAT_CHECKERS = ("rfc3986_validator", "isoduration")
_OUR_MODULES = ("jupyter_mlops.jobs.runner", "jupyter_mlops.jobs.agent",
                "jupyter_mlops.sweeps.controller")


def _our_process() -> bool:
    """True in a job runner, a sweep controller or the ``jupyter-mlops`` command."""
    argv = getattr(sys, "orig_argv", sys.argv)  # as typed: argv[0] is "-m" during -m imports
    if any(module in argv for module in _OUR_MODULES):
        return True
    return any(os.path.basename(arg).startswith("jupyter-mlops") for arg in argv[:2])


def skip_slow_optional_imports() -> None:
    """In our own processes only, mark the slow optional format checkers as absent.

    A user's kernel that imports this package is left alone: what it can import never
    changes because of us.
    """
    if _our_process():
        for name in ("rfc3987_syntax", *_UNUSED_FORMAT_CHECKERS):
            sys.modules.setdefault(name, None)  # type: ignore[arg-type]
