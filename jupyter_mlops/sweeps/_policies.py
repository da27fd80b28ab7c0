"""Early-termination policies as Optuna pruners, and the words that explain a verdict.

Optuna has median, hyperband and successive halving (ASHA); the Azure-style bandit policy
is ours. Its documented semantics: at every evaluation step (every ``interval`` steps from
``delay`` on) a trial is stopped when its value is not within the slack of the best trial —
maximising with slack 0.2 and a best of 0.8, anything below 0.8 / 1.2 stops; minimising, above
best × 1.2; ``slack_amount`` is the absolute form (best − amount, best + amount). "The best"
here is the best value any other trial reported at that step (its latest report at or
before the step), so trials are compared at equal progress. Slack *factors* assume a metric
of one sign (accuracy, loss); use ``slack_amount`` for metrics that cross zero.
"""

from __future__ import annotations

import ast
import math
import statistics
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.pruners import BasePruner
from optuna.trial import FrozenTrial, TrialState

from ..errors import InvalidInput

POLICIES = {
    "bandit": "bandit(slack=0.15, interval=1, delay=5) or bandit(slack_amount=0.05, ...)",
    "median": "median(warmup=5, startup=5, interval=1)",
    "hyperband": "hyperband(min_resource=1, max_resource=100, reduction_factor=3)",
    "asha": "asha(min_resource=1, reduction_factor=4, min_early_stopping_rate=0)",
    "none": "none",
}
_OTHERS = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)


def _value_at(trial: FrozenTrial, step: int) -> float | None:
    """A trial's latest report at or before ``step``."""
    steps = [s for s in trial.intermediate_values if s <= step]
    if not steps:
        return None
    value = trial.intermediate_values[max(steps)]
    return None if value is None or math.isnan(value) else value


def _others_at(study: optuna.Study, trial: FrozenTrial, step: int,
               states: tuple[TrialState, ...] = _OTHERS) -> list[float]:
    values = []
    for other in study.get_trials(deepcopy=False, states=states):
        if other.number != trial.number:
            value = _value_at(other, step)
            if value is not None:
                values.append(value)
    return values


class BanditPruner(BasePruner):
    """Stop trials that fall outside a slack of the best trial (Azure ML's bandit policy)."""

    def __init__(self, slack_factor: float | None = None, slack_amount: float | None = None,
                 evaluation_interval: int = 1, delay_evaluation: int = 0):
        if (slack_factor is None) == (slack_amount is None):
            raise InvalidInput("bandit takes exactly one of slack=... or slack_amount=...")
        if (slack_factor is not None and slack_factor < 0) or (
                slack_amount is not None and slack_amount < 0):
            raise InvalidInput("bandit slack must not be negative")
        if evaluation_interval < 1 or delay_evaluation < 0:
            raise InvalidInput("bandit needs interval >= 1 and delay >= 0")
        self.slack_factor, self.slack_amount = slack_factor, slack_amount
        self.interval, self.delay = evaluation_interval, delay_evaluation

    def evaluates_at(self, step: int) -> bool:
        return step >= self.delay and (step - self.delay) % self.interval == 0

    def threshold(self, best: float, maximize: bool) -> float:
        if self.slack_factor is not None:
            return best / (1 + self.slack_factor) if maximize else best * (1 + self.slack_factor)
        assert self.slack_amount is not None
        return best - self.slack_amount if maximize else best + self.slack_amount

    def verdict(self, study: optuna.Study, trial: FrozenTrial) -> tuple[bool, str]:
        step = trial.last_step
        if step is None or not self.evaluates_at(step):
            return False, ""
        value = trial.intermediate_values[step]
        others = _others_at(study, trial, step)
        if not others:
            return False, ""
        maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
        best = max(others) if maximize else min(others)
        limit = self.threshold(best, maximize)
        if value is None or math.isnan(value):
            return True, f"bandit policy: the metric is NaN at step {step}"
        worse = value < limit if maximize else value > limit
        if not worse:
            return False, ""
        if self.slack_factor is not None:
            rule = (f"{best:.4g} / (1 + {self.slack_factor:g})" if maximize
                    else f"{best:.4g} × (1 + {self.slack_factor:g})")
        else:
            rule = f"{best:.4g} {'-' if maximize else '+'} {self.slack_amount:g}"
        side = "below" if maximize else "above"
        return True, (f"bandit policy: value {value:.4g} at step {step} is {side} the "
                      f"threshold {rule} = {limit:.4g} (best of other trials at that step)")

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        return self.verdict(study, trial)[0]


@dataclass(frozen=True)
class Policy:
    """A parsed ``--policy``: builds the pruner and explains its verdicts in words."""

    kind: str
    options: dict[str, Any]

    def pruner(self) -> BasePruner:
        o = self.options
        if self.kind == "bandit":
            return BanditPruner(o.get("slack"), o.get("slack_amount"), int(o.get("interval", 1)),
                                int(o.get("delay", 0)))
        if self.kind == "median":
            return optuna.pruners.MedianPruner(
                n_startup_trials=int(o.get("startup", 5)),
                n_warmup_steps=int(o.get("warmup", 0)),
                interval_steps=int(o.get("interval", 1)))
        if self.kind == "hyperband":
            return optuna.pruners.HyperbandPruner(
                min_resource=int(o.get("min_resource", 1)),
                max_resource=o.get("max_resource", "auto"),
                reduction_factor=int(o.get("reduction_factor", 3)))
        if self.kind == "asha":
            return optuna.pruners.SuccessiveHalvingPruner(
                min_resource=o.get("min_resource", "auto"),
                reduction_factor=int(o.get("reduction_factor", 4)),
                min_early_stopping_rate=int(o.get("min_early_stopping_rate", 0)))
        return optuna.pruners.NopPruner()

    def explain(self, pruner: BasePruner, study: optuna.Study, trial: FrozenTrial) -> str:
        """Why ``trial`` was pruned, in words (policy, its value, the threshold, the step)."""
        if isinstance(pruner, BanditPruner):
            reason = pruner.verdict(study, trial)[1]
            if reason:
                return reason
        step = trial.last_step
        value = trial.intermediate_values.get(step) if step is not None else None
        shown = "NaN" if value is None or math.isnan(value) else f"{value:.4g}"
        completed = _others_at(study, trial, step, (TrialState.COMPLETE,)) if step else []
        if self.kind == "median" and completed:
            median = statistics.median(completed)  # Optuna's median uses completed trials
            side = "below" if study.direction.name == "MAXIMIZE" else "above"
            return (f"median policy: value {shown} at step {step} is {side} the median "
                    f"{median:.4g} of other trials at that step")
        return (f"{self.kind} policy: value {shown} at step {step} is not among the trials "
                f"kept at this rung")


def parse_policy(text: str | None) -> Policy:
    """``bandit(slack=0.15, interval=1, delay=5)`` → Policy; ``none`` or empty → no pruning."""
    text = (text or "none").strip()
    try:
        node = ast.parse(text, mode="eval").body
    except SyntaxError:
        node = None
    if isinstance(node, ast.Name):
        kind, keywords = node.id, []
    elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and not node.args:
        kind, keywords = node.func.id, node.keywords
    else:
        raise InvalidInput(f"--policy {text!r} is not a policy; use one of: "
                           + "; ".join(POLICIES.values()))
    if kind not in POLICIES:
        raise InvalidInput(f"--policy {text!r}: unknown policy {kind!r}; use one of: "
                           + ", ".join(POLICIES))
    try:
        options = {k.arg: ast.literal_eval(k.value) for k in keywords}
    except ValueError:
        raise InvalidInput(f"--policy {text!r}: option values must be literals") from None
    allowed = {
        "bandit": {"slack", "slack_amount", "interval", "delay"},
        "median": {"warmup", "startup", "interval"},
        "hyperband": {"min_resource", "max_resource", "reduction_factor"},
        "asha": {"min_resource", "reduction_factor", "min_early_stopping_rate"},
        "none": set(),
    }[kind]
    unknown = set(options) - allowed
    if unknown:
        raise InvalidInput(f"--policy {text!r}: {kind} has no option "
                           f"{', '.join(sorted(unknown))}; it takes {POLICIES[kind]}")
    policy = Policy(kind, options)
    policy.pruner()  # validate option values now, not in the detached controller
    return policy
