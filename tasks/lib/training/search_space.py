"""The sweep's logic, free of Prefect and MLflow: what a trial tries, how it scored, which trials are on the Pareto
front, and the table and plot that show them.

A trial's objective is its best validation loss (the selection data: never the test items that later confirm the
chosen model against the champion); it is feasible only when the forgetting gate passed. Each trial's paired task
gain on the test items is shown, never used to choose. Infeasible trials are kept and shown, never chosen.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from tasks.lib.config import SweepParameter
from tasks.lib.core.plots import pyplot, save_png


@dataclass
class TrialOutcome:
    number: int
    values: dict[str, Any]
    run_id: str
    state: str = "pending"  # completed | failed | pending
    validation_loss: float | None = None  # the best validation loss of its training: what chooses
    task_gain: float | None = None  # points, tuned - base on the same test items: shown, never chosen on
    task_ci: tuple[float, float] | None = None
    worst_forgetting: float | None = None  # the most negative accuracy-benchmark delta, points
    gate_passed: bool = False
    verdict: str = ""
    mlflow_run_id: str = ""
    run_dir: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def feasible(self) -> bool:
        return self.state == "completed" and self.gate_passed and self.validation_loss is not None


class SweepResult(BaseModel):
    sweep_run_id: str  # the MLflow parent run
    best_run_id: str | None  # None: no trial passed the gate
    registration: str  # what happened to the best trial in the registry, in words
    trials: list[TrialOutcome]


def suggest(trial, parameters: dict[str, SweepParameter]) -> dict[str, Any]:
    """The values an Optuna trial picks for each searched key."""
    values: dict[str, Any] = {}
    for key, parameter in parameters.items():
        if parameter.choices is not None:
            values[key] = trial.suggest_categorical(key, parameter.choices)
        elif float(parameter.low).is_integer() and float(parameter.high).is_integer() and not parameter.log:
            values[key] = trial.suggest_int(key, int(parameter.low), int(parameter.high))
        else:
            values[key] = trial.suggest_float(key, parameter.low, parameter.high, log=parameter.log)
    return values


def grid_space(parameters: dict[str, SweepParameter]) -> dict[str, list[Any]]:
    return {key: list(parameter.choices) for key, parameter in parameters.items()}


def overrides_for(values: dict[str, Any]) -> list[str]:
    """`key=value` overrides (values written as JSON, which the config reads as YAML)."""
    return [f"{key}={json.dumps(value)}" for key, value in values.items()]


def outcome_from_metrics(outcome: TrialOutcome, metrics: dict[str, float], tags: dict[str, str]) -> TrialOutcome:
    """Fill a trial's scores from its pipeline run's headline metrics and tags (what MLflow holds for it)."""
    outcome.validation_loss = metrics.get("train.best_eval_loss")
    outcome.task_gain = metrics.get("task.delta")
    if "task.ci_low" in metrics and "task.ci_high" in metrics:
        outcome.task_ci = (metrics["task.ci_low"], metrics["task.ci_high"])
    outcome.worst_forgetting = metrics.get("forgetting.worst_accuracy_delta_pts")
    outcome.gate_passed = metrics.get("gate.passed") == 1.0
    outcome.verdict = tags.get("gate", "not reached")
    outcome.state = "completed" if tags.get("outcome") == "completed" else "failed"
    return outcome


def best_feasible(outcomes: list[TrialOutcome]) -> TrialOutcome | None:
    """The gate-passing trial with the lowest validation loss (the earlier trial on a tie)."""
    feasible = [outcome for outcome in outcomes if outcome.feasible]
    return min(feasible, key=lambda outcome: (outcome.validation_loss, outcome.number)) if feasible else None


def pareto_front(outcomes: list[TrialOutcome]) -> set[int]:
    """Trial numbers no other scored trial beats on both validation loss (lower is better) and worst forgetting
    delta (higher is better)."""
    scored = [o for o in outcomes if o.validation_loss is not None and o.worst_forgetting is not None]

    def dominates(a: TrialOutcome, b: TrialOutcome) -> bool:
        return (
            a.validation_loss <= b.validation_loss
            and a.worst_forgetting >= b.worst_forgetting
            and (a.validation_loss < b.validation_loss or a.worst_forgetting > b.worst_forgetting)
        )

    return {b.number for b in scored if not any(dominates(a, b) for a in scored)}


def _num(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:+.{digits}f}"


def trials_markdown(outcomes: list[TrialOutcome], best: TrialOutcome | None, registration: str) -> str:
    front = pareto_front(outcomes)
    keys = sorted({key for outcome in outcomes for key in outcome.values})
    lines = [
        "# Sweep",
        "",
        f"{len(outcomes)} trials; chosen on the validation loss (never on test items), subject to the forgetting "
        f"gate passing; the task gain on the test items is shown, not chosen on. "
        f"Best gate-passing trial: {f'#{best.number} ({best.run_id})' if best else 'none'}. {registration}",
        "",
        "| trial | "
        + " | ".join(keys)
        + " | validation loss | task gain (pts) [CI] | worst forgetting (pts) | gate | Pareto | run |",
        "|---|" + "---|" * len(keys) + "---|---|---|---|---|---|",
    ]
    for outcome in sorted(outcomes, key=lambda o: o.number):
        ci = f" [{outcome.task_ci[0]:+.1f}, {outcome.task_ci[1]:+.1f}]" if outcome.task_ci else ""
        gate = outcome.verdict if outcome.state == "completed" else outcome.state
        marker = " (best)" if best is not None and outcome.number == best.number else ""
        lines.append(
            f"| #{outcome.number}{marker} | "
            + " | ".join(f"{outcome.values.get(key, '')}" for key in keys)
            + f" | {'-' if outcome.validation_loss is None else f'{outcome.validation_loss:.4f}'}"
            + f" | {_num(outcome.task_gain)}{ci} | {_num(outcome.worst_forgetting)} | {gate} | "
            + ("yes" if outcome.number in front else "")
            + f" | {outcome.run_id} |"
        )
    return "\n".join(lines) + "\n"


def pareto_plot(outcomes: list[TrialOutcome], path: Path) -> Path:
    """PNG: validation loss against the worst forgetting delta, gate-passing trials filled, the front joined."""
    plt = pyplot()
    scored = [o for o in outcomes if o.validation_loss is not None and o.worst_forgetting is not None]
    front = sorted((o for o in scored if o.number in pareto_front(outcomes)), key=lambda o: o.worst_forgetting)
    figure, axis = plt.subplots(figsize=(6, 4))
    for passed, style in (
        (True, dict(color="#1e8449", label="gate passed")),
        (False, dict(facecolors="none", edgecolors="#c0392b", label="gate not passed")),
    ):
        chosen = [o for o in scored if o.gate_passed == passed]
        if chosen:
            axis.scatter([o.worst_forgetting for o in chosen], [o.validation_loss for o in chosen], s=40, **style)
    for outcome in scored:
        axis.annotate(
            f"#{outcome.number}",
            (outcome.worst_forgetting, outcome.validation_loss),
            fontsize=7,
            xytext=(4, 3),
            textcoords="offset points",
        )
    if len(front) > 1:
        axis.plot([o.worst_forgetting for o in front], [o.validation_loss for o in front], color="grey", linewidth=0.8)
    axis.axvline(0.0, color="grey", linewidth=0.5)
    axis.set_xlabel("worst forgetting delta, accuracy points (right is better)")
    axis.set_ylabel("best validation loss (lower is better)")
    axis.set_title("Sweep: learning vs forgetting")
    axis.legend(fontsize=8)
    return save_png(figure, path)
