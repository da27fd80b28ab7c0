"""A JupyterLab server and a headless Chromium for tests, and a few JupyterLab page actions.

Playwright's own browser download is not used: CI installs Debian's ``chromium`` and we drive
it through ``executable_path``. Everything a test starts here, it stops by PID.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path(os.environ.get("MLOPS_TEST_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--no-first-run",
]


@dataclass
class Lab:
    """A running ``jupyter lab``: where it listens and how to log in."""

    port: int
    token: str
    root: Path
    log: Path
    process: subprocess.Popen

    def url(self, path: str) -> str:
        sep = "&" if "?" in path else "?"
        return f"http://127.0.0.1:{self.port}/{path.lstrip('/')}{sep}token={self.token}"

    def log_tail(self, chars: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def jupyter_lab(root: Path, env: dict[str, str], timeout: float = 60) -> Iterator[Lab]:
    """Start ``jupyter lab`` on loopback with a random token; stop it (its PID only) at exit.

    Lab settings and workspaces live in the temp folder, so a developer's own layout or an
    earlier run can't change what the test sees; announcements and update checks are off (no
    network, no pop-up over the notebook).
    """
    port, token = free_port(), secrets.token_hex(16)
    state = root.parent / "lab-state"
    # No "get notified about Jupyter news?" toast over the notebook (nor its fetch).
    notification = state / "settings" / "@jupyterlab" / "apputils-extension"
    notification.mkdir(parents=True, exist_ok=True)
    (notification / "notification.jupyterlab-settings").write_text(
        '{"fetchNews": "false", "checkForUpdates": false}')
    log = root.parent / "jupyter-lab.log"
    cmd = [
        sys.executable, "-m", "jupyterlab", "--allow-root", "--no-browser",
        "--ip", "127.0.0.1", f"--port={port}", "--port-retries=0",
        f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
        f"--LabApp.user_settings_dir={state / 'settings'}",
        f"--LabApp.workspaces_dir={state / 'workspaces'}",
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
        "--LabApp.extension_manager=readonly",
    ]
    with log.open("wb") as out:
        process = subprocess.Popen(
            cmd, cwd=root, env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT,
        )
    lab = Lab(port, token, root, log, process)
    try:
        _wait_ready(lab, timeout)
        yield lab
    finally:
        process.terminate()  # Jupyter Server shuts its kernels down on SIGTERM
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def _wait_ready(lab: Lab, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if lab.process.poll() is not None:
            raise AssertionError(
                f"jupyter lab exited with code {lab.process.returncode}:\n{lab.log_tail()}")
        try:
            with urllib.request.urlopen(lab.url("api/status"), timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.2)
    raise AssertionError(f"jupyter lab did not answer within {timeout} s:\n{lab.log_tail()}")


@contextlib.contextmanager
def chromium_page(viewport: dict[str, int] | None = None) -> Iterator[Any]:
    """A Playwright page in headless Debian Chromium, with a throwaway profile."""
    if not CHROMIUM.exists():
        pytest.fail(
            f"Chromium not found at {CHROMIUM}: the browser test needs it. Install it with "
            "`apt-get install -y chromium` (CI's .ci/run does), or point MLOPS_TEST_CHROMIUM "
            "at a Chromium binary.", pytrace=False)
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail(
            "playwright is not installed: `pip install -e '.[test]'` installs it "
            "(the browser itself is Debian's chromium, not Playwright's download).",
            pytrace=False)
    with sync_playwright() as pw:
        # Playwright gives every launch a fresh temporary profile (and refuses --user-data-dir).
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport=viewport or {"width": 1280, "height": 1000})
            yield page
        finally:
            browser.close()
