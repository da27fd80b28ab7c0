"""``jupyter mlops ...`` (also ``jupyter-mlops``): run notebooks and inspect the workspace.

Exit codes: 0 success, 1 a run failed or a gate did not hold, 2 usage errors (a bad flag,
a missing notebook or run, an unusable workspace) — the one-line message says which.
"""

from __future__ import annotations

import argparse
import ast
import json
import math
import sys
import time
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from .errors import InvalidInput, MlopsError, NotFound
from ._fastimport import skip_slow_optional_imports

skip_slow_optional_imports()

EXIT_FAILED, EXIT_USAGE = 1, 2


class UsageError(Exception):
    """A mistake in the command line: message printed, exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2, like every other usage error
        raise UsageError(f"{self.prog}: {message}")


def parse_value(text: str) -> Any:
    """A parameter value as papermill's CLI reads it: a Python literal, else the string."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return text


def parse_params(pairs: Sequence[Sequence[str]] | None) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for pair in pairs or []:
        name, value = pair
        if not name.isidentifier():
            raise UsageError(
                f"-p takes a parameter name and a value (-p lr 0.01); {name!r} is not a name"
            )
        params[name] = parse_value(value)
    return params


def parse_tags(items: Sequence[str] | None) -> dict[str, Any]:
    tags = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--tag takes key=value, got {item!r}")
        tags[key] = value
    return tags


# -- formatting ---------------------------------------------------------------------------


def fmt_value(value: Any) -> str:
    if isinstance(value, float):
        return str(value) if math.isnan(value) or math.isinf(value) else f"{value:.6g}"
    return "" if value is None else str(value)


def fmt_time(ts: float | None) -> str:
    return datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S") if ts else ""


def fmt_duration(row: dict[str, Any]) -> str:
    start, end = row.get("started_at"), row.get("ended_at") or time.time()
    if not start:
        return ""
    seconds = end - start
    return f"{seconds:.1f}s" if seconds < 120 else f"{seconds / 60:.1f}m"


def table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()
    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])


def dump_json(data: Any) -> str:
    def clean(v: Any) -> Any:
        if isinstance(v, float) and not math.isfinite(v):
            return str(v)  # JSON has no NaN/inf; "nan", "inf", "-inf" are unambiguous
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, list):
            return [clean(x) for x in v]
        return v

    return json.dumps(clean(data), indent=2, default=str)


# -- commands -----------------------------------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .jobs import read_notebook, submit_notebook
    from .workspace import workspace

    params = parse_params(args.param)
    tags = parse_tags(args.tag)
    notebook = read_notebook(args.notebook)  # before the workspace: bad input stores nothing
    path = Path(args.notebook).resolve()
    ws = workspace()
    run = submit_notebook(
        ws, notebook, name=args.name or path.stem, experiment=args.experiment,
        parameters=params, tags=tags, kind="notebook", source=str(path),
        cwd=str(path.parent), timeout=args.timeout, kernel_name=args.kernel,
    )
    if not args.wait:
        print(run.id if args.json is False else dump_json({"id": run.id, "status": "queued"}))
        return 0
    print(f"run {run.id} ({args.experiment}/{run.name}) submitted; following its log "
          "(Ctrl-C detaches, the run goes on)", file=sys.stderr)
    try:
        status = follow(ws, run.id, sys.stdout)
    except KeyboardInterrupt:
        print(f"\ndetached from run {run.id}; it goes on. Follow it with "
              f"`jupyter mlops runs logs {run.id} -f`, stop it with "
              f"`jupyter mlops runs cancel {run.id}`", file=sys.stderr)
        return 130
    row = run.info()
    metrics = run.metrics()
    summary = ", ".join(f"{k}={fmt_value(v)}" for k, v in metrics.items())
    print(f"run {run.id} {status} in {fmt_duration(row)}" + (f"; {summary}" if summary else ""),
          file=sys.stderr)
    if status != "completed" and row["error"]:
        print(row["error"].strip().splitlines()[-1], file=sys.stderr)
    if args.json:
        print(dump_json(_run_record(run)))
    return 0 if status == "completed" else EXIT_FAILED


def follow(ws: Any, run_id: str, out: Any, poll: float = 0.2) -> str:
    """Print a run's log as it grows until the run ends; returns the final status."""
    from .workspace import TERMINAL, Run

    run, last = Run(ws, run_id), 0
    while True:
        status = run.status  # read before the log, so no output written before the end is missed
        for chunk_id, _stream, text in ws.store.log_chunks(run_id, after_id=last):
            out.write(text)
            last = chunk_id
        out.flush()
        if status in TERMINAL:
            return status
        time.sleep(poll)


def _run_record(run: Any) -> dict[str, Any]:
    row = run.info()
    row.pop("environment", None)
    return {**row, "metrics": run.metrics(), "artifacts": run.artifacts()}


def cmd_runs_ls(args: argparse.Namespace) -> int:
    from .workspace import workspace

    ws = workspace()
    runs = ws.runs(experiment=args.experiment, status=args.status, limit=args.limit)
    if args.json:
        print(dump_json([{**r.info(), "metrics": r.metrics()} for r in runs]))
        return 0
    if not runs:
        print(f"no runs in {ws.location.directory}")
        return 0
    rows = []
    for run in runs:
        row = run.info()
        metrics = run.metrics()
        shown = ", ".join(f"{k}={fmt_value(v)}" for k, v in list(metrics.items())[:3])
        rows.append([row["id"], row["name"][:30], row["experiment"][:20], row["status"],
                     fmt_time(row["created_at"]), fmt_duration(row), shown])
    print(table(rows, ["ID", "NAME", "EXPERIMENT", "STATUS", "CREATED", "DURATION", "METRICS"]))
    return 0


def cmd_runs_show(args: argparse.Namespace) -> int:
    from .workspace import workspace

    run = workspace().get_run(args.run)
    if args.json:
        print(dump_json({**_run_record(run), "environment": run.environment}))
    else:
        print(format_run(run))
    return 0


def format_run(run: Any) -> str:
    """Everything about a run, for a terminal: fields, params, metrics, files, error."""
    row = run.info()
    lines = [
        f"Run {row['name']}  ({row['id']})",
        f"  experiment  {row['experiment']}",
        f"  status      {row['status']}",
        f"  kind        {row['kind']}" + (f"  {row['source']}" if row["source"] else ""),
        f"  target      {row['target'] or ''}"
        + (f"  slots: {', '.join(row['resources'].get('slots', []))}"
           if row["resources"] and row["resources"].get("slots") else ""),
        f"  created     {fmt_time(row['created_at'])}",
        f"  started     {fmt_time(row['started_at'])}",
        f"  ended       {fmt_time(row['ended_at'])}",
        f"  duration    {fmt_duration(row)}",
        f"  host/pid    {row['host'] or ''} {row['pid'] or ''}".rstrip(),
    ]
    if row["progress"]:
        p = row["progress"]
        lines.append(f"  progress    cell {p['cell']} of {p['cells']}: {p['source']}")
    for title, data in (("params", row["params"]), ("tags", row["tags"])):
        if data:
            lines.append(f"\n{title}:")
            lines += [f"  {k} = {fmt_value(v)}" for k, v in data.items()]
    latest = run.workspace.store.latest_metrics(run.id)
    if latest:
        lines.append("\nmetrics (latest):")
        lines += [f"  {k} = {fmt_value(v['value'])}  (step {v['step']})" for k, v in latest.items()]
    artifacts = run.artifacts()
    if artifacts:
        lines.append("\nartifacts:")
        lines += [f"  {a['path']}  {a['size']} bytes" for a in artifacts]
    env = row["environment"] or {}
    if env:
        lines.append(f"\nenvironment: python {env.get('python')} on {env.get('platform')}, "
                     f"{len(env.get('packages', {}))} packages, GPUs: "
                     f"{', '.join(env.get('gpus') or []) or 'none'}")
    if row["error"]:
        lines.append("\nerror:")
        lines += ["  " + ln for ln in row["error"].rstrip().splitlines()]
    return "\n".join(lines)


def cmd_runs_logs(args: argparse.Namespace) -> int:
    from .workspace import workspace

    ws = workspace()
    run = ws.get_run(args.run)
    if args.follow:
        try:
            follow(ws, run.id, sys.stdout)
        except KeyboardInterrupt:
            return 130
    else:
        sys.stdout.write(run.logs())
    return 0


def cmd_runs_cancel(args: argparse.Namespace) -> int:
    from .workspace import TERMINAL, workspace

    run = workspace().get_run(args.run)
    status = run.status
    if status in TERMINAL:
        print(f"run {run.id} already ended: {status}")
        return 0
    from .compute import get_target

    print(f"canceling run {run.id} (was {status})...")
    # wait=True: this command stays until the job is gone, killing it if it ignores the request.
    get_target(run.info()["target"] or "local").cancel(run, wait=True)
    print(f"run {run.id}: {run.status}")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .jobs import read_notebook
    from .workspace import workspace

    read_notebook(args.notebook)  # a clear error before anything is stored
    ws = workspace()
    sweep = ws.sweep(
        str(Path(args.notebook).resolve()), params=args.param, metric=args.metric,
        goal=args.goal, sampler=args.sampler, trials=args.trials,
        concurrency=args.concurrency, policy=args.policy, fixed=parse_params(args.fixed),
        retry_failed=args.retry_failed, seed=args.seed, gpus=args.gpus, timeout=args.timeout,
        name=args.name or Path(args.notebook).stem + "-sweep", experiment=args.experiment)
    if not args.wait:
        print(sweep.id)
        return 0
    print(f"sweep {sweep.id} started (Ctrl-C detaches, the sweep goes on)", file=sys.stderr)
    last = None
    try:
        while sweep.status not in ("completed", "failed", "canceled", "lost"):
            progress = sweep.progress()
            if progress != last:
                print(", ".join(f"{k} {v}" for k, v in progress.items()), file=sys.stderr)
                last = progress
            time.sleep(0.5)
    except KeyboardInterrupt:
        print(f"\ndetached from sweep {sweep.id}; it goes on", file=sys.stderr)
        return 130
    frame = sweep.to_dataframe()
    if args.json:
        print(frame.to_json(orient="records"))
    else:
        print(frame.drop(columns=["reason"]).to_string(index=False) if len(frame) else "no trials")
        print("\n".join(sweep.summary_lines()))
    return 0 if sweep.status == "completed" else EXIT_FAILED


def cmd_gate(args: argparse.Namespace) -> int:
    from .workspace import workspace

    if args.min is None and args.max is None:
        raise UsageError("gate needs --min X or --max X")
    if (args.run is None) == (args.model is None):
        raise UsageError("gate needs --run RUN or --model NAME[:VERSION] (one of them)")
    run = workspace().get_run(args.run) if args.run else _model_run(args.model)
    metrics = run.metrics()
    if args.metric not in metrics:
        known = ", ".join(sorted(metrics)) or "none"
        raise NotFound(f"run {run.id} has no metric {args.metric!r} (it has: {known})")
    value = metrics[args.metric]
    failures = []
    if math.isnan(value):
        failures.append("is NaN")
    if args.min is not None and not value >= args.min:
        failures.append(f"is below the minimum {fmt_value(args.min)}")
    if args.max is not None and not value <= args.max:
        failures.append(f"is above the maximum {fmt_value(args.max)}")
    where = f"{args.metric} of run {run.id} ({run.name}) = {fmt_value(value)}"
    if args.model:
        where = f"{args.metric} of model {args.model} (run {run.id}) = {fmt_value(value)}"
    if failures:
        print(f"gate failed: {where} {' and '.join(failures)}")
        return EXIT_FAILED
    print(f"gate passed: {where}")
    return 0


def _model_run(ref: str) -> Any:
    """The run that produced a registered model version (the one a gate judges)."""
    from .workspace import workspace

    model = workspace().models.get(ref)
    if model.run is None:
        raise NotFound(f"model {model.ref} was registered from {model.source}, not from a "
                       "run: it has no metrics to gate on")
    return model.run


# -- parser -------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="jupyter mlops", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    run = sub.add_parser("run", help="execute a notebook with papermill as a tracked run")
    run.add_argument("notebook")
    run.add_argument("-p", "--parameter", dest="param", nargs=2, action="append",
                     metavar=("NAME", "VALUE"), help="parameter (Python literal or string)")
    run.add_argument("--experiment", default="Default")
    run.add_argument("--name")
    run.add_argument("--tag", action="append", metavar="KEY=VALUE")
    run.add_argument("--timeout", type=float, help="seconds before the run is stopped")
    run.add_argument("--kernel", help="kernel name (default: the notebook's)")
    run.add_argument("--wait", action=argparse.BooleanOptionalAction, default=True,
                     help="follow the run's log until it ends (default) or return at once")
    run.add_argument("--json", action="store_true")
    run.set_defaults(func=cmd_run)

    runs = sub.add_parser("runs", help="list and inspect runs")
    runs_sub = runs.add_subparsers(dest="runs_command", metavar="VERB", parser_class=_Parser)
    runs_sub.required = True
    ls = runs_sub.add_parser("ls", help="list runs, newest first")
    ls.add_argument("--experiment")
    ls.add_argument("--status")
    ls.add_argument("--limit", type=int, default=50)
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=cmd_runs_ls)
    show = runs_sub.add_parser("show", help="everything about one run")
    show.add_argument("run", help="run id, or a unique prefix of its id or name")
    show.add_argument("--json", action="store_true")
    show.set_defaults(func=cmd_runs_show)
    logs = runs_sub.add_parser("logs", help="a run's output")
    logs.add_argument("run")
    logs.add_argument("-f", "--follow", action="store_true", help="keep printing until it ends")
    logs.set_defaults(func=cmd_runs_logs)
    cancel = runs_sub.add_parser("cancel", help="stop a queued or running run")
    cancel.add_argument("run")
    cancel.set_defaults(func=cmd_runs_cancel)

    from .registry._cli import add_commands as add_registry_commands

    add_registry_commands(sub, runs_sub)  # models ..., datasets ..., runs diff

    sweep = sub.add_parser("sweep", help="sweep a notebook's parameters (papermill trials)")
    sweep.add_argument("notebook")
    sweep.add_argument("--param", action="append", required=True, metavar="NAME=EXPR",
                       help="e.g. lr=loguniform(1e-4,1e-1), layers=choice(1,2,3)")
    sweep.add_argument("--metric", required=True)
    sweep.add_argument("--goal", default="max", choices=["max", "min"])
    sweep.add_argument("--sampler", default="random", choices=["random", "grid", "tpe"])
    sweep.add_argument("--trials", type=int, default=20)
    sweep.add_argument("--concurrency", type=int, default=2)
    sweep.add_argument("--policy", default="none")
    sweep.add_argument("-p", "--parameter", dest="fixed", nargs=2, action="append",
                       metavar=("NAME", "VALUE"), help="a parameter fixed for every trial")
    sweep.add_argument("--retry-failed", type=int, default=0)
    sweep.add_argument("--seed", type=int)
    sweep.add_argument("--gpus", type=int, default=0)
    sweep.add_argument("--timeout", type=float, help="seconds per trial")
    sweep.add_argument("--name")
    sweep.add_argument("--experiment", default="Default")
    sweep.add_argument("--wait", action=argparse.BooleanOptionalAction, default=True)
    sweep.add_argument("--json", action="store_true")
    sweep.set_defaults(func=cmd_sweep)

    gate = sub.add_parser("gate", help="exit 1 unless a run's metric is within bounds (for CI)")
    gate.add_argument("--run")
    gate.add_argument("--model", metavar="NAME[:VERSION]",
                      help="judge the run that produced this model version")
    gate.add_argument("--metric", required=True)
    gate.add_argument("--min", type=float)
    gate.add_argument("--max", type=float)
    gate.set_defaults(func=cmd_gate)
    return parser


# Commands that only read: in a folder where nothing has run yet they must not create a
# workspace as a side effect ("changes nothing"), so they report its absence instead.
LISTINGS = {"cmd_runs_ls", "cmd_models_ls", "cmd_datasets_ls"}
READERS = LISTINGS | {"cmd_runs_show", "cmd_runs_logs", "cmd_runs_cancel", "cmd_runs_diff",
                      "cmd_gate", "cmd_models_show", "cmd_models_download", "cmd_datasets_show"}


def _missing_workspace() -> str | None:
    """The folder a local workspace would be in, if it does not exist yet; else None."""
    from pathlib import Path

    from sqlalchemy.engine import make_url

    from .workspace import resolve_location

    location = resolve_location()
    url = make_url(location.database_url)
    if url.get_backend_name() != "sqlite" or not url.database:
        return None
    return None if Path(url.database).exists() else str(location.directory)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        name = getattr(args.func, "__name__", "")
        if name in READERS and (missing := _missing_workspace()):
            message = f"no workspace at {missing} yet: nothing has run here"
            if name in LISTINGS:
                print(message)
                return 0
            raise NotFound(message + " (set JUPYTER_MLOPS_WORKSPACE, or cd into a project "
                           "with a .mlops folder)")
        return args.func(args)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (MlopsError, InvalidInput) as exc:
        print(f"jupyter mlops: error: {exc}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
