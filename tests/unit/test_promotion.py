"""The promotion policy: champion only when shown better on the same items, nothing registered on a failed gate."""

from __future__ import annotations

import numpy as np
import pytest

from tasks.lib.promotion import (
    CHALLENGER,
    CHAMPION,
    decide_promotion,
    decode_correct,
    encode_correct,
    items_fingerprint,
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
    from tasks.lib.promotion import decode_scores, encode_scores

    rng = np.random.default_rng(6)  # one seeded example; the test's level is simulated in tests/unit/test_gate.py
    difficulty = rng.beta(2, 3, 120)
    champion = np.clip(difficulty + rng.normal(0, 0.1, 120), 0, 1)
    better = np.clip(difficulty + 0.08 + rng.normal(0, 0.1, 120), 0, 1)
    stored = decode_scores(encode_scores(list(champion)))  # as the champion's version tag keeps them
    assert stored == pytest.approx(list(champion), abs=5e-4)
    promoted = decide_promotion(True, list(better), stored)
    assert promoted.aliases == ["challenger", "champion"] and "sign-flip" in promoted.reason
    just_as_good = np.clip(difficulty + rng.normal(0, 0.1, 120), 0, 1)  # a different model, no better
    equal = decide_promotion(True, list(just_as_good), stored)
    assert equal.aliases == ["challenger"] and float(equal.tags["promotion.p_value"]) > 0.05


def test_repeated_confirmations_on_one_test_set_spend_its_alpha_and_a_rerun_spends_nothing() -> None:
    from tasks.lib.promotion import ConfirmationLedger, look_alpha

    assert sum(look_alpha(0.05, k) for k in range(1, 100_000)) == pytest.approx(0.05, rel=1e-4)
    ledger = ConfirmationLedger(fingerprint="f")
    assert ledger.look_of("run-a") == 1
    ledger = ledger.with_look("run-a", 0.05).with_look("run-b", 0.05)
    assert ledger.looks == 2 and ledger.alpha_spent == pytest.approx(look_alpha(0.05, 1) + look_alpha(0.05, 2))
    assert ledger.look_of("run-a") == 1 and ledger.look_of("run-b") == 2 and ledger.look_of("run-c") == 3
    assert ledger.with_look("run-b", 0.05) == ledger  # a register step re-run after a kill spends nothing more


def test_a_model_no_better_than_the_champion_is_almost_never_promoted_over_a_sweep_and_a_year_of_retrains() -> None:
    """Seeded simulation, 4,000 histories: a 20-trial sweep (chosen on validation data, so one look at the test
    items) then 52 weekly retrains, every model exactly as good as the champion (8% discordance on 200 test items).
    P(ever promoted) <= 0.05 + 0.01 with the ledger; at a fixed 0.05 per look it is most histories."""
    from scipy.stats import binom

    from tasks.lib.promotion import look_alpha

    rng = np.random.default_rng(11)
    histories, looks, n = 4000, 1 + 52, 200
    discordant = rng.binomial(n, 0.08, (histories, looks))
    gains = rng.binomial(discordant, 0.5)
    p_better = np.where(discordant > 0, binom.sf(gains - 1, discordant, 0.5), 1.0)  # exact one-sided McNemar
    spent = np.array([look_alpha(0.05, k) for k in range(1, looks + 1)])
    ever_with_ledger = float((p_better < spent).any(axis=1).mean())
    ever_fixed = float((p_better < 0.05).any(axis=1).mean())
    assert ever_with_ledger <= 0.06 and ever_fixed > 0.5, (ever_with_ledger, ever_fixed)
