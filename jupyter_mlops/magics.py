"""IPython magics: ``%%train`` and ``%mlops``. Thin: parse flags, call the API, show the run.

Every user mistake becomes a one-line ``UsageError`` and submits nothing.
"""

from __future__ import annotations

import logging
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, cell_magic, line_cell_magic, line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments
from traitlets import Int
from traitlets.config import Configurable

from ._inputs import parse_assignments, parse_datasets, parse_outputs, parse_tags
from .api import Run, workspace
from .errors import MlopsError, RunFailed
from .store import ENV_HEADLESS, TERMINAL


class TrainConfig(Configurable):
    """``c.TrainConfig.max_carry_bytes = 4 * 2**30`` in ``jupyter_mlops_config.py``."""

    max_carry_bytes = Int(
        1 << 30, config=True,
        help="Largest total size of the names a %%train cell carries to (or back from) its job.",
    )


def _headless() -> bool:
    """True when this kernel runs unattended (our papermill runner sets the variable)."""
    return os.environ.get(ENV_HEADLESS) == "1"


def _notebook_name() -> str:
    # Jupyter Server tells a kernel which notebook it serves; papermill and plain IPython don't.
    path = os.environ.get("JPY_SESSION_NAME", "")
    return Path(path).stem if path else ""


def wait_for(run: Run, out: Any = None, quiet: bool = False) -> str:
    """Print progress lines (and the log unless ``quiet``) as the run goes; returns its final
    status."""
    out = out or sys.stdout
    status = ""
    for kind, value in run.follow(poll=0.05):
        if kind == "log":
            if not quiet:
                out.write(value)
        else:
            status = value
            print(f"[{time.strftime('%H:%M:%S')}] run {run.id}: {status}", file=out)
        out.flush()
    return status


@magics_class
class MlopsMagics(Magics):
    """``%%train`` runs a cell as a tracked job; ``%mlops`` shows and controls runs."""

    @magic_arguments()
    @argument("--name", help="run name (default: <notebook>-cell<N>)")
    @argument("--experiment", default=None, help="experiment (default: the notebook's name)")
    @argument("--target", default=None,
              help="compute target: local, ray (default: JUPYTER_MLOPS_TARGET or local)")
    @argument("--gpus", type=int, default=0, help="GPU slots to claim (CUDA_VISIBLE_DEVICES)")
    @argument("-p", "--param", action="append", metavar="NAME=VALUE",
              help="parameter, visible in the cell as a variable")
    @argument("--dataset", action="append", metavar="NAME[:VERSION]", help="dataset input")
    @argument("--tag", action="append", metavar="KEY=VALUE")
    @argument("--outputs", default="", help="names to bring back when the run completes: a,b")
    @argument("--wait", action="store_true", help="block until the run ends; raise if it fails")
    @argument("--timeout", type=float, help="seconds before the run is stopped and failed")
    @cell_magic
    def train(self, line: str, cell: str) -> Run | None:
        """Run this cell as a tracked job on a compute target; the notebook stays free."""
        args = self._parse(self.train, line)
        from .tracking import current_run

        notebook = _notebook_name()
        count = self.shell.execution_count
        parent = current_run()
        try:
            params = parse_assignments(args.param, "-p")
            outputs = parse_outputs(args.outputs)
            run = workspace().submit(
                cell,
                namespace=self.shell.user_ns,
                params=params,
                name=args.name or f"{notebook or 'cell'}-{count}",
                experiment=args.experiment or notebook or "Default",
                tags=parse_tags(args.tag),
                target=args.target,
                gpus=args.gpus,
                outputs=outputs,
                timeout=args.timeout,
                datasets=parse_datasets(args.dataset or []),
                history=list(self.shell.user_ns.get("In", []))[1:],
                origin=f"{notebook or 'a notebook'}, cell [{count}]",
                max_carry_bytes=TrainConfig(parent=self.shell).max_carry_bytes,
                parent=parent.id if parent is not None else None,
            )
        except MlopsError as exc:
            raise UsageError(str(exc)) from None
        self.shell.user_ns["_run"] = run
        if args.wait or _headless():
            return self._wait(run, outputs, raise_on_failure=True)
        if outputs:
            _bring_back_later(run, outputs, self.shell.user_ns)
        return self._show(run)

    @staticmethod
    def _show(run: Run) -> Run:
        """Display the run's live widget now; the returned Run then doesn't show it again."""
        from .widgets import in_kernel, show_run_widget

        if in_kernel():
            show_run_widget(run.workspace.backend, run.id)
            run._already_shown = True
        return run

    def _wait(self, run: Run, outputs: list[str], raise_on_failure: bool) -> Run | None:
        from .widgets import finalize, in_kernel, show_run_widget

        view = show_run_widget(run.workspace.backend, run.id) if in_kernel() else None
        try:
            # With a live view the log is in the widget; unattended, it goes to the output.
            status = wait_for(run, quiet=view is not None and not _headless())
        except KeyboardInterrupt:
            print(f"\ndetached from run {run.id}: it goes on. Re-attach with "
                  f"`%mlops attach {run.id}`, stop it with `%mlops cancel {run.id}`.")
            return run
        if view is not None:
            finalize(*view)  # the saved notebook holds the final state when the cell returns
            run._already_shown = True
        if status == "completed":
            if outputs:
                try:  # only the names asked for, each checked against its recorded sha256
                    self.shell.user_ns.update(run.outputs(outputs))
                except MlopsError as exc:
                    raise UsageError(f"outputs not brought back: {exc}") from None
            return run
        if raise_on_failure:
            raise RunFailed(f"run {run.id} ended {status}: {run.last_error_line()}")
        return run

    @magic_arguments()
    @argument("--from", dest="from_run", default=None,
              help="sweep the code of this %%%%train run (default: the last one)")
    @argument("--param", action="append", metavar="NAME=EXPR",
              help="choice(..)|uniform(a,b)|loguniform(a,b)|quniform(a,b,q)|randint(a,b)|"
                   "normal(mu,sigma)")
    @argument("--metric", help="the metric trials log, to rank and prune them")
    @argument("--goal", default="max", help="max or min")
    @argument("--sampler", default="random", help="random, grid or tpe")
    @argument("--trials", type=int, default=20)
    @argument("--concurrency", type=int, default=2)
    @argument("--policy", default="none",
              help="bandit(slack=0.15,interval=1,delay=5) | median(...) | hyperband(...) | "
                   "asha(...) | none")
    @argument("-p", dest="fixed", action="append", metavar="NAME=VALUE",
              help="a parameter fixed for every trial")
    @argument("--name")
    @argument("--experiment", default=None)
    @argument("--target", default=None, help="compute target of the trials: local, ray")
    @argument("--gpus", type=int, default=0, help="GPUs per trial")
    @argument("--retry-failed", dest="retry_failed", type=int, default=0)
    @argument("--seed", type=int, default=None)
    @argument("--timeout", type=float, default=None, help="seconds per trial")
    @argument("--wait", action="store_true", help="block until the sweep ends")
    @argument("--resume", action="store_true",
              help="continue the newest unfinished sweep of this name instead of starting one")
    @line_cell_magic
    def sweep(self, line: str, cell: str | None = None) -> Any:
        """Sweep hyperparameters over this cell (%%sweep) or an earlier %%train run (%sweep)."""
        args = self._parse(self.sweep, line)
        try:
            ws = workspace()
            if args.resume:
                return self._resume_sweep(ws, args)
            if not args.param or not args.metric:
                raise UsageError("a sweep needs --param name=expression ... and --metric M")
            from_run = None
            if cell is None:
                last = self.shell.user_ns.get("_run")
                from_run = args.from_run if args.from_run not in (None, "last") else (
                    last.id if last is not None else None)
                if from_run is None:
                    raise UsageError("%sweep needs --from RUN, or a %%train cell run before it "
                                     "(use %%sweep to sweep a cell's own code)")
            notebook = _notebook_name()
            sweep = ws.sweep(
                cell, params=args.param, metric=args.metric, goal=args.goal,
                sampler=args.sampler, trials=args.trials, concurrency=args.concurrency,
                policy=args.policy, from_run=from_run, namespace=self.shell.user_ns,
                fixed=parse_assignments(args.fixed, "-p"), target=args.target, gpus=args.gpus,
                retry_failed=args.retry_failed, seed=args.seed, timeout=args.timeout,
                name=args.name, experiment=args.experiment or notebook or "Default")
        except MlopsError as exc:
            raise UsageError(str(exc)) from None
        self.shell.user_ns["_sweep"] = sweep
        if args.wait or _headless():
            self._wait_sweep(sweep)
        return sweep

    def _resume_sweep(self, ws: Any, args: Any) -> Any:
        candidates = [s for s in ws.sweeps() if s.status != "completed"
                      and (args.name is None or s.name == args.name)]
        if not candidates:
            raise UsageError("no unfinished sweep to resume" +
                             (f" named {args.name!r}" if args.name else ""))
        sweep = candidates[0].resume()
        self.shell.user_ns["_sweep"] = sweep
        if args.wait or _headless():
            self._wait_sweep(sweep)
        return sweep

    @staticmethod
    def _wait_sweep(sweep: Any) -> None:
        last = None
        try:
            while sweep.status not in TERMINAL:
                progress = sweep.progress()
                if progress != last:
                    print(f"[{time.strftime('%H:%M:%S')}] sweep {sweep.id}: "
                          + ", ".join(f"{k} {v}" for k, v in progress.items()))
                    last = progress
                time.sleep(0.5)
        except KeyboardInterrupt:
            print(f"\ndetached from sweep {sweep.id}: it goes on (`_sweep.cancel()` stops it)")
            return
        print("\n".join(sweep.summary_lines()))

    @magic_arguments()
    @argument("model", help="MODEL, MODEL:VERSION or MODEL@ALIAS")
    @argument("--entry", help="entry script with init() and run(raw_data); %%%%deploy: the cell")
    @argument("--name", help="endpoint name (default: the model's); a served name is swapped")
    @argument("--host", default="127.0.0.1")
    @argument("--port", type=int, default=0, help="default: a free port")
    @argument("--cores", type=float, default=1)
    @argument("--memory", default=None, help="address-space limit per worker, e.g. 2G")
    @argument("--replicas", type=int, default=1,
              help="worker processes (ray: Serve replicas, where autoscaling starts)")
    @argument("--target", default=None, help="local (default) or ray (Ray Serve)")
    @argument("--min-replicas", dest="min_replicas", type=int, default=None,
              help="ray: autoscaling lower bound")
    @argument("--max-replicas", dest="max_replicas", type=int, default=None,
              help="ray: autoscaling upper bound")
    @argument("--no-auth", dest="no_auth", action="store_true",
              help="no key (only on a loopback address)")
    @line_cell_magic
    def deploy(self, line: str, cell: str | None = None) -> Any:
        """Serve a registered model over HTTP (%deploy), or with this cell as the entry script
        (%%deploy: names it reads from the notebook are carried). Returns the Endpoint, also
        kept as ``_endpoint``."""
        args = self._parse(self.deploy, line)
        try:
            endpoint = workspace().deploy(
                args.model, args.entry, entry_source=cell,
                namespace=self.shell.user_ns if cell is not None else None, name=args.name,
                host=args.host, port=args.port, cores=args.cores, memory=args.memory,
                replicas=args.replicas, auth=not args.no_auth, target=args.target,
                min_replicas=args.min_replicas, max_replicas=args.max_replicas)
        except MlopsError as exc:
            raise UsageError(str(exc)) from None
        self.shell.user_ns["_endpoint"] = endpoint
        return endpoint  # shown as its live widget in a notebook

    @line_magic
    def mlops(self, line: str) -> Any:
        """%mlops runs [EXPERIMENT] | show RUN | attach RUN|SWEEP|runs | cancel RUN |
        models [NAME[:V]] | datasets [NAME[:V]] | endpoints | targets"""
        words = shlex.split(line)
        verb, rest = (words[0], words[1:]) if words else ("", [])
        try:
            ws = workspace()
            if verb == "runs" and len(rest) <= 1:
                return self._runs_table(ws, rest[0] if rest else None)
            if verb == "attach" and len(rest) == 1:
                return self._attach(ws, rest[0])
            if verb in ("show", "cancel") and len(rest) == 1:
                run = ws.get_run(rest[0])
                if verb == "show":
                    print(run.describe())
                    return None
                run.cancel()
                print(f"cancel requested for run {run.id}")
                return None
            if verb in ("models", "datasets") and len(rest) <= 1:
                return registry_view(ws, verb, rest[0] if rest else None)
            if verb == "endpoints" and not rest:
                endpoints = ws.endpoints(all=True)
                if not endpoints:
                    print("no endpoints yet: %deploy MODEL serves one")
                    return None
                from IPython.display import HTML

                return HTML("".join(e._repr_html_() for e in endpoints))
            if verb == "targets" and not rest:
                from ._format import slots_text
                from .widgets import in_kernel

                if in_kernel():
                    from .widgets import TargetsTable

                    return TargetsTable(ws.backend)

                print(slots_text(ws.targets()))
                return None
        except MlopsError as exc:
            raise UsageError(str(exc)) from None
        raise UsageError("usage: %mlops runs [EXPERIMENT] | show RUN | attach RUN|SWEEP|runs | "
                         "cancel RUN | "
                         "models [NAME[:VERSION]] | datasets [NAME[:VERSION]] | endpoints | "
                         "targets")

    @staticmethod
    def _runs_table(ws: Any, experiment: str | None) -> Any:
        from .widgets import RunsTable, in_kernel

        if in_kernel():
            return RunsTable(ws.backend, experiment=experiment)  # shows itself, live
        frame = ws.runs_dataframe(experiment=experiment)
        return frame.head(50) if len(frame) else print("no runs yet")

    def _attach(self, ws: Any, ref: str) -> Any:
        """``%mlops attach RUN|SWEEP|runs``: re-open a live view, e.g. after a restart."""
        from .errors import NotFound
        from .widgets import in_kernel

        if ref == "runs":
            return self._runs_table(ws, None)
        try:
            run = ws.get_run(ref)
        except NotFound as run_missing:
            try:
                sweep = ws.get_sweep(ref)
            except NotFound:
                raise UsageError(f"{run_missing} (nor a sweep of that id or name; "
                                 "`%mlops attach runs` re-opens the runs table)") from None
            if in_kernel():
                return sweep  # shows its live view
            print("\n".join(sweep.summary_lines()))
            return None
        if in_kernel():
            return self._show(run)  # the live view; the notebook stays free
        return self._wait(run, [], raise_on_failure=False)

    @staticmethod
    def _parse(func: Any, line: str) -> Any:
        """Flags split as a shell splits a command line: quotes are removed, so a quoted
        value may hold spaces (``-p "title=a b"``, ``--param "lr=choice(0.1, 0.2)"``).
        IPython's own splitting (``parse_argstring``) keeps the quote characters."""
        try:
            words = shlex.split(line)
        except ValueError as exc:  # "No closing quotation"
            raise UsageError(f"{exc} in {line.strip()!r}: close the quote, or escape it "
                             "with \\") from None
        try:
            return func.parser.parse_args(words)
        except UsageError as exc:
            raise UsageError(f"{exc}\n{func.parser.format_usage()}") from None


def registry_view(ws: Any, what: str, ref: str | None) -> Any:
    """``%mlops models|datasets [NAME[:VERSION]]``: a table of every version (a table view in
    a notebook, a DataFrame elsewhere);
    ``NAME``: the versions of that model or dataset; ``NAME:VERSION``: that version, which
    shows itself (a model with its lineage tree, a dataset with its profile)."""
    registry = ws.models if what == "models" else ws.datasets
    if ref is not None and ":" in ref:
        found = registry.get(ref)
        if what == "models":
            from IPython.display import display

            display(found)
            return found.lineage()
        return found
    if ref is not None:
        registry.get(ref)  # an unknown name: say so, with the names there are
    from .widgets import in_kernel

    if in_kernel():
        from .widgets import RegistryTable

        return RegistryTable(ws.backend, what, ref)  # a small table, with a static form
    frame = registry.dataframe(ref)
    if not len(frame):
        print(f"no {what} registered yet in {ws.location.directory}")
        return None
    return frame


def _bring_back_later(run: Run, names: list[str], namespace: dict[str, Any]) -> None:
    """Put the run's outputs into the notebook when it completes (a quiet watcher thread)."""
    import threading

    def watch() -> None:
        if run.wait(poll=0.5, raise_on_failure=False).status == "completed":
            try:  # only the names asked for, each checked against its recorded sha256
                namespace.update(run.outputs(names))
            except MlopsError as exc:
                # Not printed: output from a thread lands in a random cell (see STYLE.md).
                logging.getLogger("jupyter_mlops").warning(
                    "outputs of run %s not brought back: %s", run.id, exc)

    threading.Thread(target=watch, name=f"mlops-outputs-{run.id}", daemon=True).start()
