"""The sweep controller: ``python -m jupyter_mlops.sweeps.controller SWEEP_ID``.

Started detached, so it outlives the notebook. It rebuilds its Optuna study from the store
(finished trials are told back with their params, intermediate values and outcome), then
loops: submit trials up to the concurrency limit, feed each running trial's new metric
points to the pruner, ask pruned trials to stop (cooperatively first — the job's
``should_stop()`` turns True — then the job runner interrupts them), record endings, retry
failed trials when asked. Killing it loses nothing: the next controller resumes from the store.
"""

from __future__ import annotations

import itertools
import math
import os
import random
import shutil
import socket
import sys
import time
import traceback
from statistics import NormalDist
from typing import Any

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.trial import TrialState

from .._fastimport import skip_slow_optional_imports
from .._processes import warn
from ..errors import MlopsError
from ..jobs import reap, submit_notebook
from ..jobs._control import REAP_EVERY
from ..jobs._notebook import read_notebook_json
from ..store import TERMINAL, Backend, new_run_id
from ._policies import Policy, parse_policy
from ._space import Param, parse_space
from ._sweep import SweepSpec, fetch_sweep_inputs, link_or_copy

POLL = 0.05  # seconds between two rounds while trials are short: a freed slot is refilled
POLL_SLOW = 0.2  # ... once no trial has been submitted for SHORT_TRIALS seconds
SHORT_TRIALS = 10.0
optuna.logging.set_verbosity(optuna.logging.WARNING)


def distributions(param: Param) -> dict[str, BaseDistribution]:
    """The Optuna distribution(s) behind one parameter (``normal`` samples a quantile)."""
    a = param.args
    if param.kind == "choice":
        return {param.name: CategoricalDistribution(list(a))}
    if param.kind == "uniform":
        return {param.name: FloatDistribution(a[0], a[1])}
    if param.kind == "loguniform":
        return {param.name: FloatDistribution(a[0], a[1], log=True)}
    if param.kind == "quniform":
        return {param.name: FloatDistribution(a[0], a[1], step=a[2])}
    if param.kind == "randint":
        return {param.name: IntDistribution(a[0], a[1])}
    return {f"{param.name}__quantile": FloatDistribution(1e-6, 1 - 1e-6)}


def optuna_params(param: Param, value: Any) -> dict[str, Any]:
    """The Optuna-side value of a parameter from the value the trial ran with."""
    if param.kind == "normal":
        q = NormalDist(*param.args).cdf(float(value))
        return {f"{param.name}__quantile": min(max(q, 1e-6), 1 - 1e-6)}
    return {param.name: value}


def make_sampler(spec: SweepSpec, space: dict[str, Param], resumed_at: int = 0
                 ) -> optuna.samplers.BaseSampler:
    """The sweep's sampler. A controller resuming after ``resumed_at`` trials seeds it from
    the sweep's seed and that count: reproducible, yet it does not propose again the values
    the first controller proposed (telling Optuna the finished trials does not advance a
    random sampler)."""
    # Grid points are enqueued by the controller (Optuna's GridSampler calls study.stop(),
    # which only works inside study.optimize, not with ask/tell).
    seed = spec.seed
    if seed is not None and resumed_at:
        seed = random.Random(f"{seed}/{resumed_at}").getrandbits(32)
    if spec.sampler == "tpe":
        return optuna.samplers.TPESampler(seed=seed,
                                          n_startup_trials=max(2, min(10, spec.trials // 4)))
    return optuna.samplers.RandomSampler(seed=seed)


class Controller:
    def __init__(self, backend: Backend, sweep_id: str):
        self.backend, self.id = backend, sweep_id
        row = backend.store.get_sweep_row(sweep_id)
        if row is None:
            raise SystemExit(f"no sweep {sweep_id}")
        self.row = row
        self.spec = SweepSpec(**row["spec"])
        self.space = parse_space(self.spec.space)
        self.policy: Policy = parse_policy(self.spec.policy)
        self.pruner = self.policy.pruner()
        # Without a pruner nothing is decided while a trial runs: its final value is read
        # when it ends (one query less per running trial and round).
        self.judging = not isinstance(self.pruner, optuna.pruners.NopPruner)
        self.study = optuna.create_study(
            direction=self.spec.goal, sampler=make_sampler(self.spec, self.space),
            pruner=self.pruner)
        self.dists: dict[str, BaseDistribution] = {}
        for param in self.space.values():
            self.dists.update(distributions(param))
        self.folder = fetch_sweep_inputs(backend, sweep_id, self.spec)
        self.base = read_notebook_json(self.folder / "base.ipynb")  # written by create_sweep
        # run id -> [optuna trial or None (followed only), last metric row id, stop asked,
        #            steps already reported]
        self.active: dict[str, list[Any]] = {}
        self.used = 0  # trial slots spent (retries don't spend one)
        self.retries: dict[str, int] = {}  # first attempt's run id -> retries so far
        self.first_attempt: dict[str, str] = {}  # run id -> run id of the trial it retries
        self.to_retry: list[tuple[dict[str, Any], str]] = []  # (params, failed run id)
        self.next_number = 0
        self.canceling = False
        self.last_beat = self.last_reap = self.last_submit = 0.0
        self.grid: list[dict[str, Any]] = []
        if self.spec.sampler == "grid":
            names = list(self.space)
            points = [dict(zip(names, values)) for values in itertools.product(
                *(self.space[n].grid_values() for n in names))]
            random.Random(self.spec.seed).shuffle(points)
            self.grid = points

    # -- resume -----------------------------------------------------------------------------

    def restore(self) -> None:
        """Tell the study every trial the store already holds."""
        for row in self.backend.store.sweep_trials(self.id):
            self.next_number = max(self.next_number, (row["trial_number"] or 0) + 1)
            retry_of = row["tags"].get("sweep.retry_of")
            key = self._key(row["params"])
            if retry_of:
                first = self.first_attempt.get(retry_of, retry_of)
                self.first_attempt[row["id"]] = first
                self.retries[first] = self.retries.get(first, 0) + 1
            else:
                self.used += 1
                self.grid = [p for p in self.grid if self._key(p) != key]
            if row["status"] not in TERMINAL:
                self.active[row["id"]] = [None, 0, row["cancel_requested_at"] is not None, set()]
                continue
            self._add_finished(row)
        if self.next_number:
            self.study.sampler = make_sampler(self.spec, self.space, self.next_number)

    def _key(self, params: dict[str, Any]) -> str:
        return repr(sorted((k, params.get(k)) for k in self.space))

    def _trial_params(self, params: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, param in self.space.items():
            out.update(optuna_params(param, params[name]))
        return out

    def _intermediate(self, run_id: str) -> dict[int, float]:
        rows = self.backend.store.metric_rows(run_id, key=self.spec.metric)
        return {s: v for _, _, s, v, _ in rows}

    def _add_finished(self, row: dict[str, Any]) -> None:
        status = row["status"]
        values = self._intermediate(row["id"])
        final = values[max(values)] if values else None
        try:
            params = self._trial_params(row["params"])
        except KeyError:
            return  # a trial from another space: nothing to learn from it
        if status == "completed" and final is not None and not math.isnan(final):
            state, value = TrialState.COMPLETE, final
        elif status == "pruned":
            state, value = TrialState.PRUNED, None
        else:
            state, value = TrialState.FAIL, None
        trial = optuna.trial.create_trial(
            params=params, distributions={k: self.dists[k] for k in params}, value=value,
            intermediate_values={s: v for s, v in values.items() if not math.isnan(v)},
            state=state)
        self.study.add_trial(trial)

    # -- the loop ---------------------------------------------------------------------------

    def run(self) -> str:
        store = self.backend.store
        store.update_sweep(self.id, host=socket.gethostname(), pid=os.getpid(),
                           heartbeat_at=time.time())
        store.set_sweep_status(self.id, "running", only_from=("queued",),
                               started_at=self.row["started_at"] or time.time())
        self.restore()
        failing: str | None = None
        while True:
            try:
                if self._step():
                    break
                failing = None
            except (MlopsError, OSError) as exc:  # the store is away (disk full, locked)
                if str(exc) != failing:
                    warn(f"jupyter-mlops: sweep {self.id}: {exc}; retrying")
                failing = str(exc)
                time.sleep(1.0)
                continue
            time.sleep(POLL if time.time() - self.last_submit < SHORT_TRIALS else POLL_SLOW)
        status = "canceled" if self.canceling else "completed"
        store.set_sweep_status(self.id, status, only_from=("running",),
                               error="canceled by request" if self.canceling else None)
        return status

    def _step(self) -> bool:
        """One round of the loop; True when the sweep is over."""
        store = self.backend.store
        now = time.time()
        if now - self.last_reap > REAP_EVERY:  # trials (and other runs) whose job is gone
            reap(self.backend)
            self.last_reap = now
        if now - self.last_beat > self.backend.config.heartbeat_interval:
            store.update_sweep(self.id, heartbeat_at=now)
            self.last_beat = now
            row = store.get_sweep_row(self.id) or {}
            if row.get("cancel_requested_at") and not self.canceling:
                self.canceling = True
                for run_id in self.active:
                    store.request_stop(run_id, "canceled: the sweep was canceled")
        self._follow_trials()
        if not self.canceling:
            self._submit_more()
        return (not self.active and not self.to_retry
                and (self.canceling or self.used >= self.spec.trials))

    def _follow_trials(self) -> None:
        store = self.backend.store
        for run_id, entry in list(self.active.items()):
            trial, last_id, stop_asked, reported = entry
            rows = (store.metric_rows(run_id, key=self.spec.metric, after_id=last_id)
                    if self.judging else [])
            if rows:
                entry[1] = rows[-1][0]
                if trial is not None:
                    for _, _, step, value, _ in rows:
                        if step not in reported:  # Optuna takes one value per step
                            trial.report(value, step)
                            reported.add(step)
                    if not stop_asked and trial.should_prune():
                        frozen = next(t for t in self.study.get_trials(deepcopy=False)
                                      if t.number == trial.number)
                        reason = self.policy.explain(self.pruner, self.study, frozen)
                        store.request_stop(run_id, f"pruned: {reason}")
                        entry[2] = True
            row = store.get_run_row(run_id)
            if row is None or self.backend.as_read(row)["status"] not in TERMINAL:
                continue
            row = self.backend.as_read(row)
            del self.active[run_id]
            self._record_ending(trial, row)

    def _record_ending(self, trial: optuna.Trial | None, row: dict[str, Any]) -> None:
        status = row["status"]
        if trial is None:  # a trial started by an earlier controller
            self._add_finished(row)
        elif status == "completed":
            values = self._intermediate(row["id"])
            final = values[max(values)] if values else None
            if final is None or math.isnan(final):
                self.study.tell(trial, state=TrialState.FAIL)
                self.backend.store.update_run(row["id"], error=(
                    f"the trial logged no {self.spec.metric!r}: it cannot be ranked"))
            else:
                self.study.tell(trial, final)
        elif status == "pruned":
            self.study.tell(trial, state=TrialState.PRUNED)
        else:
            self.study.tell(trial, state=TrialState.FAIL)
        if status in ("failed", "lost") and not self.canceling:
            first = self.first_attempt.get(row["id"], row["id"])  # the budget is per trial
            if self.retries.get(first, 0) < self.spec.retry_failed:
                self.retries[first] = self.retries.get(first, 0) + 1
                self.to_retry.append(({k: row["params"][k] for k in self.space}, row["id"]))

    def _submit_more(self) -> None:
        while self.to_retry and len(self.active) < self.spec.concurrency:
            params, failed = self.to_retry[0]
            run_id = self._submit(params, retry_of=failed)
            self.to_retry.pop(0)  # only once submitted: a full disk keeps it waiting
            self.first_attempt[run_id] = self.first_attempt.get(failed, failed)
        while len(self.active) < self.spec.concurrency and self.used < self.spec.trials:
            if self.spec.sampler == "grid":
                if not self.grid:
                    self.used = self.spec.trials  # every point of the grid has run
                    return
                self.study.enqueue_trial(self._trial_params(self.grid.pop(0)))
            trial = self.study.ask()
            params = {name: p.suggest(trial) for name, p in self.space.items()}
            self._submit(params, trial=trial)
            self.used += 1  # counted once submitted: a failed submission is tried again

    def _submit(self, params: dict[str, Any], trial: optuna.Trial | None = None,
                retry_of: str | None = None) -> str:
        if trial is None:  # a retry: the study hears about it as a new trial with these params
            self.study.enqueue_trial(self._trial_params(params))
            trial = self.study.ask()
            for param in self.space.values():
                param.suggest(trial)
        number = self.next_number
        self.next_number += 1
        run_id = new_run_id()
        carried = self.folder / "carried"
        if carried.is_dir():
            shutil.copytree(carried, self.backend.staging_dir(run_id) / "carried",
                            copy_function=link_or_copy)
        spec = self.spec
        tags = {"sweep": self.id, **({"sweep.retry_of": retry_of} if retry_of else {})}
        try:
            submit_notebook(
                self.backend, self.base, name=f"{self.row['name']}-{number}",
                experiment=self.row["experiment"], parameters={**spec.parameters, **params},
                tags=tags, kind="trial", source=spec.source, cwd=spec.cwd,
                timeout=spec.timeout, kernel_name=spec.kernel_name, target=spec.target,
                gpus=spec.gpus, run_id=run_id, parent_resources=spec.parent_resources,
                carried=spec.carried, carried_sweep=self.id if spec.carried else None,
                fields={"sweep_id": self.id, "trial_number": number})
        except Exception:
            self.study.tell(trial, state=TrialState.FAIL)
            shutil.rmtree(self.backend.staging_dir(run_id), ignore_errors=True)
            raise
        self.active[run_id] = [trial, 0, False, set()]
        self.last_submit = time.time()
        return run_id


def main(argv: list[str] | None = None) -> int:
    skip_slow_optional_imports()
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m jupyter_mlops.sweeps.controller SWEEP_ID", file=sys.stderr)
        return 2
    backend = Backend.open()
    try:
        status = Controller(backend, argv[0]).run()
    except BaseException:
        backend.store.set_sweep_status(argv[0], "failed", only_from=("queued", "running"),
                                  error="the sweep controller crashed:\n" + traceback.format_exc())
        raise
    return 0 if status == "completed" else 1


if __name__ == "__main__":
    sys.exit(main())
