"""The promotion policy: champion only when shown better on the same items, nothing registered on a failed gate."""

from __future__ import annotations

import math

import numpy as np
import pytest

from benchmarks import promotion_calibration as calibration
from tasks.lib.gate.promotion import (
    CHALLENGER,
    CHAMPION,
    ConfirmationLedger,
    ConfirmationLook,
    decide_promotion,
    decode_correct,
    encode_correct,
    items_fingerprint,
    promotes,
)

CHAMPION_ITEMS = [True] * 60 + [False] * 40


def test_first_passing_run_becomes_champion() -> None:
    decision = decide_promotion(True, [True, False], None)
    assert decision.register and set(decision.aliases) == {CHAMPION, CHALLENGER}
    assert decision.tags["promoted"] == "true"


def test_clearly_better_run_takes_the_champion_alias_with_its_evidence() -> None:
    challenger = [True] * 85 + [False] * 15  # 25 gains, 0 losses on the same items
    decision = decide_promotion(True, challenger, CHAMPION_ITEMS)
    assert CHAMPION in decision.aliases and CHALLENGER in decision.aliases
    assert float(decision.tags["promotion.p_value"]) == pytest.approx(0.5**25, rel=1e-3)
    assert decision.tags["promotion.n"] == "100" and "promoted" in decision.reason


@pytest.mark.parametrize(
    "challenger",
    [[True] * 62 + [False] * 38, CHAMPION_ITEMS, [True] * 50 + [False] * 50],
    ids=["small-gain", "equal", "worse"],
)
def test_unproven_or_worse_run_stays_challenger(challenger: list[bool]) -> None:
    decision = decide_promotion(True, challenger, CHAMPION_ITEMS)
    assert decision.register and decision.aliases == [CHALLENGER]
    assert decision.tags["promoted"] == "false" and "stays challenger" in decision.reason


@pytest.mark.parametrize("champion", [None, [False] * 100], ids=["no-champion", "weak-champion"])
def test_gate_failure_registers_nothing(champion) -> None:
    decision = decide_promotion(False, [True] * 100, champion)
    assert not decision.register and decision.aliases == [] and "gate" in decision.reason


def test_items_must_pair() -> None:
    with pytest.raises(ValueError, match="same items"):
        decide_promotion(True, [True] * 99, CHAMPION_ITEMS)


def test_per_item_encoding_round_trips_and_fingerprints_differ() -> None:
    assert decode_correct(encode_correct(CHAMPION_ITEMS)) == CHAMPION_ITEMS
    with pytest.raises(ValueError):
        decode_correct("01x")
    assert items_fingerprint([("a", 1)]) != items_fingerprint([("b", 1)])


def test_a_better_free_text_challenger_replaces_its_champion_and_an_equal_one_does_not() -> None:
    from tasks.lib.gate.promotion import decode_scores, encode_scores

    rng = np.random.default_rng(6)  # one seeded example; the test's level is simulated below
    difficulty = rng.beta(2, 3, 300)
    champion = np.clip(difficulty + rng.normal(0, 0.1, 300), 0, 1)
    better = np.clip(difficulty + 0.08 + rng.normal(0, 0.1, 300), 0, 1)
    stored = decode_scores(encode_scores(list(champion)))  # as the champion's version tag keeps them
    assert stored == pytest.approx(list(champion), abs=5e-4)
    promoted = decide_promotion(True, list(better), stored)
    assert promoted.aliases == ["challenger", "champion"] and "betting" in promoted.reason
    just_as_good = np.clip(difficulty + rng.normal(0, 0.1, 300), 0, 1)  # a different model, no better
    equal = decide_promotion(True, list(just_as_good), stored)
    assert equal.aliases == ["challenger"] and float(equal.tags["promotion.p_value"]) > 0.05


def test_the_ledger_counts_looks_once_per_run_and_a_new_horizon_opens_a_fresh_budget() -> None:
    ledger = ConfirmationLedger(fingerprint="f").opened(horizon=52, renewals=0)
    assert ledger.look_of("run-a", 0.05) == ConfirmationLook(1, 52, 0.05)
    ledger = ledger.with_look("run-a").with_look("run-b")
    assert ledger.looks == 2 and ledger.look_of("run-a", 0.05).number == 1 and ledger.look_of("run-c", 0.05).number == 3
    assert ledger.with_look("run-b") == ledger  # a register step re-run after a kill spends nothing more
    assert ledger.opened(horizon=10, renewals=0).horizon == 52  # an open budget keeps its horizon
    renewed = ledger.opened(horizon=26, renewals=1)
    assert renewed.looks == 0 and renewed.horizon == 26 and renewed.renewals == 1
    assert ConfirmationLook(52, 52, 0.05).level == pytest.approx(0.05 / 52) == ConfirmationLook(1, 52, 0.05).level
    assert ConfirmationLook(53, 52, 0.05).level == 0.0


def test_past_the_horizon_nothing_is_promoted_and_the_decision_says_what_renews_the_budget() -> None:
    champion = [True] * 60 + [False] * 40
    far_better = [True] * 100  # 40 gains, 0 losses
    within = decide_promotion(True, far_better, champion, ConfirmationLook(52, 52, 0.05))
    past = decide_promotion(True, far_better, champion, ConfirmationLook(53, 52, 0.05))
    assert within.tags["promoted"] == "true" and within.tags["promotion.look"] == "52/52"
    assert past.aliases == [CHALLENGER] and "budget is spent" in past.reason
    assert "fresh test items" in past.reason and "registry.horizon_renewals" in past.reason


def test_every_decision_states_the_gain_its_items_can_confirm_at_80_percent_power() -> None:
    champion = [True] * 170 + [False] * 30
    equal = [not x if i % 25 == 0 else x for i, x in enumerate(champion)]  # 8 items differ, 4 each way
    decision = decide_promotion(True, equal, champion, ConfirmationLook(1, 52, 0.05))
    gain = float(decision.tags["promotion.confirmable_gain_pts"])
    assert 3.0 < gain < 15.0 and f"gain of {gain:.1f} pts at 80% power" in decision.reason
    smaller = decide_promotion(True, equal[:100], champion[:100], ConfirmationLook(1, 52, 0.05))
    assert float(smaller.tags["promotion.confirmable_gain_pts"]) > gain  # fewer items confirm only larger gains


# The simulations below run the product's own rule (promotes, the function decide_promotion applies) through the
# ledger's looks, with each history's champion scored once and its stored results reused at every look, as the
# registry does (benchmarks/promotion_calibration.py: the same simulations at 4,000 histories a cell, the table in
# docs/pipeline.md). Monte Carlo tolerances: 3 standard errors of the estimated rate.
REPS = 4000


def _tolerance(rate: float, reps: int = REPS) -> float:
    return 3.0 * math.sqrt(rate * (1.0 - rate) / reps)


@pytest.mark.parametrize("unstable", [False, True], ids=["even-items", "unstable-items"])
def test_52_weekly_retrains_of_equal_models_promote_one_at_most_alpha_of_the_time(unstable: bool) -> None:
    ever = float(
        calibration.retrain_history(11 + unstable, REPS, calibration.ledger_looks(), unstable=unstable)
        .any(axis=1)
        .mean()
    )
    assert ever <= 0.05 + _tolerance(0.05), ever


def test_a_worse_model_is_promoted_at_most_alpha_at_any_look() -> None:
    rng = np.random.default_rng(5)
    champion = (rng.random((REPS, calibration.ITEMS)) < calibration.ACCURACY).astype(float)
    worse = calibration.challengers(rng, champion, -0.02, unstable=False)
    for look in (calibration.ledger_looks()[0], calibration.ledger_looks()[-1]):
        assert float(promotes(champion, worse, look).mean()) <= look.level + _tolerance(look.level)


def test_the_gain_reported_as_confirmable_is_found_as_often_at_look_52_as_at_look_1() -> None:
    """The gain a decision says its items can confirm at 80% power (an equal challenger's decision at look 52),
    arriving at look 52 after 51 equal retrains: promoted >= 72% of the time, and >= 0.9 x its rate at look 1."""
    looks = calibration.ledger_looks()
    gain = calibration.confirmable_gain(looks[-1])
    at_52 = float(calibration.retrain_history(21, REPS, looks, last_gain=gain)[:, -1].mean())
    at_1 = float(calibration.retrain_history(22, REPS, looks[:1], last_gain=gain)[:, -1].mean())
    assert at_52 >= 0.72 and at_52 >= 0.9 * at_1, (gain, at_52, at_1)


def test_a_free_text_challenger_is_promotable_at_every_look_and_an_equal_one_rarely() -> None:
    """The betting p-value has no floor: a clearly better free-text model is promoted at look 52 as at look 1 (the
    sign-flip test's smallest p-value, 1e-4, sat above every level from look 18 of the old decaying budget)."""
    rng = np.random.default_rng(9)
    looks = calibration.ledger_looks()
    champion, better = calibration.free_text(rng, 500, 300, 0.08)
    rates = [float(promotes(champion, better, look).mean()) for look in (looks[0], looks[17], looks[-1])]
    assert min(rates) >= 0.8 and max(rates) - min(rates) < 0.05, rates
    champion, equal = calibration.free_text(rng, 1000, 300, 0.0)
    assert float(promotes(champion, equal, looks[0]).mean()) <= looks[0].level + _tolerance(looks[0].level, 1000)


def test_decide_promotion_applies_the_simulated_rule() -> None:
    rng = np.random.default_rng(4)
    champion = (rng.random((20, calibration.ITEMS)) < calibration.ACCURACY).astype(float)
    look = ConfirmationLook(1, 1, 0.05)
    new = calibration.challengers(rng, champion, 0.06, unstable=False)
    rule = promotes(champion, new, look)
    decided = [
        decide_promotion(True, list(b), list(a), look).tags["promoted"] == "true"
        for a, b in zip(champion, new, strict=True)
    ]
    assert decided == list(rule) and 0 < sum(decided) < 20
