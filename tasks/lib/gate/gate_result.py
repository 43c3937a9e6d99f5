"""What the gate decides, as typed results (every row, its interval, its verdict): read by the steps, the
reports and the registry without loading the statistics that compute them (tasks/lib/gate/decision.py)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel

Verdict = Literal["pass", "fail", "drop", "inconclusive", "uninformative"]
# How each verdict reads as a number in MLflow (worst 0, best 1): the one map of it.
VERDICT_CODE: dict[str, float] = {"fail": 0.0, "drop": 0.25, "inconclusive": 0.5, "uninformative": 0.75, "pass": 1.0}


class GroupCounts(BaseModel):
    """One subject of a benchmark made of several (MMLU): its paired counts, which sum to the row's."""

    name: str
    n: int
    base: float  # points
    tuned: float
    gains: int
    losses: int


class GateRow(BaseModel):
    name: str
    metric: str
    kind: Literal["accuracy", "perplexity", "task"]
    verdict: Verdict
    passed: bool  # what the verdict means for promotion (inconclusive follows gate.on_inconclusive)
    reason: str
    n: int = 0
    base: float | None = None  # points for accuracy and task rows; the perplexity itself otherwise
    tuned: float | None = None
    delta: float | None = None  # tuned - base: points (accuracy, task) or percent change (perplexity)
    ci_low: float | None = None  # interval of delta, same unit
    ci_high: float | None = None
    margin: float | None = None  # the non-inferiority margin, same unit as delta (a positive number)
    p_value: float | None = None  # the p-value behind the verdict (Holm-adjusted for benchmarks)
    p_noninferior: float | None = None  # H0: worse by the margin or more
    p_beyond_margin: float | None = None  # H0: worse by less than the margin (fail when small)
    p_worse: float | None = None  # H0: no change (McNemar; small: a drop of some size is shown)
    p_better: float | None = None
    gains: int | None = None  # items base got wrong and tuned right
    losses: int | None = None  # items base got right and tuned wrong
    detectable_drop: float | None = None  # smallest margin showable with 80% power at this n (same unit)
    items_needed: int | None = None  # items that would settle an inconclusive row (80% power, no true change)
    alpha: float | None = None  # the family-wise level the adjusted p-values are read at
    chance: float | None = None  # guessing accuracy in points (multiple choice)
    p_above_chance: float | None = None  # H0: the base guesses (large: the row is uninformative)
    groups: list[GroupCounts] = []  # per subject, where the items carry one
    looks: int | None = None  # group-sequential rows: the look the row stopped at (1-based) ...
    max_looks: int | None = None  # ... of this many
    max_items: int | None = None  # the items the row would have scored at its last look


class GateResult(BaseModel):
    verdict: Verdict
    passed: bool
    rows: list[GateRow]
    task: GateRow
    max_accuracy_drop: float
    max_perplexity_increase: float
    alpha: float
    on_inconclusive: str
    decided_by: list[str] = []  # the rows whose verdict is the overall one (uninformative rows never decide)
    sequential: bool = False  # group-sequential looks (rows say where they stopped); False: one look, Holm
    note: str = ""  # e.g. why the benchmarks were not scored

    def failures(self) -> list[GateRow]:
        return [row for row in [*self.rows, self.task] if not row.passed]

    def inconclusive(self) -> list[GateRow]:
        return [row for row in [*self.rows, self.task] if row.verdict == "inconclusive"]

    def metrics(self) -> dict[str, float]:
        """Per row: delta, interval, p-value, verdict (1 pass, 0.5 inconclusive, 0 fail); plus the overall verdict."""
        metrics = {"gate_passed": float(self.passed), "gate_verdict": VERDICT_CODE[self.verdict]}
        for row in [*self.rows, self.task]:
            values = {
                "delta": row.delta,
                "ci_low": row.ci_low,
                "ci_high": row.ci_high,
                "p_value": row.p_value,
                "p_noninferior": row.p_noninferior,
                "p_beyond_margin": row.p_beyond_margin,
                "detectable": row.detectable_drop,
                "n": float(row.n),
                "verdict": VERDICT_CODE[row.verdict],
            }
            metrics.update({f"gate.{row.name}.{key}": value for key, value in values.items() if value is not None})
        return metrics

    def tags(self) -> dict[str, str]:
        """The verdicts and each row's one-line reason, for runs and registered versions."""
        tags = {"gate": "passed" if self.passed else "failed", "gate.verdict": self.verdict}
        for row in [*self.rows, self.task]:
            tags[f"gate.{row.name}"] = f"{row.verdict}: {row.reason}"[:4000]
        return tags
