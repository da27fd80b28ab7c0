"""Model registry, versioned datasets, lineage and run diffs, on real SQLite and real files."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

import jupyter_mlops as mlops
from jupyter_mlops.errors import Conflict, InvalidInput, NotFound, WorkspaceError
from jupyter_mlops.store import new_run_id

from .conftest import cli

REGISTRY_TABLES = ("models", "model_versions", "model_files", "model_aliases", "datasets",
                   "dataset_versions", "run_inputs")


def state(ws) -> tuple:
    """Rows of every registry table and every file under the registry's storage folders:
    what must not change when an input is refused."""
    with ws.store.read() as conn:  # SQLite or PostgreSQL alike
        counts = tuple(conn.exec_driver_sql(f"SELECT count(*) FROM {t}").scalar()
                       for t in REGISTRY_TABLES)
    root = Path(ws.artifacts.root)
    files = sorted(str(p.relative_to(root)) for area in ("models", "datasets")
                   for p in (root / area).rglob("*") if (root / area).exists())
    return counts, files


def make_model(folder: Path, weights: bytes = b"w" * 1000, config: str = "{}") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "weights.bin").write_bytes(weights)
    (folder / "conf").mkdir(exist_ok=True)
    (folder / "conf" / "config.json").write_text(config)
    return folder


# -- models ---------------------------------------------------------------------------------


def test_register_versions_are_numbered_immutable_and_content_hashed(any_ws, tmp_path) -> None:
    ws = any_ws  # on SQLite and PostgreSQL
    src = make_model(tmp_path / "model")
    v1 = ws.models.register("mnist", src, tags={"framework": "numpy"}, description="first")
    assert (v1.name, v1.version, v1.kind, v1.file_count, v1.size) == ("mnist", 1, "folder", 2, 1002)
    assert [f["path"] for f in v1.files()] == ["conf/config.json", "weights.bin"]
    assert v1.tags == {"framework": "numpy"} and v1.description == "first"
    assert v1.source == str(src.resolve()) and v1.run_id is None

    # Same content again: a new version unless reuse is asked for; same hash either way.
    v2 = ws.models.register("mnist", src)
    assert v2.version == 2 and v2.sha256 == v1.sha256
    assert ws.models.register("mnist", src, reuse=True) == v2
    assert [m.version for m in ws.models.list("mnist")] == [2, 1]

    # The stored version does not follow later changes of the source.
    (src / "weights.bin").write_bytes(b"changed")
    v3 = ws.models.register("mnist", src)
    assert v3.version == 3 and v3.sha256 != v1.sha256
    out = v1.download(tmp_path / "v1")
    assert (out / "weights.bin").read_bytes() == b"w" * 1000
    assert (out / "conf" / "config.json").read_text() == "{}"

    # One file is a model too; it lands inside an existing folder under its own name.
    single = ws.models.register("mnist", src / "weights.bin")
    assert (single.version, single.kind, single.root_name) == (4, "file", "weights.bin")
    dest = tmp_path / "dl"
    dest.mkdir()
    assert single.download(dest) == dest / "weights.bin"
    assert (dest / "weights.bin").read_bytes() == b"changed"
    with pytest.raises(InvalidInput, match="already exists"):
        single.download(dest)
    (dest / "weights.bin").write_bytes(b"stale")
    assert single.download(dest, overwrite=True).read_bytes() == b"changed"
    assert sorted(p.name for p in dest.iterdir()) == ["weights.bin"]  # no temp files left
    assert single.download(f"{tmp_path}/new/") == tmp_path / "new" / "weights.bin"


def test_get_list_tags_and_aliases(any_ws, tmp_path) -> None:
    ws = any_ws  # on SQLite and PostgreSQL
    src = make_model(tmp_path / "m")
    for i in range(3):
        (src / "weights.bin").write_bytes(bytes([i]) * 10)
        ws.models.register("clf", src, tags={"round": i, "team": "vision"})
    ws.models.register("other", src)
    assert ws.models.get("clf").version == 3
    assert ws.models.get("clf", 2).version == ws.models.get("clf:2").version == 2
    assert ws.models.get("clf", "latest").version == 3
    assert [m.ref for m in ws.models.list(tags={"team": "vision"})] == ["clf:3", "clf:2", "clf:1"]
    assert [m.ref for m in ws.models.list(tags={"round": 1})] == ["clf:2"]
    assert [m.ref for m in ws.models.list()] == ["clf:3", "clf:2", "clf:1", "other:1"]
    assert ws.models.names() == ["clf", "other"]

    v2 = ws.models.get("clf:2")
    assert v2.set_tags({"stage": "candidate"}, remove=["round"]) == {
        "team": "vision", "stage": "candidate"}
    v2.set_alias("production")
    assert ws.models.get("clf", "production") == v2
    assert ws.models.get("clf:production").aliases == ["production"]
    assert [m.ref for m in ws.models.list(alias="production")] == ["clf:2"]
    # An alias names one version: moving it takes it from the previous one.
    ws.models.set_alias("clf", 3, "production")
    assert ws.models.get("clf:production").version == 3 and v2.aliases == []
    ws.models.get("clf:3").remove_alias("production")
    with pytest.raises(NotFound, match="no version with alias 'production'"):
        ws.models.get("clf:production")
    frame = ws.models.dataframe()
    assert list(frame["version"]) == [3, 2, 1, 1]
    assert "clf:2" in repr(v2) and "<table>" in v2._repr_html_()


def test_register_from_a_run_during_and_after_it(ws, tmp_path) -> None:
    with mlops.start_run("train", experiment="reg", params={"lr": 0.1}) as run:
        (mlops.outputs_dir() / "model.pkl").write_bytes(b"pickled")
        (mlops.outputs_dir() / "ckpt").mkdir()
        (mlops.outputs_dir() / "ckpt" / "a.bin").write_bytes(b"a")
        (mlops.outputs_dir() / "ckpt" / "b.bin").write_bytes(b"b")
        during = run.register_model("clf", "model.pkl", tags={"when": "during"})
    assert during.run_id == run.id and during.source == f"run:{run.id}/outputs/model.pkl"
    after = run.register_model("clf", "outputs/model.pkl", description="after the run")
    assert after.sha256 == during.sha256 and after.version == 2
    folder = ws.models.register("ckpt", "ckpt", run=run.id)
    assert folder.kind == "folder" and [f["path"] for f in folder.files()] == ["a.bin", "b.bin"]
    assert [m.ref for m in ws.models.list()] == ["ckpt:1", "clf:2", "clf:1"]
    assert folder.run == run
    with pytest.raises(NotFound, match=r"no artifact 'nope.pkl'.*outputs/model.pkl"):
        run.register_model("clf", "nope.pkl")
    with pytest.raises(InvalidInput, match="must be relative"):
        run.register_model("clf", "../../etc/passwd")


def test_delete_is_explicit_refused_while_served_and_never_reuses_a_number(
    any_ws, tmp_path, monkeypatch
) -> None:
    ws = any_ws  # on SQLite and PostgreSQL
    from jupyter_mlops.registry import _models

    src = make_model(tmp_path / "m")
    ws.models.register("svc", src)
    v2 = ws.models.register("svc", src)
    stored = Path(v2.local_path())
    assert stored.is_dir()
    for bad, message in (("svc", "explicit version number"), ("svc:latest", "explicit version"),
                         ("svc:9", "has no version 9")):
        with pytest.raises((InvalidInput, NotFound), match=message):
            ws.models.delete(bad)
    monkeypatch.setattr(_models, "endpoints_serving",
                        lambda ws, name, version: ["svc-prod"] if version == 2 else [])
    before = state(ws)
    with pytest.raises(Conflict, match="served by endpoint svc-prod"):
        v2.delete()
    assert state(ws) == before and stored.is_dir()
    monkeypatch.setattr(_models, "endpoints_serving", lambda ws, name, version: [])
    v2.delete()
    assert not stored.exists()
    with pytest.raises(NotFound, match=r"has no version 2 \(versions: 1\)"):
        ws.models.get("svc:2")
    assert ws.models.register("svc", src).version == 3  # 2 stays retired


@pytest.mark.parametrize("name", ["a/b", "..", "../up", "with space", "tab\tname", "bell\x07",
                                  "", ":x", "x" * 200, ".hidden", "-dash", "mnist:3", 42])
def test_bad_model_names_are_refused_and_nothing_is_written(ws, tmp_path, name) -> None:
    src = make_model(tmp_path / "m")
    before = state(ws)
    with pytest.raises(InvalidInput, match="name"):
        ws.models.register(name, src)
    assert state(ws) == before


def test_bad_paths_versions_and_labels_are_refused_cleanly(ws, tmp_path) -> None:
    empty = tmp_path / "empty"
    (empty / "nested").mkdir(parents=True)
    broken = make_model(tmp_path / "broken")
    (broken / "link.bin").symlink_to(tmp_path / "gone.bin")
    ws.models.register("ok", make_model(tmp_path / "m"))
    before = state(ws)
    cases = [
        (lambda: ws.models.register("m", tmp_path / "missing"), NotFound,
         "no such file or folder"),
        (lambda: ws.models.register("m", empty), InvalidInput, "is empty"),
        (lambda: ws.models.register("m", broken), InvalidInput, "'link.bin'.*broken symlink"),
        (lambda: ws.models.get("ok", 7), NotFound, r"model 'ok' has no version 7 \(versions: 1\)"),
        (lambda: ws.models.get("nope"), NotFound, "no model named 'nope'.*models: ok"),
        (lambda: ws.models.get("ok", 0), InvalidInput, "start at 1"),
        (lambda: ws.models.get("ok:1", 2), InvalidInput, "already names a version"),
        (lambda: ws.models.get("ok").set_alias("latest"), InvalidInput, "always means"),
        (lambda: ws.models.get("ok").set_alias("two words"), InvalidInput, "an alias is a word"),
        (lambda: ws.models.get("ok").set_tags({"k": object()}), InvalidInput, "string or a number"),
        (lambda: ws.models.register("m", make_model(tmp_path / "m2"), tags=["x"]),
         InvalidInput, "tags must be a dict"),
    ]
    for call, error, message in cases:
        with pytest.raises(error, match=message):
            call()
    assert state(ws)[0] == before[0]
    assert state(ws)[1] == before[1]


def test_download_checks_hashes_and_leaves_nothing_on_corruption(ws, tmp_path) -> None:
    model = ws.models.register("m", make_model(tmp_path / "m"))
    (model.local_path() / "weights.bin").write_bytes(b"tampered")
    dest = tmp_path / "out"
    with pytest.raises(WorkspaceError, match="does not match its recorded hash"):
        model.download(dest)
    assert not dest.exists() and list(tmp_path.glob(".out*")) == []


def test_gc_removes_only_unreferenced_folders(ws, tmp_path) -> None:
    model = ws.models.register("m", make_model(tmp_path / "m"))
    orphan = Path(ws.artifacts.root) / "models" / "m" / "deadbeef"
    orphan.mkdir()
    (orphan / "half.bin").write_bytes(b"x")
    assert ws.models.gc() == []  # too fresh: could be a registration in flight
    assert ws.models.gc(older_than=0) == ["models/m/deadbeef"]
    assert not orphan.exists() and model.local_path().exists()


def test_registry_on_an_object_store_artifact_url(ws_dir, tmp_path, monkeypatch) -> None:
    """The same calls with artifacts behind an fsspec URL (here memory://, as s3:// would
    be): files stream through fsspec instead of the kernel's local copy."""
    import uuid

    import fsspec

    url = f"memory://mlops-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("JUPYTER_MLOPS_ARTIFACT_URL", url)
    ws = mlops.workspace()
    assert not ws.artifacts.is_local
    try:
        model = ws.models.register("remote", make_model(tmp_path / "m"))
        assert model.local_path() is None
        out = model.download(tmp_path / "out")
        assert (out / "weights.bin").read_bytes() == b"w" * 1000
        with mlops.start_run("r") as run:
            (mlops.outputs_dir() / "model.pkl").write_bytes(b"m")
        assert run.register_model("remote", "model.pkl").file_count == 1  # from the store
        (tmp_path / "p.csv").write_text(PETS)
        ds = ws.datasets.register("pets", tmp_path / "p.csv", copy=True)
        assert ds.profile["tables"]["p.csv"]["rows"] == 3
        (tmp_path / "p.csv").unlink()
        assert ds.path.read_text() == PETS  # downloaded from the store into the cache
        assert ds.path.is_relative_to(ws.location.directory / "cache")
        fs = fsspec.filesystem("memory")
        orphan = f"{ws.artifacts.root}/models/remote/orphan"
        fs.pipe(f"{orphan}/half.bin", b"x")
        assert ws.models.gc(older_than=0) == ["models/remote/orphan"]
        assert [m.version for m in ws.models.list("remote")] == [2, 1]
    finally:
        fsspec.filesystem("memory").rm(ws.artifacts.root, recursive=True)


# -- datasets -------------------------------------------------------------------------------

PETS = "name,age,weight,kind\nrex,3,12.5,dog\ntom,5,,cat\nbo,1,3.25,dog\n"


def test_dataset_versions_follow_content_and_profile_csv(any_ws, tmp_path) -> None:
    ws = any_ws  # on SQLite and PostgreSQL
    csv = tmp_path / "pets.csv"
    csv.write_text(PETS)
    v1 = ws.datasets.register("pets", csv, description="three pets", tags={"src": "survey"})
    assert (v1.version, v1.kind, v1.file_count, v1.copied) == (1, "file", 1, False)
    assert v1.path == csv.resolve() and v1.uri == str(csv.resolve())
    table = v1.profile["tables"]["pets.csv"]
    assert (table["format"], table["rows"], table["columns"]) == ("csv", 3, 4)
    by_name = {c["name"]: c for c in table["schema"]}
    assert by_name["age"] == {"name": "age", "dtype": "int64", "nulls": 0, "min": 1, "max": 5,
                              "mean": 3}
    assert by_name["weight"]["nulls"] == 1 and by_name["weight"]["max"] == 12.5
    assert "min" not in by_name["kind"]
    assert v1.profile["files"] == 1 and v1.profile["bytes"] == len(PETS)

    assert ws.datasets.register("pets", csv) == v1  # unchanged content: the current version
    csv.write_text(PETS + "kit,0,0.5,cat\n")
    v2 = ws.datasets.register("pets", csv)
    assert v2.version == 2 and v2.profile["tables"]["pets.csv"]["rows"] == 4
    assert ws.datasets.get("pets").version == 2
    assert ws.datasets.get("pets:1").sha256 == v1.sha256 != v2.sha256
    assert [d.ref for d in ws.datasets.list()] == ["pets:2", "pets:1"]
    assert [d.ref for d in ws.datasets.list(tags={"src": "survey"})] == ["pets:1"]
    assert v2.to_pandas().shape == (4, 4)
    assert "4 rows x 4 columns" in v2._repr_html_()

    # A reference edited in place no longer is its version: refused, not silently read.
    with pytest.raises(Conflict, match=r"pets:1 at .*pets.csv changed since it was registered"):
        ws.datasets.get("pets:1").path  # noqa: B018
    os.utime(csv, ns=(1, 1))  # touched, same content: still fine
    assert ws.datasets.get("pets:2").path == csv.resolve()
    csv.write_text(PETS.replace("rex", "max"))
    with pytest.raises(Conflict, match="register it again"):
        ws.datasets.get("pets:2").verify()


def test_copy_snapshots_survive_the_origin_and_references_say_when_they_vanished(
    ws, tmp_path
) -> None:
    folder = tmp_path / "pets"
    folder.mkdir()
    (folder / "a.csv").write_text(PETS)
    (folder / "notes.txt").write_text("hello")
    ref = ws.datasets.register("pets", folder)
    snap = ws.datasets.register("pets", folder, copy=True)
    assert snap.version == 2 and snap.copied and snap.sha256 == ref.sha256
    assert Path(ws.artifacts.root) in snap.path.parents
    assert sorted(p.name for p in snap.path.iterdir()) == ["a.csv", "notes.txt"]
    assert ws.datasets.register("pets", folder, copy=True) == snap  # unchanged: same version

    (folder / "a.csv").unlink()
    (folder / "notes.txt").unlink()
    folder.rmdir()
    assert (snap.path / "a.csv").read_text() == PETS
    with pytest.raises(NotFound) as info:
        ref.path  # noqa: B018
    message = str(info.value)
    assert "dataset pets:1" in message and str(folder) in message and "no longer exists" in message
    before = state(ws)
    with pytest.raises(NotFound, match="no such file or folder"):
        ws.datasets.register("pets", folder)
    assert state(ws) == before


def test_parquet_and_folder_profiles(ws, tmp_path) -> None:
    import pandas as pd  # Parquet needs pyarrow: part of the test extra
    folder = tmp_path / "tables"
    folder.mkdir()
    frame = pd.DataFrame({"x": [1.0, 2.0, None, 4.0], "y": [1, 2, 3, 4], "s": list("abcd")})
    frame.to_parquet(folder / "part.parquet")
    (folder / "broken.csv").write_bytes(b'a,b\n1,"unterminated\n')
    ds = ws.datasets.register("tables", folder)
    parquet = ds.profile["tables"]["part.parquet"]
    assert (parquet["rows"], parquet["columns"]) == (4, 3)
    by_name = {c["name"]: c for c in parquet["schema"]}
    assert by_name["x"]["nulls"] == 1 and by_name["x"]["mean"] == pytest.approx(7 / 3, rel=1e-5)
    assert by_name["y"]["dtype"] == "int64" and by_name["y"]["max"] == 4
    assert "error" in ds.profile["tables"]["broken.csv"]  # described, not fatal


def test_remote_dataset_is_downloaded_once_and_checked(ws, tmp_path) -> None:
    import fsspec

    fs = fsspec.filesystem("memory")
    fs.pipe("/bucket/pets/a.csv", PETS.encode())
    fs.pipe("/bucket/pets/b.csv", PETS.encode())
    try:
        ds = ws.datasets.register("remote", "memory://bucket/pets")
        assert ds.uri == "memory://bucket/pets" and ds.file_count == 2
        local = ds.path
        assert local.is_dir() and (local / "a.csv").read_text() == PETS
        assert ds.path == local  # cached
        fs.pipe("/bucket/pets/a.csv", b"changed")
        ws_cache = ws.location.directory / "cache"
        import shutil

        shutil.rmtree(ws_cache)
        with pytest.raises(Conflict, match="changed since it was registered"):
            ws.datasets.get("remote:1").path  # noqa: B018
        assert not any(ws_cache.rglob("*.csv"))
        fs.rm("/bucket/pets", recursive=True)
        with pytest.raises(NotFound, match=r"remote:1.*memory://bucket/pets.*no longer exists"):
            ws.datasets.get("remote:1").path  # noqa: B018
    finally:
        if fs.exists("/bucket"):
            fs.rm("/bucket", recursive=True)


def test_bad_dataset_input(ws, tmp_path) -> None:
    (tmp_path / "d.csv").write_text(PETS)
    ws.datasets.register("d", tmp_path / "d.csv")
    before = state(ws)
    for call, error, message in [
        (lambda: ws.datasets.register("a/b", tmp_path / "d.csv"), InvalidInput, "path separator"),
        (lambda: ws.datasets.register("x", tmp_path / "none"), NotFound, "no such file"),
        (lambda: ws.datasets.register("x", ""), InvalidInput, "non-empty"),
        (lambda: ws.datasets.get("d", 5), NotFound, r"has no version 5 \(versions: 1\)"),
        (lambda: ws.datasets.get("d:production"), InvalidInput, "number or 'latest'"),
        (lambda: ws.datasets.get("zzz"), NotFound, "no dataset named 'zzz'"),
        (lambda: mlops.dataset("zzz"), NotFound, "no dataset named 'zzz'"),
    ]:
        with pytest.raises(error, match=message):
            call()
    assert state(ws) == before


# -- lineage and environment ----------------------------------------------------------------


def make_sweep_trial(ws, *, sweep_name: str, trial: int, params: dict) -> str:
    """A sweep and one of its trial runs, written straight to the store (as the sweep
    controller would)."""
    import time

    from jupyter_mlops.store import _schema as t

    sweep_id = new_run_id()
    with ws.store.write() as conn:
        conn.execute(t.sweeps.insert().values(
            id=sweep_id, name=sweep_name, experiment_id=ws.store.experiment_id(conn, "sweeps"),
            status="completed", created_at=time.time(),
            spec={"metric": "accuracy", "goal": "max", "trials": 8, "sampler": "tpe",
                  "space": {"lr": "loguniform(1e-4,1e-1)"}}))
    run_id = new_run_id()
    ws.store.create_run(run_id, f"{sweep_name}-trial-{trial}", "sweeps", status="completed",
                        kind="cell", source="sweep of a notebook cell", params=params,
                        sweep_id=sweep_id, trial_number=trial,
                        environment={"python": "3.11.7", "platform": "Linux-x86_64",
                                     "gpus": ["GPU 0: Test GPU"], "packages": {"numpy": "2.0"}})
    ws.store.log_metrics(run_id, [("accuracy", 0, 0.97, time.time())])
    nb = {"cells": [{"cell_type": "code", "metadata": {"tags": ["mlops-cell"]},
                     "source": "model = train(lr)\n", "outputs": []}], "metadata": {},
          "nbformat": 4, "nbformat_minor": 5}
    for path, data in (("notebook.ipynb", json.dumps(nb).encode()),
                       ("outputs/model.pkl", b"trained"), ("history.py", b"# In[1]\n")):
        size, digest = ws.artifacts.put_bytes(run_id, path, data)
        ws.store.record_artifact(run_id, path, size, digest)
    return run_id


def test_lineage_of_a_model_made_by_a_sweep_trial_that_read_a_dataset(ws, tmp_path) -> None:
    csv = tmp_path / "pets.csv"
    csv.write_text(PETS)
    ws.datasets.register("pets", csv)
    csv.write_text(PETS + "kit,0,0.5,cat\n")
    pets2 = ws.datasets.register("pets", csv)
    run_id = make_sweep_trial(ws, sweep_name="lr-search", trial=4, params={"lr": 0.01})
    ws.datasets.record_input(run_id, pets2)
    ws.datasets.record_input(run_id, pets2)  # idempotent
    model = ws.get_run(run_id).register_model("mnist", "model.pkl")
    model.set_alias("staging")

    lin = ws.lineage(model="mnist:1")
    assert lin.model["ref"] == "mnist:1" and lin.model["aliases"] == ["staging"]
    assert lin.run["id"] == run_id and lin.run["status"] == "completed"
    assert lin.params == {"lr": 0.01} and lin.metrics == {"accuracy": 0.97}
    assert lin.code["artifacts"] == ["notebook.ipynb", "history.py"]
    assert lin.environment["gpus"] == ["GPU 0: Test GPU"]
    assert [(d["ref"], d["sha256"]) for d in lin.datasets] == [("pets:2", pets2.sha256)]
    assert lin.sweep["name"] == "lr-search" and lin.sweep["trial_number"] == 4
    assert (lin.sweep["metric"], lin.sweep["goal"], lin.sweep["trials"]) == ("accuracy", "max", 8)
    assert ws.get_run(run_id).inputs() == [pets2] and pets2.runs()[0].id == run_id
    assert model.lineage().to_dict() == lin.to_dict()

    text = lin.text()
    assert text.splitlines()[0].startswith("model mnist:1  sha256 ")
    for part in (f"└── run lr-search-trial-4 ({run_id})", "├── params: lr=0.01",
                 "code: sweep of a notebook cell → notebook.ipynb, history.py",
                 "GPUs: GPU 0: Test GPU", "│   └── pets:2  sha256 " + pets2.sha256[:12],
                 "└── sweep lr-search", "trial 4 of 8 · metric accuracy (max)"):
        assert part in text, (part, text)
    html = lin._repr_html_()
    assert html.count("<ul") >= 3 and "pets:2" in html and "lr-search" in html

    # A model without a run says so; lineage by run works as well.
    local = ws.models.register("plain", csv)
    assert "no run recorded" in ws.lineage(model=local).text()
    assert ws.lineage(run=run_id).sweep["id"] == lin.sweep["id"]
    with pytest.raises(InvalidInput, match="one of them"):
        ws.lineage()


def test_environment_and_runs_diff(any_ws, tmp_path) -> None:
    ws = any_ws  # on SQLite and PostgreSQL
    with mlops.start_run("a", params={"lr": 0.1, "epochs": 3}) as a:
        mlops.log("acc", 0.8)
    with mlops.start_run("b", params={"lr": 0.2, "epochs": 3, "seed": 1}) as b:
        mlops.log("acc", 0.9)
    env = a.environment
    assert env["python"] and env["platform"] and "gpus" in env and "pandas" in env["packages"]
    changed = {**env, "packages": {**env["packages"], "numpy": "0.0.1", "newpkg": "1.0"}}
    changed["packages"].pop("pandas")
    ws.store.update_run(b.id, environment=changed)
    for run, code in ((a, "x = 1\nfit(x)\n"), (b, "x = 2\nfit(x)\n")):
        nb = {"cells": [{"cell_type": "code", "metadata": {"tags": ["parameters"]},
                         "source": "lr = 0", "outputs": []},
                        {"cell_type": "code", "metadata": {}, "source": code, "outputs": []}],
              "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
        size, digest = ws.artifacts.put_bytes(run.id, "notebook.ipynb", json.dumps(nb).encode())
        ws.store.record_artifact(run.id, "notebook.ipynb", size, digest)

    diff = ws.diff_runs(a, b.id)
    assert diff.params == [("lr", 0.1, 0.2), ("seed", None, 1)]
    assert diff.metrics == [("acc", 0.8, 0.9)]
    packages = dict((k, (x, y)) for k, x, y in diff.packages)
    assert packages["numpy"][1] == "0.0.1" and packages["newpkg"] == (None, "1.0")
    assert packages["pandas"] == (env["packages"]["pandas"], None)
    assert "-x = 1" in diff.code and "+x = 2" in diff.code
    assert not any("lr = 0" in line for line in diff.code)  # the parameters are params
    assert not diff.identical and ws.diff_runs(a, a).identical

    result = cli("runs", "diff", a.id, b.id)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "lr    0.1  →  0.2" in out and "seed  —  →  1" in out and "acc  0.8  →  0.9" in out
    assert "newpkg" in out and "-x = 1" in out and "+x = 2" in out and "datasets: same" in out
    as_json = json.loads(cli("runs", "diff", a.id, b.id, "--json").stdout)
    assert as_json["params"][0] == {"key": "lr", "a": 0.1, "b": 0.2}
    missing = cli("runs", "diff", a.id, "nope")
    assert missing.returncode == 2 and "no run matches 'nope'" in missing.stderr


# -- CLI and magics -------------------------------------------------------------------------


def test_cli_models_and_datasets(ws, ws_dir, tmp_path, main) -> None:
    src = make_model(tmp_path / "m")
    with mlops.start_run("maker") as run:
        mlops.log("accuracy", 0.91)
        (mlops.outputs_dir() / "model.pkl").write_bytes(b"model")
    env = {"JUPYTER_MLOPS_WORKSPACE": str(ws_dir)}
    reg = cli("models", "register", "mnist", str(src), "--tag", "team=vision",
              "--description", "cli model", env=env)
    assert reg.returncode == 0 and "registered mnist:1" in reg.stdout, reg.stderr
    from_run = cli("models", "register", "mnist", "model.pkl", "--run", run.id, "--json",
                   env=env)
    assert json.loads(from_run.stdout)["run_id"] == run.id, from_run.stderr
    # A release gate on the run behind a model version (exit 1 when it does not hold).
    code, out, _ = main("gate", "--model", "mnist:2", "--metric", "accuracy", "--min", "0.9")
    assert code == 0 and f"gate passed: accuracy of model mnist:2 (run {run.id}) = 0.91" in out
    code, out, _ = main("gate", "--model", "mnist", "--metric", "accuracy", "--min", "0.95")
    assert code == 1 and "below the minimum 0.95" in out
    code, _, err = main("gate", "--model", "mnist:1", "--metric", "accuracy", "--min", "0.5")
    assert code == 2 and "not from a run: it has no metrics" in err
    code, _, err = main("gate", "--run", run.id, "--model", "mnist", "--metric", "a", "--min", "0")
    assert code == 2 and "--run RUN or --model NAME[:VERSION] (one of them)" in err
    assert main("models", "tag", "mnist:1", "stage=prod", "--alias", "production")[0] == 0
    listing = cli("models", "ls", env=env).stdout
    assert "NAME" in listing and "mnist  2" in listing and "production" in listing
    assert json.loads(main("models", "ls", "--tag", "stage=prod", "--json")[1])[0]["version"] == 1
    show = main("models", "show", "mnist:production")[1]
    assert "Model mnist:1" in show and "weights.bin" in show and "lineage:" in show
    dest = tmp_path / "downloaded"
    down = cli("models", "download", "mnist:1", str(dest), env=env)
    assert down.returncode == 0 and (dest / "weights.bin").exists()
    assert main("models", "download", "mnist:1", str(dest))[0] == 0
    assert (dest / "m" / "weights.bin").exists()  # dest is a folder now: the model goes inside
    code, _, err = main("models", "download", "mnist:1", str(dest))
    assert code == 2 and "already exists" in err

    csv = tmp_path / "pets.csv"
    csv.write_text(PETS)
    first = cli("datasets", "register", "pets", str(csv), "--description", "pets", env=env)
    assert first.returncode == 0 and "registered pets:1" in first.stdout
    assert "unchanged: pets:1" in main("datasets", "register", "pets", str(csv))[1]
    assert "pets  1" in main("datasets", "ls")[1]
    shown = cli("datasets", "show", "pets", env=env).stdout
    assert "3 rows x 4 columns" in shown and "weight" in shown and "(reference)" in shown

    refused = cli("models", "register", "bad/name", str(src), env=env)  # through `jupyter`
    assert refused.returncode == 2 and "path separator" in refused.stderr
    before = state(ws)
    for args, message in [  # the same code path, in this process (each launch costs ~1.5 s)
        (["models", "register", "bad/name", str(src)], "path separator"),
        (["models", "register", "x", str(tmp_path / "missing")], "no such file or folder"),
        (["models", "show", "mnist:9"], "has no version 9"),
        (["models", "download", "nope"], "no model named 'nope'"),
        (["models", "tag", "mnist:1"], "needs KEY=VALUE"),
        (["models", "delete", "mnist"], "explicit version number"),
        (["datasets", "show", "pets:4"], "has no version 4"),
        (["datasets", "register", "p q", str(csv)], "contains spaces"),
        (["models", "frob"], "invalid choice"),
    ]:
        code, out, err = main(*args)
        assert code == 2, (args, out, err)
        assert message in err, (args, err)
        assert len(err.strip().splitlines()) == 1, err
    assert state(ws) == before
    assert main("models", "delete", "mnist:2")[1].strip() == "deleted mnist:2"


@pytest.fixture
def main(capsys):
    """``jupyter mlops ARGS`` in this process: (exit code, stdout, stderr)."""
    from jupyter_mlops.cli import main as cli_main

    def call(*args: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = cli_main(list(args))
        out, err = capsys.readouterr()
        return code, out, err

    return call


def test_mlops_magic_models_and_datasets(ws_dir, ws, tmp_path, capsys) -> None:
    from IPython.core.error import UsageError
    from IPython.testing.globalipapp import get_ipython

    shell = get_ipython()
    shell.run_line_magic("load_ext", "jupyter_mlops")
    assert shell.run_line_magic("mlops", "models") is None
    assert "no models registered yet" in capsys.readouterr().out
    ws.models.register("mnist", make_model(tmp_path / "m"))
    (tmp_path / "p.csv").write_text(PETS)
    ws.datasets.register("pets", tmp_path / "p.csv")
    frame = shell.run_line_magic("mlops", "models")
    assert list(frame["name"]) == ["mnist"]
    assert list(shell.run_line_magic("mlops", "datasets pets")["version"]) == [1]
    lineage = shell.run_line_magic("mlops", "models mnist:1")
    assert lineage.model["ref"] == "mnist:1"
    assert shell.run_line_magic("mlops", "datasets pets:1").ref == "pets:1"
    with pytest.raises(UsageError, match="no model named 'nope'"):
        shell.run_line_magic("mlops", "models nope")
    with pytest.raises(UsageError, match="has no version 3"):
        shell.run_line_magic("mlops", "datasets pets:3")


# -- file safety: links and destinations ----------------------------------------------------


def test_links_out_of_a_registered_folder_are_refused_with_the_reason(ws, tmp_path) -> None:
    outside = tmp_path / "outside"
    (outside / "dir").mkdir(parents=True)
    (outside / "secret.txt").write_text("not yours")
    (outside / "dir" / "more.txt").write_text("not yours either")
    cases = {
        "file-link": ("secret.txt", outside / "secret.txt"),
        "dir-link": ("data", outside / "dir"),
        "relative-link": ("sneaky", Path("../../../outside/secret.txt")),
        "parent-link": ("up", Path("../..")),  # the folder holding the model folder
    }
    before = state(ws)
    for case, (link, target) in cases.items():
        folder = make_model(tmp_path / case / "model")
        (folder / "conf" / link).symlink_to(target)
        shown = f"conf/{link}"
        for register in (ws.models.register, ws.datasets.register):
            with pytest.raises(InvalidInput) as info:
                register("linked", folder)
            message = str(info.value)
            assert f"{shown!r} is a link to" in message and "outside" in message, message
            assert "copy" in message and "\n" not in message  # what to do, in one line
    assert state(ws) == before


def test_links_inside_a_registered_folder_are_followed(ws, tmp_path) -> None:
    folder = make_model(tmp_path / "model")
    (folder / "alias.bin").symlink_to("weights.bin")
    (folder / "same-conf").symlink_to(folder / "conf")  # absolute, but inside
    model = ws.models.register("inner-links", folder)
    assert [f["path"] for f in model.files()] == [
        "alias.bin", "conf/config.json", "same-conf/config.json", "weights.bin"]
    out = model.download(tmp_path / "copy")
    assert (out / "alias.bin").read_bytes() == (folder / "weights.bin").read_bytes()
    assert (out / "same-conf" / "config.json").read_text() == "{}"
    # A link back up the tree would be followed forever: refused, saying so.
    (folder / "conf" / "loop").symlink_to("..")
    with pytest.raises(InvalidInput, match=r"'conf/loop' is a link to .* loop"):
        ws.models.register("inner-links", folder)


def test_download_under_an_existing_file_is_a_one_line_error(ws, tmp_path, main) -> None:
    model = ws.models.register("m", make_model(tmp_path / "model"))
    blocker = tmp_path / "existing-file"
    blocker.write_text("keep me")
    for dest in (blocker / "sub" / "x", blocker / "x", f"{blocker}/"):
        with pytest.raises(InvalidInput, match="is a file, not a folder") as info:
            model.download(dest)
        assert str(blocker) in str(info.value)
    code, _, err = main("models", "download", "m:1", str(blocker / "sub" / "x"))
    assert code == 2 and "is a file, not a folder" in err and len(err.strip().splitlines()) == 1
    with mlops.start_run("maker") as run:
        (mlops.outputs_dir() / "model.pkl").write_bytes(b"model")
    with pytest.raises(InvalidInput, match="is a file, not a folder"):
        run.download("outputs/model.pkl", blocker / "sub" / "x")
    with pytest.raises(InvalidInput, match="it is a file, not a folder"):
        run.download("outputs", blocker)  # a folder of artifacts into a file
    assert blocker.read_text() == "keep me"  # nothing lost
    assert sorted(p.name for p in tmp_path.iterdir()) == ["existing-file", "model", "ws"]


def test_registering_without_kernel_copies_hashes_what_was_written(ws, tmp_path,
                                                                   monkeypatch) -> None:
    """After a copy across filesystems (EXDEV) the copier falls back to read/write for the
    rest of the process: the hashing thread must still see every byte it is told about."""
    from jupyter_mlops.registry import _files

    monkeypatch.setattr(_files, "_KERNEL_COPY", False)
    folder = tmp_path / "m"
    folder.mkdir()
    payload = bytes(range(256)) * 40_000  # 10 MB, several segments
    (folder / "weights.bin").write_bytes(payload)
    (folder / "small.txt").write_text("x")
    model = ws.models.register("fallback", folder)
    out = model.download(tmp_path / "out")
    assert (out / "weights.bin").read_bytes() == payload
    import hashlib

    files = {f["path"]: f["sha256"] for f in model.files()}
    assert files["weights.bin"] == hashlib.sha256(payload).hexdigest()
