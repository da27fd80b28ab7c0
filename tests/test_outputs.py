"""Outputs of ``%%train --outputs`` are pickles: they are loaded only by name, only when they
match the sha256 recorded when the job stored them, and only from one's own runs."""

from __future__ import annotations

from pathlib import Path

import pytest
from IPython.core.error import UsageError

from jupyter_mlops._environment import current_user
from jupyter_mlops.errors import NotFound, WorkspaceError

# A pickle that, when loaded, creates the folder named by MARKER: "its code runs".
EVIL_MAKER = '''
import os, pickle

class Boom:
    def __reduce__(self):
        return (os.mkdir, (MARKER,))

EVIL = pickle.dumps(Boom())
'''


def evil_pickle(marker: Path) -> bytes:
    scope: dict = {"MARKER": str(marker)}
    exec(EVIL_MAKER, scope)
    return scope["EVIL"]


def stored_file(ws, run, path: str) -> Path:
    return Path(ws.artifacts.root) / "runs" / run.id / path


@pytest.fixture
def ip(ws_dir: Path):
    from IPython.testing.globalipapp import get_ipython

    shell = get_ipython()
    shell.run_line_magic("load_ext", "jupyter_mlops")
    saved = dict(shell.user_ns)
    yield shell
    shell.user_ns.clear()
    shell.user_ns.update(saved)


def test_outputs_by_name_hash_checked_and_only_from_own_runs(ws, tmp_path: Path) -> None:
    run = ws.submit("a = 1\nb = [2, 'two']", outputs=["a", "b"], name="outs").wait(timeout=180)
    assert run.info()["resources"]["owner"] == current_user()  # recorded at submission
    assert run.outputs() == {"a": 1, "b": [2, "two"]}
    assert run.outputs("a") == {"a": 1}
    assert run.outputs(["b"]) == {"b": [2, "two"]}
    with pytest.raises(NotFound, match=r"no output 'c' \(it has: a, b\)"):
        run.outputs(["a", "c"])

    # Swap a stored output for a pickle that runs code: refused before anything is loaded.
    marker = tmp_path / "code-ran"
    stored_file(ws, run, "returned/b.pkl").write_bytes(evil_pickle(marker))
    for names in (None, "b", ["a", "b"]):
        with pytest.raises(WorkspaceError, match=r"returned/b\.pkl .* does not match the sha256"):
            run.outputs(names)
    assert not marker.exists()
    assert run.outputs("a") == {"a": 1}  # only what is asked for is read

    # Another user's run (in a shared workspace): refused unless configured to trust them.
    ws.store.merge_run_json(run.id, "resources", {"owner": "someone-else"})
    with pytest.raises(WorkspaceError, match=r"submitted by 'someone-else'.*"
                                             r"trust_other_users_outputs = True"):
        run.outputs("a")
    ws.config.trust_other_users_outputs = True
    try:
        assert run.outputs("a") == {"a": 1}
    finally:
        ws.config.trust_other_users_outputs = False


def test_train_brings_back_only_the_names_asked_for(ip, ws, tmp_path: Path) -> None:
    marker = tmp_path / "code-ran"
    ip.user_ns.update(evil=evil_pickle(marker))
    # The job also stores an extra pickle under returned/ (with its true hash): it is not
    # among --outputs, so the notebook never loads it.
    run = ip.run_cell_magic(
        "train", "--wait --outputs a",
        "import io, jupyter_mlops as mlops\n"
        "from jupyter_mlops.store import Backend\n"
        "backend, me = Backend.open(), mlops.current_run().id\n"
        "size, sha = backend.artifacts.put_stream(me, 'returned/extra.pkl', io.BytesIO(evil))\n"
        "backend.store.record_artifact(me, 'returned/extra.pkl', size, sha)\n"
        "a = 41 + 1")
    assert run.status == "completed" and ip.user_ns["a"] == 42
    assert "extra" not in ip.user_ns and not marker.exists()


def test_train_refuses_a_changed_output(ip, ws, tmp_path: Path) -> None:
    marker = tmp_path / "code-ran"
    ip.user_ns.update(evil=evil_pickle(marker))
    # The job swaps its stored output after its hash was recorded (what another process
    # changing the artifact store would do).
    cell = (
        "import jupyter_mlops as mlops, jupyter_mlops.jobs as jobs, pathlib\n"
        "from jupyter_mlops.store import Backend\n"
        "real = jobs.save_outputs\n"
        "def swapping(namespace, names, *args, **kwargs):\n"
        "    real(namespace, names, *args, **kwargs)\n"
        "    root = pathlib.Path(Backend.open().artifacts.root)\n"
        "    path = root / 'runs' / mlops.current_run().id / 'returned' / 'b.pkl'\n"
        "    path.write_bytes(evil)\n"
        "jobs.save_outputs = swapping\n"
        "b = 'fine'")
    with pytest.raises(UsageError, match=r"outputs not brought back: .*does not match the sha256"):
        ip.run_cell_magic("train", "--wait --outputs b", cell)
    assert ip.user_ns["_run"].status == "completed"
    assert "b" not in ip.user_ns and not marker.exists()


def test_train_refuses_outputs_of_a_run_recorded_as_another_users(ip, ws) -> None:
    cell = ("import jupyter_mlops as mlops\n"
            "from jupyter_mlops.store import Backend\n"
            "Backend.open().store.merge_run_json(mlops.current_run().id, 'resources',\n"
            "                                    {'owner': 'someone-else'})\n"
            "c = 3")
    with pytest.raises(UsageError, match="submitted by 'someone-else'"):
        ip.run_cell_magic("train", "--wait --outputs c", cell)
    assert "c" not in ip.user_ns
