"""The per-host agent (warm starts): its life, its refusals, and runs through warm kernels.

Real agents, warm job processes and kernels; every wait is on a condition with a generous
bound. Each test stops the agents it started and checks nothing of theirs is left.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import psutil
import pytest

from jupyter_mlops.compute.agent import AgentPaths, ping, request

from .conftest import wait_until

WAIT_FLAG = textwrap.dedent("""\
    import os, time, pathlib
    print("started", os.getpid(), flush=True)
    while not pathlib.Path({flag!r}).exists():
        time.sleep(0.05)
    print("done")
""")


def _agent_pids(paths: AgentPaths) -> list[int]:
    log = paths.log.read_text() if paths.log.exists() else ""
    return [int(p) for p in re.findall(r"^agent (\d+) serving", log, re.M)]


def _warm_pids(paths: AgentPaths) -> list[int]:
    log = paths.log.read_text() if paths.log.exists() else ""
    return [int(p) for p in re.findall(r"^warm job process (\d+) ready", log, re.M)]


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _family(pid: int) -> list[int]:
    assert pid is not None  # psutil.Process(None) would be this very process
    try:
        root = psutil.Process(pid)
        return [pid, *(c.pid for c in root.children(recursive=True))]
    except psutil.NoSuchProcess:
        return []


@pytest.fixture
def warm(ws_dir: Path, monkeypatch: pytest.MonkeyPatch):
    """Warm starts on, in a fresh workspace; afterwards every agent (and what it started)
    is stopped and checked gone."""
    monkeypatch.setenv("JUPYTER_MLOPS_WARM", "1")
    monkeypatch.setenv("JUPYTER_MLOPS_AGENT_IDLE", "120")
    monkeypatch.setenv("JUPYTER_MLOPS_CPU_SLOTS", "1")
    monkeypatch.delenv("JUPYTER_MLOPS_GPUS", raising=False)
    monkeypatch.delenv("JUPYTER_MLOPS_PRELOAD", raising=False)
    # A runtime folder of its own (short: socket paths are limited to 107 bytes), so that
    # opening it up in one test never touches another's; others may pass through it.
    runtime = Path(tempfile.mkdtemp(prefix="mlops-rt-"))
    runtime.chmod(0o711)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    ws_dir.mkdir(parents=True, exist_ok=True)
    # The workspace exists (migrated) before any submitter: these tests are about the agent,
    # not about two processes creating one database while the machine is loaded.
    from jupyter_mlops.store import Backend

    Backend.open(ws_dir).store.close()
    paths = AgentPaths.for_workspace(ws_dir)
    yield paths
    family = [p for pid in _agent_pids(paths) for p in _family(pid)]
    if ping(paths) is not None:
        request(paths.socket, {"op": "stop"})
    for pid in _agent_pids(paths):
        try:
            psutil.Process(pid).wait(timeout=30)
        except psutil.NoSuchProcess:
            pass
        except psutil.TimeoutExpired:
            os.kill(pid, signal.SIGKILL)
    # A kernel whose warm process was killed mid-boot exits by itself within a second or
    # two (ipykernel watches its parent): wait for that, then check.
    with contextlib.suppress(AssertionError):
        wait_until(lambda: all(_gone(p) for p in family), 30, "the agent's processes to end")
    leftover = [p for p in family if not _gone(p)]
    for pid in leftover:  # never leave them to the rest of the suite, then fail
        with contextlib.suppress(psutil.NoSuchProcess):
            psutil.Process(pid).kill()
    shutil.rmtree(runtime, ignore_errors=True)
    assert not leftover, f"processes left behind by the agent: {leftover}"


def _wait_ready(paths: AgentPaths, **wanted: int) -> None:
    """Wait until the agent has warm processes ready: ``wanted`` maps ``CUDA_VISIBLE_DEVICES``
    values (``cpu`` for ``""``) to counts. A run handed while none is ready starts cold."""
    keys = {("" if k == "cpu" else k.removeprefix("gpu")): n for k, n in wanted.items()}
    wait_until(lambda: (answer := ping(paths)) is not None and all(
        answer["ready"].get(k, 0) >= n for k, n in keys.items()), 120,
        f"warm processes ready: {wanted}")


def _submitter(ws_dir: Path, code: str, *, gpus: int = 0, name: str = "r",
               extra_env: dict[str, str] | None = None) -> subprocess.Popen:
    """A separate process that submits one run, prints its id and then waits (so a test
    can kill it like any notebook kernel)."""
    script = textwrap.dedent(f"""\
        import sys, jupyter_mlops as mlops
        run = mlops.workspace().submit({code!r}, name={name!r}, gpus={gpus})
        print(run.id, flush=True)
        sys.stdin.read()
    """)
    return subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, cwd=ws_dir.parent,
                            env={**os.environ, **(extra_env or {})})


def test_agent_starts_on_demand_runs_warm_and_exits_when_idle(warm, ws, monkeypatch):
    monkeypatch.setenv("JUPYTER_MLOPS_AGENT_IDLE", "3")
    monkeypatch.setenv("JUPYTER_MLOPS_PRELOAD", "decimal")
    assert ping(warm) is None  # nothing runs before the first submit
    code = ("import os, sys\n"
            "print('preloaded', 'decimal' in sys.modules)\n"
            "print('run', os.environ['JUPYTER_MLOPS_RUN_ID'], 'cwd', os.getcwd())\n"
            "print('pid', os.getpid(), 'parent', os.getppid())\nresult = 42\n"
            "import jupyter_mlops as mlops\n"  # the job process's schema check is trusted
            "print('schema checked', os.environ['JUPYTER_MLOPS_SCHEMA_CHECKED'] == "
            "mlops.workspace().backend.store.schema_stamp())")
    ws.submit("pass", name="wake-up").wait(timeout=120)  # starts the agent (this run: cold)
    runs = []
    for i in range(2):
        _wait_ready(warm, cpu=1)
        runs.append(ws.submit(code, name=f"warm-{i}", outputs=["result"]))
    for run in runs:
        run.wait(timeout=120)
        assert run.status == "completed", run.info()["error"]
        logs = run.logs()
        assert "preloaded True" in logs and "schema checked True" in logs
        assert f"run {run.id} cwd {os.getcwd()}" in logs
        assert run.outputs()["result"] == 42
        assert "notebook.ipynb" in [a["path"] for a in run.artifacts()]
    # The runs' job processes were warm ones the agent had started ahead of them.
    agents = _agent_pids(warm)
    assert len(agents) == 1
    assert {run.info()["pid"] for run in runs} <= set(_warm_pids(warm))
    family = _family(agents[0])
    # Looking at it (`targets`, a sidebar polling) is not work: it still exits when idle.
    wait_until(lambda: (ping(warm), _gone(agents[0]))[1], 60, "the idle agent to exit")
    wait_until(lambda: all(_gone(p) for p in family), 30, "its warm processes to exit")
    assert not warm.socket.exists()
    assert "idle for 3 s, exiting" in warm.log.read_text()


def test_two_submitters_at_once_start_one_agent(warm, ws_dir):
    submitters = [_submitter(ws_dir, "print('hello')", name=f"s{i}") for i in range(2)]
    try:
        ids = [s.stdout.readline().strip() for s in submitters]
    finally:
        for s in submitters:
            s.stdin.close()
            s.wait(timeout=60)
    import jupyter_mlops as mlops

    ws = mlops.workspace()
    for run_id in ids:
        run = ws.get_run(run_id)
        run.wait(timeout=120)
        assert run.status == "completed"
    assert len(_agent_pids(warm)) == 1
    assert ping(warm)["pid"] == _agent_pids(warm)[0]


def test_kill9_agent_jobs_go_on_and_a_new_agent_takes_over(warm, ws, tmp_path):
    flag = tmp_path / "go"
    ws.submit("pass", name="wake-up").wait(timeout=120)
    _wait_ready(warm, cpu=1)
    running = ws.submit(WAIT_FLAG.format(flag=str(flag)), name="running")  # warm
    queued = ws.submit(WAIT_FLAG.format(flag=str(flag)), name="queued")  # one CPU slot
    wait_until(lambda: "started" in running.logs(), 120, "the first run to start")
    # The second run waits in the agent for the next warm process, then in it for the slot.
    wait_until(lambda: queued.info()["pid"], 120, "the second run to be handed a process")
    assert queued.info()["status"] == "queued"
    agent = _agent_pids(warm)[0]
    handed = {running.info()["pid"], queued.info()["pid"]}
    waiting = [p for p in _family(agent) if p != agent and p not in handed
               and not any(p in _family(h) for h in handed)]  # warm processes and kernels
    assert waiting
    os.kill(agent, signal.SIGKILL)
    wait_until(lambda: _gone(agent), 30, "the agent to die")
    # Warm processes die with it (and their kernels with them); handed runs go on.
    wait_until(lambda: all(_gone(p) for p in waiting), 30, "warm processes to follow it")
    flag.write_text("")
    for run in (running, queued):
        run.wait(timeout=120)
        assert run.status == "completed", run.info()["error"]
        assert "done" in run.logs()
    again = ws.submit("print('after')", name="after")
    again.wait(timeout=120)
    assert again.status == "completed"
    agents = _agent_pids(warm)
    assert len(agents) == 2 and agents[1] != agent
    assert ping(warm)["pid"] == agents[1]


def test_kill9_of_every_job_process_makes_runs_lost_without_readers(warm, ws_dir, tmp_path):
    """The submitting process and every job process are killed; nobody reads the runs;
    the agent stores them ``lost`` within 60 s."""
    flag = tmp_path / "never"
    submitters = [_submitter(ws_dir, WAIT_FLAG.format(flag=str(flag)), name=f"k{i}")
                  for i in range(2)]
    ids = [s.stdout.readline().strip() for s in submitters]
    from jupyter_mlops.store import Backend

    store = Backend.open(ws_dir).store  # raw rows: reading them repairs nothing
    wait_until(lambda: store.get_run_row(ids[0])["status"] == "running"
               or store.get_run_row(ids[1])["status"] == "running", 120, "a run to start")
    # The other may still wait in the agent for a warm process: until it has its own.
    wait_until(lambda: all(store.get_run_row(i)["pid"] for i in ids), 120,
               "both runs to have a job process")
    victims = [s.pid for s in submitters]
    for run_id in ids:
        victims += _family(store.get_run_row(run_id)["pid"])
    for pid in victims:
        with contextlib.suppress(ProcessLookupError):  # a short-lived helper process
            os.kill(pid, signal.SIGKILL)
    for s in submitters:
        s.wait(timeout=30)
    statuses = wait_until(
        lambda: [r["status"] for r in map(store.get_run_row, ids)] == ["lost", "lost"]
        and ["lost", "lost"], 90, "the agent's reaper to store both runs lost")
    assert statuses == ["lost", "lost"]
    store.close()


def test_simulated_gpus_each_run_sees_only_its_device(warm, ws, tmp_path, monkeypatch):
    monkeypatch.setenv("JUPYTER_MLOPS_GPUS", "0,1")
    flag = tmp_path / "both"
    code = ("import os\nprint('devices', repr(os.environ['CUDA_VISIBLE_DEVICES']))\n"
            + WAIT_FLAG.format(flag=str(flag)))
    ws.submit("pass", name="wake-up").wait(timeout=120)
    _wait_ready(warm, gpu0=1, gpu1=1, cpu=1)
    runs = [ws.submit(code, name=f"gpu-{i}", gpus=1) for i in range(2)]
    cpu = ws.submit(code, name="no-gpu", gpus=0)
    wait_until(lambda: all("started" in r.logs() for r in [*runs, cpu]), 180,
               "all three runs to run at once")
    flag.write_text("")
    seen = []
    for run in [*runs, cpu]:
        run.wait(timeout=120)
        assert run.status == "completed", run.info()["error"]
        device = re.search(r"devices '(.*)'", run.logs()).group(1)
        assert device == (run.info()["resources"].get("cuda_visible_devices") or "")
        seen.append(device)
    assert sorted(seen[:2]) == ["0", "1"] and seen[2] == ""
    assert {r.info()["pid"] for r in [*runs, cpu]} <= set(_warm_pids(warm))


def test_warm_run_obeys_timeout_and_cancel(warm, ws, tmp_path):
    slow = "import time\nprint('sleeping', flush=True)\ntime.sleep(600)"
    timed = ws.submit(slow, name="timeout", timeout=3)
    timed.wait(timeout=120, raise_on_failure=False)
    assert timed.status == "failed" and "timed out after 3 s" in timed.info()["error"]
    canceled = ws.submit(slow, name="cancel")
    wait_until(lambda: "sleeping" in canceled.logs(), 120, "the run to start")
    canceled.cancel()
    canceled.wait(timeout=120, raise_on_failure=False)
    assert canceled.status == "canceled"


@pytest.mark.skipif(os.getuid() != 0, reason="switching to another user needs root")
def test_another_user_is_refused(warm, ws):
    ws.submit("print(1)", name="first").wait(timeout=120)  # the agent is up
    nobody = __import__("pwd").getpwnam("nobody").pw_uid
    probe = textwrap.dedent(f"""\
        import json, os, socket, sys
        os.setgid({nobody}); os.setuid({nobody})
        try:
            with socket.socket(socket.AF_UNIX) as s:
                s.settimeout(10)
                s.connect({str(warm.socket)!r})
                try:  # the agent may answer (and close) before reading anything
                    s.sendall(b'{{"op": "stop"}}\\n')
                except BrokenPipeError:
                    pass
                print(s.recv(4096).decode().strip())
        except PermissionError:
            print("permission denied")
    """)

    def as_nobody() -> str:
        out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                             timeout=60, cwd="/")
        assert out.returncode == 0, out.stderr
        return out.stdout.strip()

    # The socket's folder (0700) and the socket (0600) keep others out...
    assert as_nobody() == "permission denied"
    # ...and if they were opened up, the agent still checks who is calling.
    folder = warm.socket.parent
    modes = folder.stat().st_mode, warm.socket.stat().st_mode
    folder.chmod(0o711)
    warm.socket.chmod(0o666)
    try:
        answer = json.loads(as_nobody())
    finally:
        folder.chmod(modes[0] & 0o7777)
        warm.socket.chmod(modes[1] & 0o7777)
    assert answer["ok"] is False and f"uid {nobody}" in answer["error"]
    assert ping(warm) is not None  # the refused "stop" did not stop it


# -- the fork server (warm processes and kernels forked, not started) ------------------------


def _forked_pids(paths: AgentPaths) -> list[int]:
    """Warm processes that were forked by the fork server and whose kernel was forked."""
    log = paths.log.read_text() if paths.log.exists() else ""
    return [int(p) for p in re.findall(r"^warm job process (\d+) ready in .*, forked, kernel "
                                       r"forked\)", log, re.M)]


SLOW_IMPORT = textwrap.dedent("""\
    import pathlib, time
    while not pathlib.Path({go!r}).exists():  # holds the fork server's imports up
        time.sleep(0.05)
""")


def _preload(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, source: str) -> None:
    """A module ``name`` with ``source``, importable by the agent's processes and preloaded."""
    mods = tmp_path / "mods"
    mods.mkdir()
    (mods / f"{name}.py").write_text(source)
    monkeypatch.setenv("PYTHONPATH", f"{mods}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    monkeypatch.setenv("JUPYTER_MLOPS_PRELOAD", name)


def _forkserver_pid(paths: AgentPaths) -> int:
    log = paths.log.read_text() if paths.log.exists() else ""
    found = re.findall(r"^fork server (\d+) up", log, re.M)
    assert found, f"no fork server in {paths.log}:\n{log}"
    return int(found[-1])


def test_a_silent_client_does_not_hold_up_the_agent(warm, ws):
    """A client that connects and sends half a request (a submitter frozen mid-way) is
    waited for beside the others: a ping and a submit are answered while its connection
    is still open; it is closed after CLIENT_TIMEOUT."""
    import socket

    ws.submit("pass", name="wake-up").wait(timeout=120)
    _wait_ready(warm, cpu=1)
    with socket.socket(socket.AF_UNIX) as silent:
        silent.connect(str(warm.socket))
        silent.sendall(b'{"op": "pi')  # and nothing more
        assert ping(warm) is not None
        run = ws.submit("print('not held up')", name="beside")  # handed: answered
        silent.setblocking(False)
        with pytest.raises(BlockingIOError):  # still open: nothing came, no end either
            silent.recv(1)
        run.wait(timeout=120)
        assert run.status == "completed" and "not held up" in run.logs()
        silent.setblocking(True)
        silent.settimeout(120)
        assert silent.recv(1) == b""  # then the agent gives up on it and closes it
    assert "sent no complete request" in warm.log.read_text()


def test_forked_runs_share_nothing_with_each_other(warm, ws, monkeypatch):
    """Each run gets a fresh fork: what one run does to its kernel (globals, a module's
    attributes, numpy's global generator, the environment) is not in the next; its kernel
    is a child of its own job process."""
    monkeypatch.setenv("JUPYTER_MLOPS_CPU_SLOTS", "2")
    # numpy.random's global generator exists once numpy.random is imported: in the fork
    # server here, so every fork would draw the same numbers unless it is reseeded.
    monkeypatch.setenv("JUPYTER_MLOPS_PRELOAD", "numpy.random")
    code = textwrap.dedent("""\
        import json, os, sys
        print('leaked', 'marker' in globals(), hasattr(json, 'marker'),
              os.environ.get('MLOPS_TEST_MARKER'))
        print('preloaded', 'numpy.random' in sys.modules)
        import numpy
        print('draw', numpy.random.random())
        print('kernel', os.getpid(), 'parent', os.getppid())
        comm = lambda pid: open(f'/proc/{pid}/comm').read().strip()
        print('named', comm(os.getpid()), comm(os.getppid()))  # for top and ps -o comm
        from ipykernel.kernelapp import IPKernelApp
        app = IPKernelApp.instance()  # it exits when its job process dies
        print('watches its parent', app.parent_handle == os.getppid(), app.poller is not None)
        marker = 1
        json.marker = 1
        os.environ['MLOPS_TEST_MARKER'] = 'set by an earlier run'
    """)
    ws.submit("pass", name="wake-up").wait(timeout=120)
    runs = []
    for i in range(3):
        _wait_ready(warm, cpu=2)
        run = ws.submit(code, name=f"fresh-{i}")
        run.wait(timeout=120)
        assert run.status == "completed", run.info()["error"]
        runs.append(run)
    draws = set()
    for run in runs:
        logs = run.logs()
        assert "leaked False False None" in logs
        assert "preloaded True" in logs
        assert "watches its parent True True" in logs
        assert "named mlops-kernel mlops-job" in logs
        parent = int(re.search(r"kernel \d+ parent (\d+)", logs).group(1))
        assert parent == run.info()["pid"]  # the kernel was forked by the run's job process
        draws.add(re.search(r"draw ([0-9.e-]+)", logs).group(1))
    assert len(draws) == 3, "numpy's generator was copied by the fork, not reseeded"
    assert {run.info()["pid"] for run in runs} <= set(_forked_pids(warm))
    # The executed notebook is papermill's, as for a cold run.
    import nbformat

    with runs[0].open_artifact("notebook.ipynb")[0] as handle:
        nb = nbformat.reads(handle.read().decode(), as_version=4)
    assert nb.metadata.papermill["end_time"]
    assert [c.metadata.papermill["status"] for c in nb.cells if c.cell_type == "code"] \
        == ["completed"] * sum(c.cell_type == "code" for c in nb.cells)


def test_a_killed_forked_job_is_lost_its_kernel_follows_and_its_slot_is_freed(warm, ws,
                                                                             tmp_path):
    flag = tmp_path / "never"
    ws.submit("pass", name="wake-up").wait(timeout=120)
    _wait_ready(warm, cpu=1)
    victim = ws.submit(WAIT_FLAG.format(flag=str(flag)), name="victim")
    wait_until(lambda: "started" in victim.logs(), 120, "the run to start")
    job = victim.info()["pid"]
    assert job in _forked_pids(warm)
    kernel = victim.info()["resources"]["kernel_pid"]
    assert kernel in _family(job)
    os.kill(job, signal.SIGKILL)
    # ipykernel watches its parent: a kernel forked from a seed must too.
    wait_until(lambda: _gone(kernel), 60, "the kernel to exit after its job process")
    wait_until(lambda: victim.info()["status"] == "lost", 90, "the run to read lost")
    after = ws.submit("print('after')", name="after")  # the only CPU slot is free again
    after.wait(timeout=120)
    assert after.status == "completed" and "after" in after.logs()


def test_without_its_fork_server_the_agent_starts_warm_processes_as_before(warm, ws):
    ws.submit("pass", name="wake-up").wait(timeout=120)
    _wait_ready(warm, cpu=1)
    server = _forkserver_pid(warm)
    waiting = _forked_pids(warm)[-1]
    os.kill(server, signal.SIGKILL)
    wait_until(lambda: _gone(waiting), 30, "its waiting warm process to die with it")
    state = wait_until(lambda: (s := ping(warm)["forkserver"]) not in ("up", "booting") and s,
                       30, "the agent to notice the fork server is gone")
    assert "fork server" in state, state
    _wait_ready(warm, cpu=1)  # a new interpreter this time
    run = ws.submit("print('still warm')", name="no-forks")
    run.wait(timeout=120)
    assert run.status == "completed" and "still warm" in run.logs()
    assert run.info()["pid"] in set(_warm_pids(warm)) - set(_forked_pids(warm))


def test_runs_submitted_faster_than_warm_processes_boot_wait_for_them(warm, ws, monkeypatch):
    """Five runs at once on two slots: each is handed to a forked warm process (booting
    ones are waited for), none starts cold."""
    monkeypatch.setenv("JUPYTER_MLOPS_CPU_SLOTS", "2")
    ws.submit("pass", name="wake-up").wait(timeout=120)
    _wait_ready(warm, cpu=2)
    runs = [ws.submit(f"print('burst {i}')", name=f"burst-{i}") for i in range(5)]
    for i, run in enumerate(runs):
        run.wait(timeout=120)
        assert run.status == "completed" and f"burst {i}" in run.logs()
    assert {run.info()["pid"] for run in runs} <= set(_forked_pids(warm))


def test_a_new_agent_adopts_runs_the_dead_one_had_accepted(warm, ws_dir, tmp_path,
                                                          monkeypatch):
    """The agent accepted a run that waits for the fork server's imports (slowed here by a
    preloaded module), then is killed: the run is not lost, the next agent starts it."""
    _preload(tmp_path, monkeypatch, "slow_import", SLOW_IMPORT.format(go=tmp_path / "go"))
    from jupyter_mlops.store import HOSTNAME, Backend

    submitter = _submitter(ws_dir, "print('adopted')", name="accepted")
    run_id = submitter.stdout.readline().strip()
    submitter.stdin.close()
    submitter.wait(timeout=60)
    store = Backend.open(ws_dir).store
    row = store.get_run_row(run_id)
    assert (row["status"], row["host"], row["pid"]) == ("queued", HOSTNAME, None)
    agent = _agent_pids(warm)[0]
    family = _family(agent)
    os.kill(agent, signal.SIGKILL)
    wait_until(lambda: all(_gone(p) for p in family), 30, "the agent and its fork server")
    (tmp_path / "go").write_text("")
    import jupyter_mlops as mlops

    later = mlops.workspace(ws_dir).submit("print('later')", name="later")
    run = mlops.workspace(ws_dir).get_run(run_id)
    for r in (run, later):
        r.wait(timeout=120)
        assert r.status == "completed", r.info()["error"]
    assert "adopted" in run.logs()
    assert f"adopting queued run {run_id}" in warm.log.read_text()
    store.close()


def test_a_preload_that_starts_threads_keeps_the_fork_server_from_forking(warm, ws, tmp_path,
                                                                         monkeypatch):
    _preload(tmp_path, monkeypatch, "threaded_import",
             "import threading, time\nthreading.Thread(target=time.sleep, args=(3600,), "
             "daemon=True, name='busy').start()\n")
    ws.submit("pass", name="wake-up").wait(timeout=120)
    wait_until(lambda: "will not fork" in str(ping(warm)["forkserver"]), 60,
               "the fork server to refuse")
    assert "an import started threads" in ping(warm)["forkserver"]
    assert "busy" in ping(warm)["forkserver"]
    _wait_ready(warm, cpu=1)  # warm processes as new interpreters instead
    run = ws.submit("import sys\nprint('preloaded', 'threaded_import' in sys.modules)",
                    name="unforked")
    run.wait(timeout=120)
    assert run.status == "completed" and "preloaded True" in run.logs()
    assert run.info()["pid"] in set(_warm_pids(warm)) - set(_forked_pids(warm))


def test_a_warm_kernel_that_died_before_its_run_is_replaced(warm, ws):
    ws.submit("pass", name="wake-up").wait(timeout=120)
    _wait_ready(warm, cpu=1)
    waiting = _warm_pids(warm)[-1]
    kernels = psutil.Process(waiting).children()
    assert len(kernels) == 1
    kernels[0].kill()
    wait_until(lambda: _gone(kernels[0].pid), 30, "the warm kernel to die")
    run = ws.submit("print('ran anyway')", name="replaced")
    run.wait(timeout=120)
    assert run.status == "completed", run.info()["error"]
    assert run.info()["pid"] == waiting
    assert "the warm kernel did not answer" in run.logs() and "ran anyway" in run.logs()


def test_a_run_on_two_simulated_gpus_gets_a_warm_process_forked_for_them(warm, ws,
                                                                         monkeypatch):
    monkeypatch.setenv("JUPYTER_MLOPS_GPUS", "0,1,2")
    code = ("import os\nprint('devices', repr(os.environ['CUDA_VISIBLE_DEVICES']))\n"
            "print('kernel forked', b'ipykernel_launcher' not in "
            "open('/proc/self/cmdline', 'rb').read())")  # a new kernel would be exec'd
    ws.submit("pass", name="wake-up").wait(timeout=120)
    _wait_ready(warm, gpu0=1, gpu1=1, gpu2=1)
    run = ws.submit(code, name="two-gpus", gpus=2)
    run.wait(timeout=120)
    assert run.status == "completed", run.info()["error"]
    assert "devices '0,1'" in run.logs()
    assert run.info()["resources"]["cuda_visible_devices"] == "0,1"
    assert run.info()["pid"] in _forked_pids(warm)
    assert "kernel forked True" in run.logs()  # the warm kernel, not one started anew
    assert "CUDA_VISIBLE_DEVICES='0,1'" in warm.log.read_text()


def test_a_run_canceled_while_it_waits_in_the_agent_is_never_started(warm, ws, tmp_path,
                                                                     monkeypatch):
    _preload(tmp_path, monkeypatch, "slow_import", SLOW_IMPORT.format(go=tmp_path / "go"))
    run = ws.submit("print('should not run')", name="canceled-waiting")
    assert ping(warm)["pending"] == 1  # the fork server is still importing
    run.cancel()
    assert run.info()["status"] == "canceled"
    (tmp_path / "go").write_text("")
    after = ws.submit("print('after')", name="after")
    after.wait(timeout=120)
    assert after.status == "completed"
    assert ping(warm)["pending"] == 0
    info = run.info()
    assert (info["status"], info["pid"]) == ("canceled", None)
    assert "should not run" not in run.logs()


def test_an_agent_whose_workspace_folder_was_deleted_exits_and_serves_no_new_one(warm, ws,
                                                                                ws_dir):
    """Deleting the workspace folder (and making it anew at the same path) while its agent
    lives: the old agent takes no run of the new database and exits with its processes;
    runs of the new workspace complete."""
    from jupyter_mlops.api import _workspace
    from jupyter_mlops.store import Backend

    ws.submit("pass", name="old-workspace").wait(timeout=120)
    _wait_ready(warm, cpu=1)
    old_agent = _agent_pids(warm)[0]
    family = _family(old_agent)
    ws.store.close()
    _workspace._cache.clear()
    shutil.rmtree(ws_dir)
    Backend.open(ws_dir).store.close()  # a new workspace at the same path
    import jupyter_mlops as mlops

    run = mlops.workspace().submit("print('new workspace')", name="new-workspace")
    run.wait(timeout=120)
    assert run.status == "completed", run.info()["error"]
    assert "new workspace" in run.logs()
    assert run.info()["pid"] not in family  # not one of the old agent's warm processes
    wait_until(lambda: all(_gone(p) for p in family), 60, "the old agent and its processes "
               "to exit")
    assert [r.info()["name"] for r in mlops.workspace().runs()] == ["new-workspace"]


@pytest.fixture
def on_postgres(postgres, ws_dir, monkeypatch):
    """The workspace's database on the session's throwaway PostgreSQL cluster (set before
    ``warm`` opens the workspace: request it first)."""
    monkeypatch.setenv("JUPYTER_MLOPS_DATABASE_URL", postgres.new_database())


def test_warm_runs_on_postgresql_are_forked_and_recorded(on_postgres, warm, ws):
    """The fork server checks the database and closes its connection before it forks: each
    forked job process and kernel connect on their own and their records land."""
    assert ws.backend.location.database_url.startswith("postgresql")
    ws.submit("pass", name="wake-up").wait(timeout=120)
    _wait_ready(warm, cpu=1)
    code = ("import jupyter_mlops as mlops\nfor step in range(3):\n"
            "    mlops.log('loss', 1.0 / (step + 1), step=step)\nprint('logged')")
    runs = []
    for i in range(2):
        _wait_ready(warm, cpu=1)
        runs.append(ws.submit(code, name=f"pg-{i}"))
        runs[-1].wait(timeout=120)
    forked = re.findall(r"^warm job process (\d+) ready in .*, forked, kernel forked\)",
                        warm.log.read_text(), re.M)
    for run in runs:
        assert run.status == "completed", run.info()["error"]
        assert "logged" in run.logs()
        history = run.metric_history("loss")
        assert list(history["step"]) == [0, 1, 2]
        assert list(history["value"]) == pytest.approx([1.0, 0.5, 1.0 / 3])
        assert str(run.info()["pid"]) in forked


def test_warm_starts_are_on_unless_turned_off(warm, ws, monkeypatch):
    """Default on: a submit with JUPYTER_MLOPS_WARM unset starts the agent; "0" (or
    c.LocalTarget.warm = False) keeps every run cold and starts none."""
    from jupyter_mlops.compute.local import LocalTarget

    for off in ("0", "false", "off", "no"):
        monkeypatch.setenv("JUPYTER_MLOPS_WARM", off)
        assert LocalTarget().warm is False
        assert LocalTarget(warm=True).warm is True  # configuration wins over the default
    ws.submit("pass", name="cold").wait(timeout=120)
    assert ping(warm) is None and not _agent_pids(warm)
    monkeypatch.delenv("JUPYTER_MLOPS_WARM")
    assert LocalTarget().warm is True
    ws.submit("pass", name="default").wait(timeout=120)
    assert ping(warm) is not None and len(_agent_pids(warm)) == 1


def test_packages_changed_while_the_agent_lives_are_seen_by_the_next_warm_run(
        warm, ws, tmp_path, monkeypatch):
    """A package preloaded by the fork server, then upgraded on the import path (as pip
    does: the module replaced, the old version's dist-info folder for the new one's): the
    agent starts a new fork server and new warm processes, and the next warm run imports
    the new version."""
    extra = tmp_path / "site"
    extra.mkdir()
    (extra / "mlops_probe_pkg.py").write_text("VERSION = 1\n")
    (extra / "mlops_probe_pkg-1.dist-info").mkdir()
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        p for p in (str(extra), os.environ.get("PYTHONPATH")) if p))
    monkeypatch.setenv("JUPYTER_MLOPS_PRELOAD", "mlops_probe_pkg")
    code = "import mlops_probe_pkg\nprint('version', mlops_probe_pkg.VERSION)"
    ws.submit("pass", name="wake-up").wait(timeout=120)
    _wait_ready(warm, cpu=1)
    before = ws.submit(code, name="before")
    before.wait(timeout=120)
    assert "version 1" in before.logs()
    _wait_ready(warm, cpu=1)
    (extra / "new.tmp").write_text("VERSION = 2\n")
    os.replace(extra / "new.tmp", extra / "mlops_probe_pkg.py")
    (extra / "mlops_probe_pkg-1.dist-info").rename(extra / "mlops_probe_pkg-2.dist-info")
    wait_until(lambda: "packages changed" in warm.log.read_text(), 60,
               "the agent to see the upgrade")
    _wait_ready(warm, cpu=1)
    after = ws.submit(code, name="after")
    after.wait(timeout=120)
    assert after.status == "completed", after.info()["error"]
    assert "version 2" in after.logs()
    assert str(after.info()["pid"]) in re.findall(
        r"^warm job process (\d+) ready in .*, forked, kernel forked\)", warm.log.read_text(),
        re.M)  # still warm, from the new fork server


def test_without_a_usable_agent_runs_start_cold_and_say_why_once(warm, ws, capfd):
    """A runtime folder others may enter (a socket there could be theirs): no agent is
    started, runs start cold, and the reason is said once, not on every run."""
    folder = warm.socket.parent
    folder.chmod(0o755)
    try:
        runs = [ws.submit(f"print('cold {i}')", name=f"cold-{i}") for i in range(2)]
        for i, run in enumerate(runs):
            run.wait(timeout=120)
            assert run.status == "completed" and f"cold {i}" in run.logs()
    finally:
        folder.chmod(0o700)
    said = capfd.readouterr().err
    assert said.count("cold: ") == 1 and "mode 0700" in said, said
    assert ping(warm) is None and not _agent_pids(warm)
