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
import unicodedata
from collections.abc import Sequence
from typing import Any

from .errors import InvalidInput

MAX_NAME_LENGTH = 255
# Names the job notebook binds itself; a parameter with one of these names would break it.
RESERVED_PARAMS = frozenset({"mlops", "jupyter_mlops", "get_ipython", "In", "Out"})


def check_name(name: Any, what: str = "run name") -> str:
    """A run, experiment or sweep name: text without control characters, normalised (NFC)
    and stripped, so that what is stored can always be looked up as typed."""
    if not isinstance(name, str):
        raise InvalidInput(f"{what} must be text, got {type(name).__name__} {name!r}")
    clean = unicodedata.normalize("NFC", name).strip()
    if not clean:
        raise InvalidInput(f"{what} must not be empty")
    if len(clean) > MAX_NAME_LENGTH:
        raise InvalidInput(f"{what} {clean[:40]!r}... is {len(clean)} characters; "
                           f"the limit is {MAX_NAME_LENGTH}")
    bad = [c for c in clean if unicodedata.category(c) in ("Cc", "Cf")]
    if bad:
        raise InvalidInput(f"{what} {clean!r} contains control or invisible characters "
                           f"({', '.join(f'U+{ord(c):04X}' for c in bad[:3])}); remove them")
    return clean


def check_param_name(name: Any) -> str:
    """A parameter becomes a variable of the job notebook: it must be a Python identifier
    that is not a keyword and not a name the job notebook itself uses."""
    if not isinstance(name, str) or not name.isidentifier() or keyword.iskeyword(name):
        raise InvalidInput(f"parameter {name!r} is not a name a variable can have: use "
                           "letters, digits and _ (not starting with a digit), not a Python "
                           "keyword")
    if name in RESERVED_PARAMS:
        raise InvalidInput(f"parameter name {name!r} is taken by the job notebook; "
                           "choose another")
    return name


def check_value(name: str, value: Any) -> Any:
    """A parameter value: what JSON holds (None, bool, int, float, str, lists, dicts with
    text keys). Anything else could not be stored, shown or injected faithfully."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value
    if isinstance(value, (list, tuple)):
        return [check_value(name, v) for v in value]
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            raise InvalidInput(f"parameter {name!r}: a dict's keys must be text")
        return {k: check_value(name, v) for k, v in value.items()}
    item = getattr(value, "item", None)  # NumPy scalars
    if callable(item) and not isinstance(value, (bytes, bytearray)):
        try:
            return check_value(name, item())
        except (TypeError, ValueError):
            pass
    raise InvalidInput(f"parameter {name!r} is a {type(value).__name__} ({value!r:.60}); "
                       "parameters hold numbers, text, True/False/None, lists and dicts")


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


def parse_value(text: str) -> Any:
    """A parameter value as papermill's CLI reads it: a Python literal, else the string."""
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError, TypeError):
        return text
    try:
        return check_value("", value)
    except InvalidInput:
        return text  # b'x', {1, 2}, 1j...: not a parameter value, so it is the text itself


def parse_assignments(items: Sequence[str] | None, flag: str) -> dict[str, Any]:
    """``name=value`` items (magics' ``-p lr=0.01``); values as ``parse_value`` reads them."""
    result: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        try:
            if not sep:
                raise InvalidInput("no '='")
            name = check_param_name(key.strip())
        except InvalidInput as exc:
            raise InvalidInput(f"{flag} takes name=value (e.g. {flag} lr=0.01), got {item!r}: "
                               f"{exc}") from None
        result[name] = parse_value(value)
    return result


def parse_pairs(pairs: Sequence[Sequence[str]] | None) -> dict[str, Any]:
    """``-p NAME VALUE`` pairs (the CLI's, as papermill's); the same rules as the magics."""
    return {check_param_name(name): parse_value(value) for name, value in pairs or []}


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
