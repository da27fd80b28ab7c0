"""``jupyter mlops ...`` (also ``jupyter-mlops``): run notebooks and inspect the workspace.

Exit codes: 0 success, 1 a run failed or a gate did not hold, 2 usage errors (a bad flag,
a missing notebook or run, an unusable workspace) — the one-line message says which.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from typing import Any

from .._fastimport import skip_slow_optional_imports
from .._format import dump_json, fmt_duration, fmt_time, fmt_value
from .._format import text_table as table
from .._inputs import parse_pairs, parse_tags
from ..errors import InvalidInput, MlopsError, NotFound
from ._common import EXIT_FAILED, EXIT_USAGE, Parser, UsageError, open_workspace

skip_slow_optional_imports()

__all__ = ["build_parser", "main"]


# -- commands -----------------------------------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    from ..jobs import read_notebook

    params = parse_pairs(args.param)
    tags = parse_tags(args.tag)
    read_notebook(args.notebook)  # before the workspace: bad input stores nothing
    ws = open_workspace()
    run = ws.submit(args.notebook, params=params, name=args.name, experiment=args.experiment,
                    tags=tags, timeout=args.timeout, kernel=args.kernel, target=args.target,
                    gpus=args.gpus)
    if not args.wait:
        print(dump_json({"id": run.id, "status": "queued"}) if args.json else run.id)
        return 0
    print(f"run {run.id} ({args.experiment}/{run.name}) submitted; following its log "
          "(Ctrl-C detaches, the run goes on)", file=sys.stderr)
    try:
        status = follow(run, sys.stdout)
    except KeyboardInterrupt:
        print(f"\ndetached from run {run.id}; it goes on. Follow it with "
              f"`jupyter mlops runs logs {run.id} -f`, stop it with "
              f"`jupyter mlops runs cancel {run.id}`", file=sys.stderr)
        return 130
    record = run.to_dict()
    summary = ", ".join(f"{k}={fmt_value(v)}" for k, v in record["metrics"].items())
    print(f"run {run.id} {status} in {fmt_duration(record)}" + (f"; {summary}" if summary else ""),
          file=sys.stderr)
    if status != "completed" and record["error"]:
        print(record["error"].strip().splitlines()[-1], file=sys.stderr)
    if args.json:
        print(dump_json(record))
    return 0 if status == "completed" else EXIT_FAILED


def follow(run: Any, out: Any) -> str:
    """Print a run's log as it grows until the run ends; returns the final status."""
    status = ""
    for kind, value in run.follow():
        if kind == "log":
            out.write(value)
            out.flush()
        else:
            status = value
    return status


def cmd_runs_ls(args: argparse.Namespace) -> int:
    ws = open_workspace()
    runs = ws.runs(experiment=args.experiment, status=args.status,
                   limit=None if args.all else args.limit)
    if args.json:
        print(dump_json([r.snapshot for r in runs]))
        return 0
    if not runs:
        print(f"no runs in {ws.location.directory}")
        return 0
    rows = []
    for run in runs:
        row = run.snapshot
        shown = ", ".join(f"{k}={fmt_value(v)}" for k, v in list(row["metrics"].items())[:3])
        rows.append([row["id"], row["name"][:30], row["experiment"][:20], row["status"],
                     fmt_time(row["created_at"]), fmt_duration(row), shown])
    print(table(rows, ["ID", "NAME", "EXPERIMENT", "STATUS", "CREATED", "DURATION", "METRICS"]))
    if not args.all and len(runs) == args.limit:
        print(f"(the newest {args.limit}; --limit N or --all for more)", file=sys.stderr)
    return 0


def cmd_runs_show(args: argparse.Namespace) -> int:
    run = open_workspace().get_run(args.run)
    print(dump_json(run.to_dict(environment=True)) if args.json else run.describe())
    return 0


def cmd_runs_logs(args: argparse.Namespace) -> int:
    run = open_workspace().get_run(args.run)
    if args.follow:
        try:
            follow(run, sys.stdout)
        except KeyboardInterrupt:
            return 130
    else:
        sys.stdout.write(run.logs())
    return 0


def cmd_runs_cancel(args: argparse.Namespace) -> int:
    from ..store import TERMINAL

    run = open_workspace().get_run(args.run)
    status = run.status
    if status in TERMINAL:
        print(f"run {run.id} already ended: {status}")
        return 0
    print(f"canceling run {run.id} (was {status})...")
    # wait=True: this command stays until the job is gone, killing it if it ignores the request.
    run.cancel(wait=True)
    print(f"run {run.id}: {run.status}")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..jobs import read_notebook
    from ..store import TERMINAL

    read_notebook(args.notebook)  # a clear error before anything is stored
    ws = open_workspace()
    sweep = ws.sweep(
        str(Path(args.notebook).resolve()), params=args.param, metric=args.metric,
        goal=args.goal, sampler=args.sampler, trials=args.trials,
        concurrency=args.concurrency, policy=args.policy, fixed=parse_pairs(args.fixed),
        retry_failed=args.retry_failed, seed=args.seed, gpus=args.gpus, timeout=args.timeout,
        target=args.target,
        name=args.name or Path(args.notebook).stem + "-sweep", experiment=args.experiment)
    if not args.wait:
        print(sweep.id)
        return 0
    print(f"sweep {sweep.id} started (Ctrl-C detaches, the sweep goes on)", file=sys.stderr)
    last = None
    try:
        while sweep.status not in TERMINAL:
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
    result = open_workspace().gate(metric=args.metric, run=args.run, model=args.model,
                                   min=args.min, max=args.max)
    print(result.message)
    return 0 if result.passed else EXIT_FAILED


def cmd_targets(args: argparse.Namespace) -> int:
    from .._format import slots_text

    print(slots_text(open_workspace().targets()))
    return 0


# -- parser -------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="jupyter mlops", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
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
    run.add_argument("--target", help="compute target: local, ray (default: "
                     "JUPYTER_MLOPS_TARGET or local)")
    run.add_argument("--gpus", type=int, default=0, help="GPUs the run holds")
    run.add_argument("--wait", action=argparse.BooleanOptionalAction, default=True,
                     help="follow the run's log until it ends (default) or return at once")
    run.add_argument("--json", action="store_true")
    run.set_defaults(func=cmd_run)

    runs = sub.add_parser("runs", help="list and inspect runs")
    runs_sub = runs.add_subparsers(dest="runs_command", metavar="VERB", parser_class=Parser)
    runs_sub.required = True
    ls = runs_sub.add_parser("ls", help="list runs, newest first")
    ls.add_argument("--experiment")
    ls.add_argument("--status")
    ls.add_argument("--limit", type=int, default=50, help="show the newest N (default 50)")
    ls.add_argument("--all", action="store_true", help="show every run")
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

    from ._registry import add_commands as add_registry_commands

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
    sweep.add_argument("--gpus", type=int, default=0, help="GPUs per trial")
    sweep.add_argument("--target", help="compute target of the trials: local, ray")
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

    from ._serving import add_commands as add_serving_commands

    add_serving_commands(sub)  # deploy, endpoints ...

    targets = sub.add_parser("targets", help="compute targets: slots and the runs holding them")
    targets.set_defaults(func=cmd_targets)
    return parser


# Commands that only read: in a folder where nothing has run yet they must not create a
# workspace as a side effect ("changes nothing"), so they report its absence instead.
LISTINGS = {"cmd_runs_ls", "cmd_models_ls", "cmd_datasets_ls"}
READERS = LISTINGS | {"cmd_endpoints_ls", "cmd_endpoints_show", "cmd_endpoints_logs",
                      "cmd_runs_show", "cmd_runs_logs", "cmd_runs_cancel", "cmd_runs_diff",
                      "cmd_gate", "cmd_models_show", "cmd_models_download", "cmd_datasets_show"}


def _missing_workspace() -> str | None:
    """The folder a local workspace would be in, if it does not exist yet; else None."""
    from pathlib import Path

    from sqlalchemy.engine import make_url

    from ..store import resolve_location

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
