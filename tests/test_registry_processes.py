"""The registry across processes: ``%%train --dataset`` in a real job, two processes
registering one model name at once, and a registration killed with SIGKILL half way."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from IPython.core.error import UsageError

import jupyter_mlops as mlops

from .conftest import wait_until

PETS = "name,age,weight,kind\nrex,3,12.5,dog\ntom,5,,cat\nbo,1,3.25,dog\n"


@pytest.fixture
def ip(ws_dir: Path):
    from IPython.testing.globalipapp import get_ipython

    shell = get_ipython()
    shell.run_line_magic("load_ext", "jupyter_mlops")
    saved = dict(shell.user_ns)
    yield shell
    shell.user_ns.clear()
    shell.user_ns.update(saved)


def test_train_with_dataset_versions_records_inputs_and_lineage(ip, ws, tmp_path) -> None:
    csv = tmp_path / "pets.csv"
    csv.write_text(PETS)
    ws.datasets.register("pets", csv, copy=True)  # pets:1, a snapshot
    csv.write_text(PETS + "kit,0,0.5,cat\n")
    ws.datasets.register("pets", csv)  # pets:2, a reference to the edited file
    labels = tmp_path / "labels"
    labels.mkdir()
    (labels / "classes.txt").write_text("cat\ndog\n")
    ws.datasets.register("labels", labels)
    ip.run_cell("import jupyter_mlops as mlops", store_history=True).raise_error()

    run = ip.run_cell_magic(
        "train", "--name uses-pets --dataset pets:1 --dataset labels --wait",
        "import pandas as pd\n"
        "frame = pd.read_csv(mlops.dataset('pets'))\n"
        "classes = (mlops.dataset('labels') / 'classes.txt').read_text().split()\n"
        "mlops.log('rows', len(frame))\n"
        "mlops.log('classes', len(classes))\n"
        "(mlops.outputs_dir() / 'model.txt').write_text(f'{len(frame)} rows')\n",
    )
    assert run.status == "completed", run.error
    assert run.metrics() == {"rows": 3.0, "classes": 2.0}  # the snapshot, not today's file
    assert [d.ref for d in run.inputs()] == ["pets:1", "labels:1"]
    assert run.info()["resources"]["datasets"] == [{"name": "pets", "version": 1},
                                                  {"name": "labels", "version": 1}]
    model = run.register_model("pets-clf", "model.txt")
    lin = ws.lineage(model=model.ref)
    assert [d["ref"] for d in lin.datasets] == ["pets:1", "labels:1"]
    assert lin.run["id"] == run.id and "notebook.ipynb" in lin.code["artifacts"]
    assert lin.environment and lin.environment["python"]
    assert "pets:1" in lin.text() and "labels:1" in lin._repr_html_()

    # Refused at submission, nothing submitted: unknown names and versions, bad syntax.
    for line, message in [("--dataset nope", "no dataset named 'nope'"),
                          ("--dataset pets:7", "dataset 'pets' has no version 7"),
                          ("--dataset pets:x", "--dataset takes name or name:version"),
                          ("--dataset a/b", "path separator")]:
        with pytest.raises(UsageError, match=message):
            ip.run_cell_magic("train", line, "x = 1")
    assert [r.id for r in ws.runs()] == [run.id]

    # The data of a reference vanished before the job started: the run fails, naming the
    # version and the location it was registered at.
    csv.unlink()
    with pytest.raises(mlops.RunFailed, match=r"pets:2 .* refers to .*pets.csv, which no longer"):
        ip.run_cell_magic("train", "--name vanished --dataset pets --wait", "x = 1")
    failed = ws.get_run("vanished")
    assert failed.status == "failed" and failed.inputs() == []


RACE_SCRIPT = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    import jupyter_mlops as mlops

    me, rounds, go = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
    work, other = Path(sys.argv[4]), Path(sys.argv[5])
    ws = mlops.workspace()
    ws.models.list()  # opened and ready: say so, then wait for the start signal
    work.mkdir(parents=True, exist_ok=True)
    (work / "ready").touch()
    while not go.exists():
        time.sleep(0.005)
    for i in range(rounds):
        # Round by round: both register at once, whatever the scheduler does meanwhile.
        while i and not (other / f"done{i - 1}").exists():
            time.sleep(0.002)
        src = work / f"round{i}"
        src.mkdir()
        (src / "who.txt").write_text(f"{me}-{i}")
        model = ws.models.register("raced", src)
        print(model.version, f"{me}-{i}", flush=True)
        (work / f"done{i}").touch()
""")


def test_two_processes_registering_one_name_get_distinct_consecutive_versions(
    ws, ws_dir, tmp_path
) -> None:
    rounds = 25
    go = tmp_path / "go"
    env = {**os.environ, "JUPYTER_MLOPS_WORKSPACE": str(ws_dir)}
    procs = [subprocess.Popen(
        [sys.executable, "-c", RACE_SCRIPT, name, str(rounds), str(go), str(tmp_path / name),
         str(tmp_path / other)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        for name, other in (("A", "B"), ("B", "A"))]
    wait_until(lambda: all((tmp_path / n / "ready").exists() for n in ("A", "B"))
               or any(p.poll() is not None for p in procs), timeout=60, what="both to be ready")
    go.touch()  # both have imported and opened the workspace: start them together
    claimed: dict[int, str] = {}
    for proc in procs:
        out, err = proc.communicate(timeout=240)
        assert proc.returncode == 0, err
        for line in out.split("\n"):
            if line:
                version, content = line.split()
                assert int(version) not in claimed, f"version {version} handed out twice"
                claimed[int(version)] = content
    assert sorted(claimed) == list(range(1, 2 * rounds + 1))  # no clash, no gap, none lost
    # Both processes did interleave (otherwise this test would prove little): rounds are in
    # lock-step, so each pair of versions went to one registration of each process.
    owners = [claimed[v][0] for v in sorted(claimed)]
    assert all(sorted(owners[i:i + 2]) == ["A", "B"] for i in range(0, len(owners), 2)), owners
    models = {m.version: m for m in ws.models.list("raced")}
    assert sorted(models) == sorted(claimed)
    for version, content in claimed.items():  # each version holds what its registrant wrote
        out = models[version].download(tmp_path / "check" / str(version))
        assert (out / "who.txt").read_text() == content


KILL_SCRIPT = textwrap.dedent("""
    import sys
    import jupyter_mlops as mlops

    mlops.workspace().models.register("big", sys.argv[1])
    print("finished", flush=True)
""")


def test_kill_9_during_a_large_registration_leaves_no_half_model(ws, ws_dir, tmp_path) -> None:
    small = tmp_path / "small"
    small.mkdir()
    (small / "w.bin").write_bytes(b"v1")
    v1 = ws.models.register("big", small)

    big = tmp_path / "big"
    big.mkdir()
    block = os.urandom(1 << 20)
    files = 192  # 192 MiB: long enough to be killed in the middle of it
    for i in range(files):
        (big / f"shard{i:03d}.bin").write_bytes(block[i:] + block[:i])
    store = Path(ws.artifacts.root) / "models" / "big"
    before = {p.name for p in store.iterdir()}
    proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, str(big)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "JUPYTER_MLOPS_WORKSPACE": str(ws_dir)})

    def copying() -> list[Path]:
        folders = [p for p in store.iterdir() if p.name not in before]
        return [f for f in folders if len(list(f.iterdir())) >= 8]

    half = wait_until(copying, timeout=60, what="the registration to be copying files")[0]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, "the registration ended before it was killed"
    written = len(list(half.iterdir()))
    assert 8 <= written < files, written

    # No half model: only version 1 exists, whole; the next registration is version 2.
    assert [m.ref for m in ws.models.list("big")] == ["big:1"]
    assert ws.models.get("big").version == 1
    assert (v1.download(tmp_path / "v1") / "w.bin").read_bytes() == b"v1"
    (small / "w.bin").write_bytes(b"v2")
    assert ws.models.register("big", small).version == 2
    # The interrupted copy is an unreferenced folder that gc removes.
    assert ws.models.gc(older_than=0) == [f"models/big/{half.name}"]
    assert not half.exists() and v1.local_path().exists()
