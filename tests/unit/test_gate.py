"""The paired gate on hand-made per-item results (no model): statistics against hand-computed values, the
three-way verdicts, Holm across benchmarks, and a seeded calibration of its error rates."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tasks.lib import stats
from tasks.lib.config import GateConfig
from tasks.lib.gate import GateResult, GateRow, decide
from tasks.lib.gate_calibration import verdict_rates

GATE = GateConfig(max_accuracy_drop=5.0, max_perplexity_increase=0.10, require_task_improvement=True)


def _accuracy(correct: list[int]) -> dict:
    return {"acc_norm": float(np.mean(correct)), "items": {str(i): float(c) for i, c in enumerate(correct)}}


def _pairs(n: int, gains: int, losses: int, both: int) -> tuple[list[int], list[int]]:
    """Per-item base/tuned correctness with the given discordant counts and `both` right on both sides."""
    base = [0] * gains + [1] * losses + [1] * both
    tuned = [1] * gains + [0] * losses + [1] * both
    rest = n - len(base)
    return base + [0] * rest, tuned + [0] * rest


def _row(result: GateResult, name: str) -> GateRow:
    (row,) = [row for row in result.rows if row.name == name]
    return row


# ---------------------------------------------------------------- statistics against hand-computed values


def test_exact_mcnemar_matches_the_binomial_by_hand() -> None:
    # 8 losses, 2 gains: P(X >= 8 | 10, 1/2) = (45 + 10 + 1) / 1024
    pairs = stats.count_pairs(*_pairs(100, gains=2, losses=8, both=40))
    assert stats.p_worse(pairs) == pytest.approx(56 / 1024)
    assert stats.p_better(pairs) == pytest.approx(1013 / 1024)  # P(X >= 2 | 10, 1/2) = 1 - 11/1024
    assert stats.p_worse(stats.count_pairs([1, 0], [1, 0])) == 1.0  # no discordant pair: no evidence


def test_agresti_min_interval_by_hand() -> None:
    pairs = stats.count_pairs(*_pairs(100, gains=10, losses=5, both=50))
    # cells + 1/2 each, n + 2: p_gain = 10.5/102, p_loss = 5.5/102
    p_gain, p_loss = 10.5 / 102, 5.5 / 102
    delta = p_gain - p_loss
    se = math.sqrt((p_gain + p_loss - delta**2) / 102)
    low, high = stats.difference_interval(pairs, 0.95)
    assert (low, high) == pytest.approx((delta - 1.959964 * se, delta + 1.959964 * se), abs=1e-6)
    assert stats.p_noninferior(pairs, 0.05) == pytest.approx(0.5 * math.erfc((delta + 0.05) / se / math.sqrt(2)))


def test_holm_by_hand() -> None:
    # sorted 0.01, 0.02, 0.04 -> 3 x 0.01, max(0.03, 2 x 0.02), max(0.04, 1 x 0.04); then in input order
    assert stats.holm([0.04, 0.01, 0.02]) == pytest.approx([0.04, 0.03, 0.04])
    assert stats.holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])


def test_bootstrap_log_ratio_observed_value() -> None:
    observed, draws = stats.bootstrap_log_ratio([-100.0, -200.0], [-110.0, -220.0], [50, 100], 500, seed=1)
    assert observed == pytest.approx((-300 + 330) / 150)
    assert draws.shape == (500,) and draws.min() >= 0.2 - 1e-9 and draws.max() <= 0.2 + 1e-9  # same ratio per doc


# ---------------------------------------------------------------- verdicts


def test_unchanged_model_with_enough_items_passes() -> None:
    base, tuned = _pairs(1000, gains=50, losses=50, both=400)
    result = decide({"arc_easy": _accuracy(base)}, {"arc_easy": _accuracy(tuned)}, GATE, [0, 1], [1, 1])
    row = _row(result, "arc_easy")
    assert row.verdict == "pass" and row.passed
    assert row.ci_low > -GATE.max_accuracy_drop and row.gains == row.losses == 50


def test_clear_drop_beyond_the_margin_fails() -> None:
    base, tuned = _pairs(1000, gains=20, losses=120, both=300)  # -10 points
    result = decide({"piqa": _accuracy(base)}, {"piqa": _accuracy(tuned)}, GATE, [0, 1], [1, 1])
    row = _row(result, "piqa")
    assert row.verdict == "fail" and not row.passed and not result.passed
    assert row.delta == pytest.approx(-10.0) and row.ci_high < 0
    assert "forgetting shown" in row.reason


def test_few_items_are_inconclusive_and_say_how_many_would_settle_it() -> None:
    base, tuned = _pairs(60, gains=5, losses=5, both=20)
    result = decide({"piqa": _accuracy(base)}, {"piqa": _accuracy(tuned)}, GATE, [0, 1], [1, 1])
    row = _row(result, "piqa")
    assert row.verdict == "inconclusive" and not row.passed and result.verdict == "inconclusive"
    assert row.detectable_drop > GATE.max_accuracy_drop and row.items_needed > 60
    lenient = decide(
        {"piqa": _accuracy(base)},
        {"piqa": _accuracy(tuned)},
        GATE.model_copy(update={"on_inconclusive": "pass"}),
        [0, 1],
        [1, 1],
    )
    assert lenient.passed and _row(lenient, "piqa").verdict == "inconclusive"


def test_holm_makes_a_borderline_row_inconclusive_among_several() -> None:
    base, tuned = _pairs(500, gains=30, losses=30, both=200)  # alone: passes at alpha 0.05
    alone = decide({"arc_easy": _accuracy(base)}, {"arc_easy": _accuracy(tuned)}, GATE, [0, 1], [1, 1])
    p_alone = _row(alone, "arc_easy").p_noninferior
    weak_b, weak_t = _pairs(100, gains=10, losses=10, both=40)
    together = decide(
        {"arc_easy": _accuracy(base), "piqa": _accuracy(weak_b), "hellaswag": _accuracy(weak_b)},
        {"arc_easy": _accuracy(tuned), "piqa": _accuracy(weak_t), "hellaswag": _accuracy(weak_t)},
        GATE,
        [0, 1],
        [1, 1],
    )
    assert _row(together, "arc_easy").p_noninferior == pytest.approx(min(1.0, 3 * p_alone))


def test_perplexity_rows_use_document_pairs() -> None:
    docs = [[-1000.0 - 10 * i, 300.0] for i in range(20)]
    same = {"word_perplexity": 1.0, "items": {str(i): d for i, d in enumerate(docs)}}
    worse = {"word_perplexity": 1.0, "items": {str(i): [ll * 1.2, w] for i, (ll, w) in enumerate(docs)}}
    assert _row(decide({"wikitext": same}, {"wikitext": same}, GATE, [0, 1], [1, 1]), "wikitext").verdict == "pass"
    row = _row(decide({"wikitext": same}, {"wikitext": worse}, GATE, [0, 1], [1, 1]), "wikitext")
    assert row.verdict == "fail" and row.delta > 10.0 and row.kind == "perplexity"


def test_task_superiority_is_a_paired_test() -> None:
    base, tuned = _pairs(200, gains=60, losses=5, both=80)
    assert decide({}, {}, GATE, base, tuned).task.verdict == "pass"
    base, tuned = _pairs(200, gains=6, losses=3, both=80)  # a gain the items cannot confirm
    assert decide({}, {}, GATE, base, tuned).task.verdict == "inconclusive"
    base, tuned = _pairs(200, gains=3, losses=6, both=80)
    assert decide({}, {}, GATE, base, tuned).task.verdict == "fail"
    not_required = GATE.model_copy(update={"require_task_improvement": False})
    assert decide({}, {}, not_required, base, tuned).task.passed


def test_missing_or_unpaired_items_fail_the_row() -> None:
    base, tuned = _pairs(50, gains=1, losses=1, both=20)
    result = decide({"piqa": _accuracy(base)}, {"piqa": {"acc_norm": 0.5}}, GATE, [0, 1], [1, 1])
    assert _row(result, "piqa").verdict == "fail" and "per-item" in _row(result, "piqa").reason
    shorter = _accuracy(tuned[:40])
    result = decide({"piqa": _accuracy(base)}, {"piqa": shorter}, GATE, [0, 1], [1, 1])
    assert "different items" in _row(result, "piqa").reason
    assert _row(decide({"nope": {}}, {"nope": {}}, GATE, [0, 1], [1, 1]), "nope").verdict == "fail"


# ---------------------------------------------------------------- calibration (seeded simulation)
# 1,000 simulated fine-tunes each, 4 benchmarks of 500 items (the default forgetting.limit), 15% of items
# changing their answer: benchmarks/gate_calibration.py reports the same rates over more settings.


def test_no_effect_is_almost_never_called_forgetting() -> None:
    rates = verdict_rates(GATE, n=500, k=4, true_drop=0.0, discordance=0.15, reps=1000, seed=0)
    assert rates["fail"] <= 0.05 + 0.02


def test_a_drop_of_one_and_a_half_margins_is_caught() -> None:
    drop = 1.5 * GATE.max_accuracy_drop / 100
    rates = verdict_rates(GATE, n=500, k=4, true_drop=drop, discordance=0.15, reps=1000, seed=1)
    assert rates["fail"] >= 0.80
