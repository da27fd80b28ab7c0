"""``Endpoint``: a handle on one served model, reading its state from the store each time."""

from __future__ import annotations

import html
import json
import urllib.error
import urllib.request
from typing import TYPE_CHECKING, Any

from .._format import fmt_latency, status_colour
from ..errors import MlopsError

if TYPE_CHECKING:
    from ._workspace import Workspace


class ScoringError(MlopsError):
    """The endpoint answered a score request with an error status."""

    def __init__(self, status: int, message: str):
        super().__init__(f"the endpoint answered {status}: {message}")
        self.status = status


class Endpoint:
    """A deployed model: ``url``, ``key``, ``status``, ``score(data)``, ``logs()``,
    ``delete()``, ``widget()``. Status and figures are read fresh on each access; a server
    whose process is gone reads as ``lost``."""

    def __init__(self, workspace: Workspace, endpoint_id: str):
        self.workspace = workspace
        self.id = endpoint_id

    def _row(self) -> dict[str, Any]:
        return self.workspace.backend.endpoint_row(self.id)

    @property
    def name(self) -> str:
        return self._row()["name"]

    @property
    def status(self) -> str:
        return self._row()["status"]

    @property
    def url(self) -> str:
        return self._row()["url"]

    @property
    def scoring_url(self) -> str:
        return self.url + "/score"

    @property
    def model(self) -> str:
        row = self._row()
        return f"{row['model_name']}:{row['model_version']}"

    @property
    def key(self) -> str | None:
        """The key clients send as ``Authorization: Bearer KEY`` (readable by its owner
        only: the store keeps its hash); None when the endpoint has no auth."""
        from ..serving import endpoint_key

        return endpoint_key(self.workspace.backend, self.id)

    @property
    def error(self) -> str | None:
        return self._row()["error"]

    @property
    def stats(self) -> dict[str, Any]:
        """``requests``, ``errors`` and latency ``p50``/``p99`` (seconds), as last reported."""
        return self._row()["stats"] or {"requests": 0, "errors": 0, "p50": None, "p99": None}

    def wait(self, timeout: float = 300.0) -> Endpoint:
        """Block until the endpoint (its newest revision) serves; raises if it failed."""
        from ..serving import wait_served

        wait_served(self.workspace.backend, self.id, self._row()["revision"], timeout)
        return self

    def score(self, data: Any, timeout: float = 60.0) -> Any:
        """Send ``data`` to ``/score`` and return the decoded JSON answer. ``bytes`` go as
        ``application/octet-stream``, ``str`` as it is (JSON if it parses as JSON, else
        text), anything else as JSON."""
        if isinstance(data, bytes):
            body, kind = data, "application/octet-stream"
        elif isinstance(data, str):
            try:
                json.loads(data)
                kind = "application/json"
            except ValueError:
                kind = "text/plain"
            body = data.encode()
        else:
            body, kind = json.dumps(data).encode(), "application/json"
        headers = {"Content-Type": kind}
        key = self.key
        if key:
            headers["Authorization"] = f"Bearer {key}"
        request = urllib.request.Request(self.scoring_url, data=body, headers=headers,
                                         method="POST")
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            try:
                message = json.loads(exc.read()).get("error", exc.reason)
            except ValueError:
                message = str(exc.reason)
            raise ScoringError(exc.code, message) from None
        except urllib.error.URLError as exc:
            raise ScoringError(0, f"cannot reach {self.scoring_url} ({exc.reason}); "
                                  f"the endpoint is {self.status}") from None

    def logs(self, tail: int | None = None) -> str:
        """The endpoint's log: its server's messages and everything the entry script
        printed or raised (the last ``tail`` lines when given)."""
        lines = self.workspace.backend.endpoints.logs(self.id, limit=tail)
        return "\n".join(text for _, text, _ in lines)

    def delete(self) -> None:
        """Stop the server (requests in flight finish) and free its port; the record
        stays, ``stopped``, so its history can still be read."""
        from ..serving import stop

        stop(self.workspace.backend, self.id)

    def widget(self, **options: Any) -> Any:
        """A live ``EndpointWidget``: status, URL, requests, latency p50/p99, errors, log."""
        from ..widgets import EndpointWidget

        return EndpointWidget(self.workspace.backend, self.id, **options)

    def _ipython_display_(self) -> None:
        # In a notebook an endpoint shows as its live widget; in a terminal as one line.
        from IPython.display import display

        from ..widgets import in_kernel

        if in_kernel():
            display(self.widget())
        else:
            print(repr(self))

    def to_dict(self) -> dict[str, Any]:
        """The one JSON form of an endpoint (CLI, REST); never the key or its hash."""
        row = self._row()
        return {
            "id": row["id"], "name": row["name"], "status": row["status"],
            "model": f"{row['model_name']}:{row['model_version']}", "url": row["url"],
            "scoring_url": (row["url"] or "") + "/score", "auth": row["key_hash"] is not None,
            "entry": row["entry_name"], "revision": row["revision"],
            "served_revision": row["served_revision"], "config": {
                k: v for k, v in row["config"].items() if k not in ("folder", "model_info")},
            "stats": row["stats"], "error": row["error"], "host": row["host"],
            "pid": row["pid"], "created_at": row["created_at"],
            "updated_at": row["updated_at"],
        }

    def __repr__(self) -> str:
        row = self._row()
        return (f"<Endpoint {row['name']} {row['status']} {row['model_name']}:"
                f"{row['model_version']} {row['url']}>")

    def _repr_html_(self) -> str:
        row = self._row()
        stats = row["stats"] or {}
        latency = " / ".join(fmt_latency(stats.get(k)) for k in ("p50", "p99"))
        return (
            f"<div style='font-family:var(--jp-ui-font-family,sans-serif)'>"
            f"<b>{html.escape(row['name'])}</b> "
            f"<span style='color:{status_colour(row['status'])}'>{row['status']}</span> · "
            f"{html.escape(row['model_name'])}:{row['model_version']} · "
            f"<code>{html.escape((row['url'] or '') + '/score')}</code> · "
            f"{stats.get('requests', 0)} requests, {stats.get('errors', 0)} errors, "
            f"p50/p99 {latency}</div>")
