"""The promotion gate's thresholds, on hand-made scores (no model)."""

from __future__ import annotations

import math

import pytest

from tasks.lib.config import GateConfig
from tasks.lib.gate import GateResult, GateRow, decide

GATE = GateConfig(max_accuracy_drop=3.0, max_perplexity_increase=0.10, require_task_improvement=True)


def _decide(
    base: dict[str, dict[str, float]],
    tuned: dict[str, dict[str, float]],
    gate: GateConfig = GATE,
    task: tuple[float | None, float | None] = (0.50, 0.80),
) -> GateResult:
    return decide(base, tuned, gate, task_base=task[0], task_tuned=task[1], task_metric="accuracy")


def _row(result: GateResult, name: str) -> GateRow:
    (row,) = [row for row in result.rows if row.name == name]
    return row


@pytest.mark.parametrize(
    ("base", "tuned", "passed"),
    [
        (0.410, 0.400, True),  # -1 point
        (0.410, 0.370, False),  # -4 points
        (0.410, 0.450, True),  # improved
        (41.0, 37.5, False),  # already in points: -3.5
        (41.0, 38.5, True),
    ],
)
def test_accuracy_drop_is_measured_in_points(base: float, tuned: float, passed: bool) -> None:
    result = _decide({"hellaswag": {"acc_norm": base}}, {"hellaswag": {"acc_norm": tuned}})
    row = _row(result, "hellaswag")
    assert row.kind == "accuracy"
    assert row.metric == "acc_norm"
    assert row.passed is passed
    assert result.passed is passed
    scale = 100.0 if base <= 1.0 else 1.0
    assert row.delta == pytest.approx((tuned - base) * scale)
    assert row.allowed == pytest.approx(base * scale - GATE.max_accuracy_drop)


def test_accuracy_drop_is_absolute_not_relative() -> None:
    """A 10% relative drop on a low score (20 -> 18 points) is only 2 points: within a 3-point limit."""
    result = _decide({"arc_easy": {"acc_norm": 0.20}}, {"arc_easy": {"acc_norm": 0.18}})
    assert _row(result, "arc_easy").passed


def test_accuracy_exactly_at_the_limit_passes() -> None:
    """The bound is inclusive: tuned >= base - max_accuracy_drop."""
    result = _decide({"piqa": {"acc_norm": 41.0}}, {"piqa": {"acc_norm": 38.0}})
    row = _row(result, "piqa")
    assert row.allowed == 38.0
    assert row.passed


@pytest.mark.parametrize(("tuned", "passed"), [(21.0, True), (22.5, False), (18.0, True)])
def test_perplexity_increase_is_relative(tuned: float, passed: bool) -> None:
    result = _decide({"wikitext": {"word_perplexity": 20.0}}, {"wikitext": {"word_perplexity": tuned}})
    row = _row(result, "wikitext")
    assert row.kind == "perplexity"
    assert row.passed is passed
    assert result.passed is passed
    assert row.allowed == pytest.approx(20.0 * (1 + GATE.max_perplexity_increase))
    assert row.delta == pytest.approx(tuned - 20.0)


def test_perplexity_is_not_scaled_to_points() -> None:
    """Perplexities below 1.0 would be scaled if treated like accuracies; they are compared as measured."""
    result = _decide({"wikitext": {"word_perplexity": 0.5}}, {"wikitext": {"word_perplexity": 0.54}})
    row = _row(result, "wikitext")
    assert (row.base, row.tuned) == (0.5, 0.54)
    assert row.passed


def test_perplexity_exactly_at_the_limit_passes() -> None:
    gate = GateConfig(max_perplexity_increase=0.5)
    result = _decide({"wikitext": {"word_perplexity": 10.0}}, {"wikitext": {"word_perplexity": 15.0}}, gate)
    assert _row(result, "wikitext").allowed == 15.0
    assert _row(result, "wikitext").passed


@pytest.mark.parametrize(
    ("task", "required", "passed"),
    [
        ((0.50, 0.60), True, True),
        ((0.50, 0.40), True, False),
        ((0.50, 0.50), True, False),  # a tie is not an improvement
        ((0.50, 0.40), False, True),
        ((None, 0.40), False, True),
        ((None, 0.40), True, False),
        ((0.50, math.nan), True, False),
    ],
)
def test_task_improvement(task: tuple[float | None, float | None], required: bool, passed: bool) -> None:
    gate = GateConfig(require_task_improvement=required)
    result = _decide({}, {}, gate, task=task)
    assert result.task.name == "task"
    assert result.task.passed is passed
    assert result.passed is passed
    assert (result.task in result.failures()) is not passed


def test_task_row_reports_points_and_bound() -> None:
    result = _decide({}, {}, task=(0.50, 0.75))
    assert (result.task.base, result.task.tuned) == (50.0, 75.0)
    assert result.task.delta == pytest.approx(25.0)
    assert result.task.allowed == 50.0


@pytest.mark.parametrize("missing_side", ["base", "tuned"])
def test_benchmark_missing_on_one_side_fails(missing_side: str) -> None:
    present = {"hellaswag": {"acc_norm": 0.4}, "lambada": {"acc": 0.3}}
    partial = {"hellaswag": {"acc_norm": 0.4}}
    base, tuned = (partial, present) if missing_side == "base" else (present, partial)
    result = _decide(base, tuned)
    assert not result.passed
    assert [row.name for row in result.rows] == ["hellaswag", "lambada"]
    (failure,) = result.failures()
    assert failure.name == "lambada"
    assert failure.delta is None
    assert missing_side in failure.reason
    assert "acc" in failure.reason


def test_non_finite_or_wrong_metric_counts_as_missing() -> None:
    base = {"hellaswag": {"acc_norm": 0.4}, "piqa": {"acc_norm": 0.6}}
    tuned = {"hellaswag": {"acc_norm": math.inf}, "piqa": {"acc": 0.6}}  # piqa's headline is acc_norm
    result = _decide(base, tuned)
    assert {row.name for row in result.failures()} == {"hellaswag", "piqa"}


def test_unknown_benchmark_fails() -> None:
    result = _decide({"mmlu": {"acc": 0.5}}, {"mmlu": {"acc": 0.5}})
    assert not result.passed
    assert "mmlu" in _row(result, "mmlu").reason


def test_failures_name_benchmark_and_numbers() -> None:
    base = {"hellaswag": {"acc_norm": 0.41}, "arc_easy": {"acc_norm": 0.60}, "wikitext": {"word_perplexity": 20.0}}
    tuned = {"hellaswag": {"acc_norm": 0.30}, "arc_easy": {"acc_norm": 0.60}, "wikitext": {"word_perplexity": 30.0}}
    result = _decide(base, tuned, task=(0.5, 0.4))
    failures = {row.name: row for row in result.failures()}
    assert set(failures) == {"hellaswag", "wikitext", "task"}
    assert "11.00" in failures["hellaswag"].reason  # 41 -> 30 points
    assert "allowed 3" in failures["hellaswag"].reason
    assert "50.0%" in failures["wikitext"].reason  # 20 -> 30
    assert "10%" in failures["wikitext"].reason
    assert "-10.00" in failures["task"].reason


def test_stderrs_are_converted_with_the_scores() -> None:
    result = _decide(
        {"hellaswag": {"acc_norm": 0.4, "acc_norm_stderr": 0.02}},
        {"hellaswag": {"acc_norm": 0.41, "acc_norm_stderr": 0.015}},
    )
    row = _row(result, "hellaswag")
    assert row.base_stderr == pytest.approx(2.0)
    assert row.tuned_stderr == pytest.approx(1.5)


def test_result_carries_the_limits_and_all_rows() -> None:
    base = {"hellaswag": {"acc_norm": 0.4}}
    tuned = {"hellaswag": {"acc_norm": 0.4}, "wikitext": {"word_perplexity": 9.0}}
    result = _decide(base, tuned)
    assert [row.name for row in result.rows] == ["hellaswag", "wikitext"]
    assert (result.max_accuracy_drop, result.max_perplexity_increase) == (3.0, 0.10)
    assert [row.name for row in result.failures()] == ["wikitext"]
