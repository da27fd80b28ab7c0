"""The rules for what users type: names, parameters, tags, datasets, timeouts.

One module, so ``-p`` means the same in the CLI (``-p lr 0.01``), in the magics
(``-p lr=0.01``) and in the Python API (``params={"lr": 0.01}``). Every refusal is an
``InvalidInput`` whose message says what was wrong and what to type instead; the CLI turns it
into exit code 2, the magics into a ``UsageError``.
"""

from __future__ import annotations

import ast
import keyword
import math
import re
import unicodedata
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .errors import InvalidInput

MAX_NAME_LENGTH = 255
# Names the job notebook binds or calls itself (``restore_carried(globals(), ...)``); a
# parameter with one of these names would break it.
RESERVED_PARAMS = frozenset({"mlops", "jupyter_mlops", "get_ipython", "In", "Out", "globals",
                             "restore_carried", "save_outputs"})
# Names IPython rebinds after every cell (``_``, ``_i3``, ``_oh``...): a parameter so named
# would silently change value in the middle of the job.
_IPYTHON_NAME = re.compile(r"_{1,3}|_i{1,3}|_i?\d+|_[iod]h|_exit_code")
# Unicode categories a name must not hold: controls (CR, LF, ESC...), format characters
# (bidi overrides, zero-width spaces and joiners), surrogates, private use, and the line and
# paragraph separators that split a row of a listing as a newline does.
_REFUSED_CATEGORIES = {"Cc": "a control character", "Cf": "an invisible formatting character",
                       "Cs": "a lone surrogate", "Co": "a private-use character",
                       "Zl": "a line separator", "Zp": "a paragraph separator"}


def normalize_name(name: str) -> str:
    """The form names are stored and looked up in: NFC, surrounding spaces removed.

    Lookups (``ws.get_run(" my run ")``, ``ws.runs(experiment=...)``) apply it too, so what
    was typed to create a name always finds it again."""
    return unicodedata.normalize("NFC", name).strip()


def check_name(name: Any, what: str = "run name") -> str:
    """A run, experiment or sweep name: text without control, bidi-override or zero-width
    characters, normalised (NFC) and stripped of surrounding spaces (``normalize_name``)."""
    if not isinstance(name, str):
        raise InvalidInput(f"{what} must be text, got {type(name).__name__} {name!r}")
    # Checked before stripping: a name typed with a trailing newline or tab is a mistake to
    # show, not something to repair silently.
    bad = [c for c in unicodedata.normalize("NFC", name)
           if unicodedata.category(c) in _REFUSED_CATEGORIES]
    if bad:
        first = _REFUSED_CATEGORIES[unicodedata.category(bad[0])]
        codes = ", ".join(dict.fromkeys(f"U+{ord(c):04X}" for c in bad))
        raise InvalidInput(f"{what} {name!r} contains {first} ({codes}); type the name "
                           "without it")
    clean = normalize_name(name)
    if not clean:
        raise InvalidInput(f"{what} must not be empty")
    if len(clean) > MAX_NAME_LENGTH:
        raise InvalidInput(f"{what} {clean[:40]!r}... is {len(clean)} characters; "
                           f"the limit is {MAX_NAME_LENGTH}")
    return clean


def check_param_name(name: Any) -> str:
    """A parameter becomes a variable of the job notebook: it must be a Python identifier
    that is not a keyword and not a name the job notebook or IPython binds itself."""
    if not isinstance(name, str) or not name.isidentifier():
        raise InvalidInput(f"parameter name {name!r} is not a name a variable can have: use "
                           "letters, digits and _, not starting with a digit (e.g. lr, "
                           "batch_size)")
    if keyword.iskeyword(name):
        raise InvalidInput(f"parameter name {name!r} is a Python keyword, which a variable "
                           f"cannot be named; use another name, e.g. {name}_")
    as_python = unicodedata.normalize("NFKC", name)
    if as_python != name:  # Python reads identifiers in NFKC: "ﬁ" binds the variable "fi"
        raise InvalidInput(f"parameter name {name!r} would become the variable {as_python!r} "
                           f"in Python; write {as_python!r}")
    if name in RESERVED_PARAMS or _IPYTHON_NAME.fullmatch(name) or (
            name.startswith("__") and name.endswith("__")):
        raise InvalidInput(f"parameter name {name!r} is taken by the job notebook or by "
                           f"IPython; choose another, e.g. {name.strip('_') or 'value'}_param")
    return name


_UNSUPPORTED_HINTS = {
    bytes: "write text instead ('...')",
    bytearray: "write text instead ('...')",
    set: "write a list instead ([...])",
    frozenset: "write a list instead ([...])",
    complex: "pass the real and imaginary parts as two numbers",
}


def check_value(name: str, value: Any) -> Any:
    """A parameter value: what JSON holds (None, bool, int, finite float, str, lists, dicts
    with text keys), returned as those exact types.

    Subclasses become their base type (``np.float64`` → ``float``, an ``IntEnum`` → ``int``),
    because the job notebook writes each value as Python source with ``repr`` and theirs
    does not read back (``np.float64(1.5)``). Anything else is refused: it could not be
    stored, shown or injected faithfully."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidInput(f"parameter {name!r} is {value!r}: parameters hold finite numbers "
                               "(as JSON does); pass None, or text such as 'inf' to convert in "
                               "the code")
        return float(value)
    if isinstance(value, (list, tuple)):
        return [check_value(name, v) for v in value]
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            raise InvalidInput(f"parameter {name!r}: a dict's keys must be text")
        return {str.__str__(k): check_value(name, v) for k, v in value.items()}
    item = getattr(value, "item", None)  # NumPy scalars
    if callable(item) and not isinstance(value, (bytes, bytearray)):
        try:
            return check_value(name, item())
        except (TypeError, ValueError):
            pass
    hint = next((h for t, h in _UNSUPPORTED_HINTS.items() if isinstance(value, t)), None)
    raise InvalidInput(f"parameter {name!r} is a {type(value).__name__} ({value!r:.60}); "
                       "parameters hold numbers, text, True/False/None, lists and dicts"
                       + (f": {hint}" if hint else ""))


def check_params(params: dict[str, Any]) -> dict[str, Any]:
    if not isinstance(params, dict):
        raise InvalidInput(f"params must be a dict of name -> value, got {type(params).__name__}")
    return {check_param_name(k): check_value(k, v) for k, v in params.items()}


def check_tags(tags: dict[str, Any]) -> dict[str, str]:
    """Tags are text labels: keys are names, values are kept as text."""
    if not isinstance(tags, dict):
        raise InvalidInput(f"tags must be a dict of key -> value, got {type(tags).__name__}")
    return {check_name(str(k), "tag key"): str(v) for k, v in tags.items()}


def check_timeout(timeout: Any) -> float | None:
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not (
            math.isfinite(timeout) and timeout > 0):
        raise InvalidInput(f"--timeout must be a positive number of seconds, got {timeout!r}")
    return float(timeout)


def parse_value(text: str, name: str = "") -> Any:
    """A parameter value typed on a command line: a Python literal (``0.01``, ``[1, 2]``,
    ``'text'``, ``None``), else the text itself, as papermill's CLI reads it.

    A literal of a kind parameters cannot hold (``b'x'``, ``{1, 2}``, ``1j``, ``1e999``) is
    refused rather than silently kept as text: the user clearly meant the literal."""
    try:
        value = ast.literal_eval(text.strip())
    except (ValueError, SyntaxError, MemoryError, RecursionError, TypeError):
        return text
    try:
        return check_value(name, value)
    except InvalidInput as exc:
        raise InvalidInput(f"{exc}; to pass it as text, write a quoted Python string such as "
                           f"{text!r}") from None


def parse_assignments(items: Sequence[str] | None, flag: str) -> dict[str, Any]:
    """``name=value`` items (magics' ``-p lr=0.01``); values as ``parse_value`` reads them."""
    pairs = []
    for item in items or []:
        key, sep, value = item.partition("=")
        try:
            if not sep:
                raise InvalidInput("no '='")
            name = check_param_name(key.strip())
        except InvalidInput as exc:
            raise InvalidInput(f"{flag} takes name=value (e.g. {flag} lr=0.01), got {item!r}: "
                               f"{exc}") from None
        pairs.append((name, value))
    return _unique(pairs, flag)


def parse_pairs(pairs: Sequence[Sequence[str]] | None, flag: str = "-p") -> dict[str, Any]:
    """``-p NAME VALUE`` pairs (the CLI's, as papermill's); the same rules as the magics."""
    return _unique([(check_param_name(name), value) for name, value in pairs or []], flag)


def _unique(pairs: list[tuple[str, str]], flag: str) -> dict[str, Any]:
    """Values parsed; a name given twice is refused (which one was meant?)."""
    result: dict[str, Any] = {}
    for name, text in pairs:
        if name in result:
            raise InvalidInput(f"{flag} {name} is given twice; give each parameter once")
        result[name] = parse_value(text, name)
    return result


def parse_tags(items: Sequence[str] | None) -> dict[str, str]:
    """``--tag key=value`` items; values are text."""
    tags = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise InvalidInput(f"--tag takes key=value, got {item!r}")
        tags[check_name(key.strip(), "tag key")] = value
    return tags


def parse_outputs(text: str | Sequence[str] | None) -> list[str]:
    """``--outputs a,b``: names of variables to bring back."""
    names = text.split(",") if isinstance(text, str) else list(text or [])
    names = [n.strip() for n in names if n.strip()]
    bad = [n for n in names if not n.isidentifier() or keyword.iskeyword(n)]
    if bad:
        raise InvalidInput(f"--outputs takes variable names separated by commas, got {bad}")
    return names


def parse_datasets(items: Sequence[str | dict[str, Any]]) -> list[dict[str, Any]]:
    """``--dataset name[:version]`` items as ``{"name", "version"}`` ("latest" by default)."""
    found = []
    for item in items:
        if isinstance(item, dict):
            name, version = item.get("name"), str(item.get("version") or "latest")
        else:
            name, _, version = str(item).partition(":")
            version = version or "latest"
        if not name or not (version.isdigit() or version == "latest"):
            raise InvalidInput(f"--dataset takes name or name:version, got {item!r}")
        found.append({"name": name, "version": int(version) if version.isdigit() else version})
    return found


def check_destination(dest: str | Path, folder: bool = False) -> Path:
    """A path to copy something to: each folder above it that exists (and ``dest`` itself,
    when it is to be a ``folder``) must be a folder, so that a download into
    ``a-file/sub/x`` says so instead of failing half way."""
    dest = Path(dest)
    if folder and dest.exists() and not dest.is_dir():
        raise InvalidInput(f"cannot download a folder to {dest}: it is a file, not a folder; "
                           "choose another destination (or move that file away)")
    for above in dest.parents:
        if above.is_dir():
            break
        if above.exists() or above.is_symlink():
            kind = ("a file" if above.is_file() else "a broken link" if above.is_symlink()
                    else "not a regular folder")
            raise InvalidInput(f"cannot download to {dest}: {above} is {kind}, not a folder; "
                               "choose a destination in a folder (or move that file away)")
    return dest
