"""The promotion gate: did the tuned model keep its general abilities and improve on the target task?

Thresholds (from `GateConfig`):
- Accuracy-type metrics fail when tuned < base - max_accuracy_drop, in ABSOLUTE points: scores in [0, 1]
  are converted to points (x100) first, so 3.0 means "41.0% -> 38.0% is the worst allowed". Absolute
  points, not a relative drop, because the noise is absolute: at 500-1000 items the standard error of
  an accuracy near 40-60% is about 1.5-2 points (at 100 items about 5), so thresholds below 2-3 points
  flag sampling noise rather than forgetting. Set the threshold from the item count you evaluate.
- Perplexities (lower is better) fail when tuned > base x (1 + max_perplexity_increase).
- The task row fails when gate.require_task_improvement and tuned does not beat base (strictly).
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel

from tasks.lib.benchmarks import HEADLINE, HIGHER_IS_BETTER
from tasks.lib.config import GateConfig


class GateRow(BaseModel):
    name: str
    metric: str
    kind: Literal["accuracy", "perplexity", "task"]
    base: float | None
    tuned: float | None
    delta: float | None  # tuned - base, in the row's unit (points for accuracy)
    allowed: float | None  # the bound tuned must meet: >= for accuracy and task, <= for perplexity
    passed: bool
    reason: str
    base_stderr: float | None = None
    tuned_stderr: float | None = None


class GateResult(BaseModel):
    passed: bool
    rows: list[GateRow]
    task: GateRow
    max_accuracy_drop: float
    max_perplexity_increase: float

    def failures(self) -> list[GateRow]:
        return [row for row in [*self.rows, self.task] if not row.passed]


def _finite(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def _as_points(base: float, tuned: float) -> tuple[float, float, float]:
    """Accuracy pair in points; returns (base, tuned, scale)."""
    scale = 100.0 if max(abs(base), abs(tuned)) <= 1.0 else 1.0
    return base * scale, tuned * scale, scale


def _missing_row(name: str, metric: str, kind: str, base: float | None, tuned: float | None) -> GateRow:
    which = " and ".join(label for label, value in (("base", base), ("tuned", tuned)) if value is None)
    return GateRow(
        name=name,
        metric=metric,
        kind=kind,
        base=base,
        tuned=tuned,
        delta=None,
        allowed=None,
        passed=False,
        reason=f"no finite {which} score for {metric}",
    )


def _benchmark_row(name: str, base_scores: dict | None, tuned_scores: dict | None, gate: GateConfig) -> GateRow:
    metric = HEADLINE.get(name)
    if metric is None:
        return GateRow(
            name=name,
            metric="?",
            kind="accuracy",
            base=None,
            tuned=None,
            delta=None,
            allowed=None,
            passed=False,
            reason=f"unknown benchmark {name!r}",
        )
    kind = "accuracy" if HIGHER_IS_BETTER[metric] else "perplexity"
    base = _finite((base_scores or {}).get(metric))
    tuned = _finite((tuned_scores or {}).get(metric))
    if base is None or tuned is None:
        return _missing_row(name, metric, kind, base, tuned)
    base_err = _finite((base_scores or {}).get(f"{metric}_stderr"))
    tuned_err = _finite((tuned_scores or {}).get(f"{metric}_stderr"))

    if kind == "accuracy":
        base, tuned, scale = _as_points(base, tuned)
        base_err = base_err * scale if base_err is not None else None
        tuned_err = tuned_err * scale if tuned_err is not None else None
        allowed = base - gate.max_accuracy_drop
        passed = tuned >= allowed
        reason = (
            f"{metric} {tuned - base:+.2f} pts (limit -{gate.max_accuracy_drop:g})"
            if passed
            else f"{metric} dropped {base - tuned:.2f} pts, more than the allowed {gate.max_accuracy_drop:g}"
        )
    else:
        allowed = base * (1.0 + gate.max_perplexity_increase)
        passed = tuned <= allowed
        change = (tuned / base - 1.0) * 100.0 if base else math.inf
        reason = (
            f"{metric} {change:+.1f}% (limit +{gate.max_perplexity_increase * 100:g}%)"
            if passed
            else f"{metric} rose {change:.1f}%, more than the allowed {gate.max_perplexity_increase * 100:g}%"
        )
    return GateRow(
        name=name,
        metric=metric,
        kind=kind,
        base=base,
        tuned=tuned,
        delta=tuned - base,
        allowed=allowed,
        passed=passed,
        reason=reason,
        base_stderr=base_err,
        tuned_stderr=tuned_err,
    )


def _task_row(base: float | None, tuned: float | None, gate: GateConfig, metric: str) -> GateRow:
    base, tuned = _finite(base), _finite(tuned)
    if base is None or tuned is None:
        if not gate.require_task_improvement:
            return GateRow(
                name="task",
                metric=metric,
                kind="task",
                base=base,
                tuned=tuned,
                delta=None,
                allowed=None,
                passed=True,
                reason="task improvement not required",
            )
        return _missing_row("task", metric, "task", base, tuned)
    base, tuned, _ = _as_points(base, tuned)
    improved = tuned > base
    if not gate.require_task_improvement:
        passed, reason = True, f"{metric} {tuned - base:+.2f} (improvement not required)"
    elif improved:
        passed, reason = True, f"{metric} improved {tuned - base:+.2f}"
    else:
        passed, reason = False, f"{metric} did not improve ({tuned - base:+.2f}); the tuned model must beat the base"
    return GateRow(
        name="task",
        metric=metric,
        kind="task",
        base=base,
        tuned=tuned,
        delta=tuned - base,
        allowed=base if gate.require_task_improvement else None,
        passed=passed,
        reason=reason,
    )


def decide(
    base: dict[str, dict[str, float]],
    tuned: dict[str, dict[str, float]],
    gate: GateConfig,
    task_base: float | None,
    task_tuned: float | None,
    task_metric: str = "primary",
) -> GateResult:
    """Compare base and tuned benchmark scores ({name: {metric: value}}) and the task's primary metric.

    Every benchmark in either dict gets a row on its HEADLINE metric; a score missing on one side fails.
    """
    names = list(base) + [name for name in tuned if name not in base]
    rows = [_benchmark_row(name, base.get(name), tuned.get(name), gate) for name in names]
    task = _task_row(task_base, task_tuned, gate, task_metric)
    return GateResult(
        passed=all(row.passed for row in rows) and task.passed,
        rows=rows,
        task=task,
        max_accuracy_drop=gate.max_accuracy_drop,
        max_perplexity_increase=gate.max_perplexity_increase,
    )
