"""The promotion policy: champion only on a strict improvement, nothing registered on a failed gate."""

from __future__ import annotations

import pytest

from tasks.lib.promotion import CHALLENGER, CHAMPION, decide_promotion


def test_first_passing_run_becomes_champion() -> None:
    decision = decide_promotion(True, 0.8, None)
    assert decision.register and set(decision.aliases) == {CHAMPION, CHALLENGER}
    assert decision.tags["promoted"] == "true"


def test_better_run_takes_the_champion_alias() -> None:
    decision = decide_promotion(True, 0.81, 0.80)
    assert CHAMPION in decision.aliases and CHALLENGER in decision.aliases


@pytest.mark.parametrize("score", [0.79, 0.80], ids=["worse", "equal"])
def test_worse_or_equal_run_stays_challenger(score: float) -> None:
    decision = decide_promotion(True, score, 0.80)
    assert decision.register and decision.aliases == [CHALLENGER]
    assert decision.tags["promoted"] == "false"
    assert "does not beat" in decision.reason


@pytest.mark.parametrize("champion_score", [None, 0.1], ids=["no-champion", "weak-champion"])
def test_gate_failure_registers_nothing(champion_score: float | None) -> None:
    decision = decide_promotion(False, 0.99, champion_score)
    assert not decision.register and decision.aliases == [] and CHAMPION not in decision.aliases
    assert "gate" in decision.reason


def test_nan_score_is_refused() -> None:
    with pytest.raises(ValueError, match="NaN"):
        decide_promotion(True, float("nan"), None)
