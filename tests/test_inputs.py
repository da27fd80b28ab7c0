"""One set of input rules on every surface: names, parameter names and parameter values are
refused (or normalised) the same way by the API, the CLI and the magics; magic flags split
like a shell line."""

from __future__ import annotations

import sqlite3
import unicodedata
from enum import IntEnum
from pathlib import Path

import pytest
from IPython.core.error import UsageError

import jupyter_mlops as mlops
from jupyter_mlops._inputs import check_name, check_param_name, check_value, parse_value
from jupyter_mlops.errors import InvalidInput

from .conftest import cli, make_notebook

BAD_NAMES = [
    ("a\r\nb", "control character"),
    ("a\tb", "control character"),
    ("a\x1b[31mb", "control character"),
    ("evil\u202etxt.exe", "invisible formatting"),  # right-to-left override
    ("a\u200bb", "invisible formatting"),  # zero-width space
    ("a\u2060b", "invisible formatting"),  # word joiner
    ("\ufeffname", "invisible formatting"),  # byte order mark
    ("a\u2028b", "line separator"),
    ("a\ud800b", "lone surrogate"),
]

BAD_PARAM_NAMES = [
    ("class", "Python keyword"),
    ("not a name", "is not a name"),
    ("1x", "is not a name"),
    ("x-y", "is not a name"),
    ("__builtins__", "taken by the job notebook"),
    ("globals", "taken by the job notebook"),
    ("_", "taken by the job notebook"),
    ("_i2", "taken by the job notebook"),
    ("In", "taken by the job notebook"),
    ("\ufb01le", "would become the variable 'file'"),  # the "fi" ligature
]

BAD_VALUES = [
    ("b'x'", "is a bytes"),
    ("{1, 2}", "is a set"),
    ("1j", "is a complex"),
    ("1e999", "finite numbers"),
]


# -- the rules themselves ----------------------------------------------------------------


@pytest.mark.parametrize(("name", "message"), BAD_NAMES)
def test_names_with_control_bidi_or_invisible_characters_are_refused(name: str, message: str
                                                                     ) -> None:
    with pytest.raises(InvalidInput, match=message) as info:
        check_name(name)
    assert "\n" not in str(info.value) and "\r" not in str(info.value)


def test_names_are_nfc_and_stripped() -> None:
    decomposed = "cafe\u0301"
    assert check_name(decomposed) == unicodedata.normalize("NFC", decomposed) == "caf\u00e9"
    assert check_name("  padded  ") == "padded"
    assert check_name("\u00a0nbsp\u00a0") == "nbsp"
    assert check_name("two  words") == "two  words"  # inside, spaces are the user's
    with pytest.raises(InvalidInput, match="must not be empty"):
        check_name("   ")


@pytest.mark.parametrize(("name", "message"), BAD_PARAM_NAMES)
def test_parameter_names_that_break_the_job_are_refused(name: str, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        check_param_name(name)


@pytest.mark.parametrize("name", ["lr", "match", "type", "case", "_private", "x1", "\u00e9t\u00e9"])
def test_ordinary_parameter_names_pass(name: str) -> None:
    assert check_param_name(name) == name


@pytest.mark.parametrize(("text", "message"), BAD_VALUES)
def test_literals_parameters_cannot_hold_are_refused_with_the_text_form(text: str, message: str
                                                                       ) -> None:
    with pytest.raises(InvalidInput, match=message) as info:
        parse_value(text, "x")
    assert "quoted Python string" in str(info.value)


def test_values_are_read_as_literals_else_text() -> None:
    assert parse_value("0.01", "x") == 0.01
    assert parse_value("[1, (2, 3)]", "x") == [1, [2, 3]]
    assert parse_value("'b\\'x\\''", "x") == "b'x'"
    assert parse_value("a b", "x") == "a b"
    assert parse_value("nan", "x") == "nan"  # not a literal: the text


def test_values_become_plain_json_types() -> None:
    import numpy as np

    class Level(IntEnum):
        HIGH = 3

    for value, plain in [(np.float64(1.5), 1.5), (np.int64(2), 2), (np.str_("s"), "s"),
                         (Level.HIGH, 3), (np.bool_(True), True), ((1, 2), [1, 2])]:
        got = check_value("x", value)
        assert got == plain and type(got) is type(plain), (value, got)
        assert eval(repr(got)) == plain  # the job notebook writes values with repr
    for bad in [float("nan"), float("inf"), {1: "a"}, {1, 2}, b"x", 1j, object()]:
        with pytest.raises(InvalidInput):
            check_value("x", bad)


# -- the API -----------------------------------------------------------------------------


def _count_runs(ws_dir: Path) -> int:
    db = ws_dir / "mlops.db"
    if not db.exists():
        return 0
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT count(*) FROM runs").fetchone()[0]


def test_api_refuses_bad_names_params_and_values_storing_nothing(ws, ws_dir: Path) -> None:
    cases = [
        {"name": "a\r\nb"}, {"experiment": "e\u202ex"}, {"params": {"class": 1}},
        {"params": {"x": b"x"}}, {"params": {"x": {1, 2}}}, {"params": {"x": 1j}},
        {"params": {"x": float("nan")}}, {"params": {"__name__": 1}},
    ]
    for kwargs in cases:
        with pytest.raises(InvalidInput):
            ws.submit("print(1)", **kwargs)
    with pytest.raises(InvalidInput, match="control character"):
        mlops.start_run("a\nb")
    with pytest.raises(InvalidInput, match="invisible formatting"):
        mlops.start_run("ok", experiment="a\u200bb")
    with pytest.raises(InvalidInput, match="Python keyword"):
        ws.sweep("pass", params={"class": "choice(1, 2)"}, metric="m", namespace={})
    with pytest.raises(InvalidInput, match="is a bytes"):
        ws.sweep("pass", params={"x": "choice(b'x', 1)"}, metric="m", namespace={})
    with pytest.raises(InvalidInput, match="is not a name"):
        ws.sweep("pass", params=["not a name=choice(1, 2)"], metric="m", namespace={})
    assert _count_runs(ws_dir) == 0 and ws.sweeps() == []


def test_a_stored_name_is_found_as_it_was_typed(ws) -> None:
    decomposed = "re\u0301sume\u0301"  # as macOS keyboards often type it
    with mlops.start_run("  padded  ", experiment="  team exp  ") as padded:
        pass
    with mlops.start_run(decomposed, experiment=decomposed) as accented:
        pass
    assert padded.name == "padded" and padded.experiment == "team exp"
    for ref in ("padded", "  padded  ", "padded\u00a0"):
        assert ws.get_run(ref) == padded
    for ref in (decomposed, unicodedata.normalize("NFC", decomposed), f" {decomposed} "):
        assert ws.get_run(ref) == accented
    assert ws.runs(experiment="  team exp ") == [padded]
    assert ws.runs(experiment="team exp") == [padded]
    assert ws.runs(experiment=decomposed) == [accented]
    assert len(ws.runs_dataframe(experiment=f" {decomposed}")) == 1


# -- the CLI -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cli_ws(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("inputs-cli")
    nb = make_notebook(root / "nb.ipynb", "print(x)", parameters="x = 0")
    return root / "ws", nb


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--name", "a\r\nb"], "contains a control character"),
        (["--name", "a\u202eb"], "invisible formatting"),
        (["--experiment", "x\u200by"], "invisible formatting"),
        (["-p", "class", "1"], "Python keyword"),
        (["-p", "__name__", "1"], "taken by the job notebook"),
        (["-p", "x", "b'x'"], "is a bytes"),
        (["-p", "x", "{1, 2}"], "is a set"),
        (["-p", "x", "1j"], "is a complex"),
        (["-p", "x", "1", "-p", "x", "2"], "given twice"),
    ],
)
def test_cli_refuses_in_one_line_with_exit_2(cli_ws: tuple[Path, Path], args: list[str],
                                             message: str) -> None:
    ws_dir, nb = cli_ws
    result = cli("run", str(nb), "--no-wait", *args,
                 env={"JUPYTER_MLOPS_WORKSPACE": str(ws_dir)})
    assert result.returncode == 2, result.stderr
    lines = [ln for ln in result.stderr.splitlines() if "Warning" not in ln and ln.strip()
             and not ln.startswith("  _validate")]  # nbformat's warning about cell ids
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert "Traceback" not in result.stderr
    assert _count_runs(ws_dir) == 0


def test_cli_padded_name_is_stored_stripped_and_found_padded(ws_dir: Path, tmp_path: Path
                                                             ) -> None:
    nb = make_notebook(tmp_path / "nb.ipynb", "print(x)", parameters="x = 0")
    result = cli("run", str(nb), "--name", "  padded  ", "--experiment", " exp ",
                 "-p", "x", "'text with spaces'")
    assert result.returncode == 0, result.stderr
    shown = cli("runs", "show", "  padded  ", "--json")
    assert shown.returncode == 0, shown.stderr
    import json

    record = json.loads(shown.stdout)
    assert record["name"] == "padded" and record["experiment"] == "exp"
    assert record["params"] == {"x": "text with spaces"}
    listed = cli("runs", "ls", "--experiment", "exp ")
    assert listed.returncode == 0 and "padded" in listed.stdout
    assert len(listed.stdout.strip().splitlines()) == 3  # header, rule, the run


# -- the magics --------------------------------------------------------------------------


@pytest.fixture
def ip(ws_dir: Path):
    from IPython.testing.globalipapp import get_ipython

    shell = get_ipython()
    shell.run_line_magic("load_ext", "jupyter_mlops")
    saved = dict(shell.user_ns)
    yield shell
    shell.user_ns.clear()
    shell.user_ns.update(saved)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("--name 'a\r\nb'", "control character"),
        ("--name 'a\u202eb'", "invisible formatting"),
        ("-p class=1", "Python keyword"),
        ("-p _=1", "taken by the job notebook"),
        ("-p \"x=b'x'\"", "is a bytes"),
        ("-p 'x={{1, 2}}'", "is a set"),  # IPython expands {expr} in a magic's line
        ("-p x=1 -p x=2", "given twice"),
        ("-p 'title=a b", "No closing quotation"),
    ],
)
def test_train_magic_refuses_with_a_usage_error(ip, ws_dir: Path, line: str, message: str
                                               ) -> None:
    with pytest.raises(UsageError, match=message):
        ip.run_cell_magic("train", line, "pass")
    assert _count_runs(ws_dir) == 0


def test_train_magic_flags_split_like_a_shell_line(ip, ws) -> None:
    run = ip.run_cell_magic(
        "train",
        "--wait --name \"my run\" -p \"title=a b\" -p 'pair=(1, 2)' -p quoted=\"'x y'\" "
        "--tag 'note=two words' --outputs echoed",
        "echoed = (title, pair, quoted)")
    assert run.status == "completed" and run.name == "my run"
    assert run.params == {"title": "a b", "pair": [1, 2], "quoted": "x y"}
    assert run.tags == {"note": "two words"}
    assert ip.user_ns["echoed"] == ("a b", [1, 2], "x y")


def test_sweep_magic_takes_quoted_expressions_with_spaces(ip, ws, monkeypatch) -> None:
    monkeypatch.setenv("JUPYTER_MLOPS_CPU_SLOTS", "2")
    sweep = ip.run_cell_magic(
        "sweep", "--param \"lr=choice(0.1, 0.2)\" --param 'tag=choice(\"a b\", \"c\")' "
        "-p \"label=x y\" --metric m --sampler grid --name 'quoted sweep' --wait",
        "import jupyter_mlops as mlops\nmlops.log('m', lr)\nassert label == 'x y'")
    assert sweep.status == "completed" and sweep.name == "quoted sweep"
    rows = sweep.trial_rows()
    assert sorted((r["params"]["lr"], r["params"]["tag"]) for r in rows) == [
        (0.1, "a b"), (0.1, "c"), (0.2, "a b"), (0.2, "c")]
    assert all(r["status"] == "completed" for r in rows)
