"""Keep a 2-second import stall out of our command-line and job processes.

``jsonschema`` (imported by nbformat, hence by papermill) optionally imports
``rfc3987_syntax`` to check the ``iri`` string format; that package compiles a Lark grammar
at import, which took 1.8 s of the 2.5 s papermill import on our machines. Notebook
validation never uses that format, so in processes we own (the CLI and the job runner —
never the user's kernel) we tell Python the module is absent and jsonschema skips it.
"""

from __future__ import annotations

import sys


def skip_slow_optional_imports() -> None:
    sys.modules.setdefault("rfc3987_syntax", None)  # type: ignore[arg-type]
