"""The group-sequential gate: its boundaries against published values, its error rates, power and expected items
by seeded simulation at the demo's design, and the gate and the block-by-block scoring that use it."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import norm

from tasks.lib.config import GateConfig, load_config
from tasks.lib.gate import sequential, stats
from tasks.lib.gate.benchmark_scores import BenchmarkScores
from tasks.lib.gate.decision import decide, task_row
from tasks.lib.gate.gate_result import GateRow
from tasks.lib.general_benchmarks.benchmark_looks import block_plan, look_order, merge_block, score_in_looks
from tasks.lib.general_benchmarks.benchmark_scoring import BenchmarkPlan

GATE = GateConfig(max_accuracy_drop=5.0, max_perplexity_increase=0.10, require_task_improvement=True)
REPS = 4000


def test_lan_demets_obrien_fleming_boundaries_match_published_values() -> None:
    """Five equally spaced looks, one-sided 0.025: 4.877, 3.357, 2.680, 2.290, 2.031 (Jennison & Turnbull 2000,
    table 7.6; gsDesign's sfLDOF gives the same)."""
    design = sequential.design((1, 2, 3, 4, 5), 0.025)
    assert design.boundaries == pytest.approx((4.877, 3.357, 2.680, 2.290, 2.031), abs=1e-3)
    assert sum(design.spent) == pytest.approx(0.025, abs=1e-9)
    assert sequential.design((100,), 0.01).boundaries == pytest.approx((norm.isf(0.01),))


def test_the_p_value_is_below_the_level_exactly_when_a_boundary_is_crossed() -> None:
    design = sequential.design(sequential.looks_for(800, 100), 0.01)
    for look, boundary in enumerate(design.boundaries):
        at = design.p_value(look, boundary)
        assert at == pytest.approx(sum(design.spent[: look + 1]), abs=1e-6)
        assert design.p_value(look, boundary + 0.01) < at < design.p_value(look, boundary - 0.01)
    assert design.p_value(len(design.looks) - 1, design.boundaries[-1] - 0.01) > 0.01


def _simulate(p_gain: float, p_loss: float, design: sequential.SequentialDesign, margin: float, seed: int):
    """REPS benchmarks of the design's maximum items, each item a gain, a loss or unchanged: the sequential outcomes
    and items scored, and what the fixed design (one look at the maximum, same level) decides on the same items."""
    rng = np.random.default_rng(seed)
    draws = rng.random((REPS, design.maximum))
    gains = (draws < p_gain).cumsum(axis=1)
    losses = ((draws >= p_gain) & (draws < p_gain + p_loss)).cumsum(axis=1)
    at_looks = np.asarray(design.looks) - 1
    outcome, stop = sequential.paired_outcomes(design, gains[:, at_looks], losses[:, at_looks], margin)
    n = design.maximum
    fixed_pass = norm.sf(stats.score_statistics(n, gains[:, -1], losses[:, -1], -margin)) < design.alpha
    z_fail = stats.score_statistics(n, gains[:, -1], losses[:, -1], -margin, continuity=0.5)
    fixed_fail = norm.cdf(z_fail) < design.alpha
    return outcome, np.asarray(design.looks)[stop], fixed_pass, fixed_fail


# The demo's design: 5 rows, alpha 0.05 (Bonferroni: 0.01 a row), 800 items at most, a look every 100.
DEMO = load_config("configs/demo.yaml").forgetting
DESIGN = sequential.design(sequential.looks_for(DEMO.limit, DEMO.look_every), 0.05 / 5)
MARGIN = 0.05
TOLERANCE = 3 * np.sqrt(0.01 * 0.99 / REPS)  # three standard errors of a 1% rate


@pytest.mark.parametrize("discordance", [0.06, 0.08, 0.12])
def test_size_at_the_margin_is_at_most_alpha(discordance: float) -> None:
    """A model that forgot exactly the margin passes, and one that forgot exactly that much is called forgetting
    beyond it, each at most alpha of the time (simulated, 4,000 benchmarks each)."""
    p_gain, p_loss = (discordance - MARGIN) / 2, (discordance + MARGIN) / 2
    outcome, _, _, _ = _simulate(p_gain, p_loss, DESIGN, MARGIN, seed=int(discordance * 1000))
    assert np.mean(outcome == sequential.PASS) <= DESIGN.alpha + TOLERANCE
    assert np.mean(outcome == sequential.FAIL) <= DESIGN.alpha + TOLERANCE


def test_an_unchanged_model_passes_at_the_demos_discordance_and_stops_early() -> None:
    """At the demo's most discordant row (ARC-Easy: 19 of 400 items changed, 4.75%) an unchanged model passes
    >= 95% of the time and scores <= 60% of the maximum items on average; at 10% it still passes >= 95%."""
    for discordance, most_items in ((0.0475, 0.60), (0.10, 0.70)):
        outcome, items, _, _ = _simulate(discordance / 2, discordance / 2, DESIGN, MARGIN, seed=7)
        assert np.mean(outcome == sequential.PASS) >= 0.95, discordance
        assert np.mean(items) <= most_items * DESIGN.maximum, (discordance, np.mean(items))


def test_power_at_one_and_a_half_margins_is_the_fixed_designs_within_a_point_and_a_half() -> None:
    """A drop of 7.5 points: forgetting beyond the margin is shown about as often as by one look at the maximum.
    Not more: with the final z sufficient for the drift, one look at the maximum is the most powerful test of its
    level (Neyman-Pearson), so early looks can only cost power; O'Brien-Fleming spending keeps the cost small."""
    for discordance in (0.09, 0.10, 0.12):
        p_gain, p_loss = (discordance - 1.5 * MARGIN) / 2, (discordance + 1.5 * MARGIN) / 2
        outcome, items, _, fixed_fail = _simulate(p_gain, p_loss, DESIGN, MARGIN, seed=11)
        sequential_power, fixed_power = np.mean(outcome == sequential.FAIL), np.mean(fixed_fail)
        assert sequential_power >= fixed_power - 0.015, (discordance, sequential_power, fixed_power)
        assert np.mean(outcome == sequential.PASS) == 0.0


# ---------------------------------------------------------------- the gate reading looks


def _benchmark(values: list[int]) -> dict:
    return {"metric": "acc", "acc": float(np.mean(values)), "items": {str(i): v for i, v in enumerate(values)}}


def _unchanged(n: int, changed_every: int, seed: int = 0) -> tuple[list[int], list[int]]:
    rng = np.random.default_rng(seed)
    base = [int(x) for x in rng.random(n) < 0.6]
    tuned = [1 - b if i % changed_every == 0 else b for i, b in enumerate(base)]
    return base, tuned


def _gate_row(base: list[int], tuned: list[int] | dict, order: list[str]) -> GateRow:
    tuned_scores = tuned if isinstance(tuned, dict) else _benchmark(tuned)
    looks = {"piqa": sequential.Looks(tuple(order), 100)}
    result = decide(
        {"piqa": _benchmark(base)}, {"piqa": tuned_scores}, GATE, task_row([0, 1], [1, 1], GATE), looks=looks
    )
    return result.rows[0]


def test_a_clear_row_stops_early_and_reads_the_same_from_every_item_or_only_the_needed_ones() -> None:
    base, tuned = _unchanged(800, changed_every=50)  # 2% discordance, no change
    order = [str(i) for i in np.random.default_rng(3).permutation(800)]
    full = _gate_row(base, tuned, order)
    assert full.verdict == "pass" and full.looks < full.max_looks == 8 and full.max_items == 800
    assert f"stopped at look {full.looks} of 8, {full.n} of 800 items" in full.reason
    needed = order[: full.n]
    partial = {"metric": "acc", "items": {key: tuned[int(key)] for key in needed}}
    assert _gate_row(base, partial, order).model_dump() == full.model_dump()
    assert full.p_value <= GATE.alpha and full.ci_low > -GATE.max_accuracy_drop


def test_a_row_that_crosses_no_boundary_scores_every_item_and_may_show_a_drop() -> None:
    rng = np.random.default_rng(5)
    base = [int(x) for x in rng.random(800) < 0.6]
    tuned = [0 if (b and i % 9 == 0) else b for i, b in enumerate(base)]  # about -3.5 points: inside the margin
    order = [str(i) for i in range(800)]
    row = _gate_row(base, tuned, order)
    assert row.looks == row.max_looks == 8 and row.n == 800
    assert row.verdict in ("drop", "inconclusive") and "no boundary crossed" in row.reason


# ---------------------------------------------------------------- scoring a block at a time


def test_blocks_are_scored_only_while_a_row_is_open_and_land_on_their_items() -> None:
    """A fake scorer answers from a table of each item's true result by its index in the benchmark file (lm-eval's
    doc id); the merged results hold each block's items once, on their own keys."""
    truth = {name: np.random.default_rng(len(name)).integers(0, 2, 1000) for name in ("piqa", "arc_easy")}
    plans = [
        BenchmarkPlan(
            name=name,
            metric="acc",
            limit=300,
            drawn=sorted(np.random.default_rng(1).choice(1000, 300, replace=False).tolist()),
        )
        for name in truth
    ]
    order = {plan.name: look_order(plan, seed=0) for plan in plans}
    calls: list[dict[str, int]] = []

    def score(block: list[BenchmarkPlan]) -> dict:
        calls.append({plan.name: len(plan.drawn) for plan in block})
        return {
            plan.name: BenchmarkScores(metric="acc", items={str(d): int(truth[plan.name][d]) for d in plan.drawn})
            for plan in block
        }

    looks = {name: sequential.Looks(tuple(keys), 100) for name, keys in order.items()}
    scores = score_in_looks(plans, looks, score, lambda scores: {"piqa"})  # arc_easy decided at the first look
    assert calls == [{"piqa": 100, "arc_easy": 100}, {"piqa": 100}, {"piqa": 100}]
    for plan in plans:
        items = scores[plan.name].items
        assert len(items) == (300 if plan.name == "piqa" else 100)
        assert set(items) == set(order[plan.name][: len(items)])
        assert all(value == truth[plan.name][int(key)] for key, value in items.items())
    assert scores["piqa"].values["acc"] == pytest.approx(np.mean(list(scores["piqa"].items.values())))
    assert block_plan(plans[0], ["20", "3"]).drawn == [3, 20]


def test_blocks_scored_by_lm_eval_equal_the_whole_draw_item_by_item(tiny_model_dir, benchmark_data_dir) -> None:
    """The real scorer on real items: scored in blocks of 10, every item's result (keyed by lm-eval's doc id) equals
    the one scored with all 30 at once."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tasks.lib.general_benchmarks.benchmark_scoring import plan_benchmarks, run_benchmarks

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    plans = plan_benchmarks(["piqa", "arc_easy"], benchmark_data_dir, 30, sample="random", seed=0)

    def score(block: list[BenchmarkPlan]) -> dict:
        return run_benchmarks(model, tokenizer, block, benchmark_data_dir, limit=None, batch_size=16)

    whole = score(plans)
    order = {plan.name: look_order(plan, seed=0) for plan in plans}
    looks = {name: sequential.Looks(tuple(keys), 10) for name, keys in order.items()}
    in_blocks = score_in_looks(plans, looks, score, lambda scores: {"piqa"})
    assert in_blocks["piqa"].items == whole["piqa"].items
    arc_items = in_blocks["arc_easy"].items
    assert len(arc_items) == 10 and arc_items == {key: whole["arc_easy"].items[key] for key in arc_items}


# ---------------------------------------------------------------- clustered items


def test_drawn_items_keep_the_level_under_clustered_forgetting_where_the_first_items_do_not(
    benchmark_data_dir,
) -> None:
    """HellaSwag's 10,042 items come from 192 activities (one holds 26% of them). Forgetting that differs a lot
    between activities (each activity's loss rate Beta-distributed, concentration 5, the benchmark's overall drop
    exactly the 5-point margin): on 800 items drawn at random the paired test's independent-items variance is
    right for the benchmark's own items (a simple random sample of them) and passes at most alpha of the time; on
    the first 800 items, a fixed set of activities, it passes several times alpha, an error of selection that no
    variance correction repairs. So the gate draws items (`forgetting.sample: random`); docs/pipeline.md."""
    import json

    queries = [json.loads(line)["query"] for line in (benchmark_data_dir / "hellaswag.jsonl").open()]
    activity_names, activity = np.unique([query.split(":", 1)[0] for query in queries], return_inverse=True)
    weights = np.bincount(activity) / len(activity)
    rng = np.random.default_rng(192)
    n, margin, alpha, reps, p_gain = 800, 0.05, 0.01, 2000, 0.01
    mean_loss = p_gain + margin
    passed = {"random": 0, "first": 0}
    for _ in range(reps):
        loss_rate = rng.beta(5 * mean_loss, 5 * (1 - mean_loss), len(activity_names))
        loss_rate = np.clip(loss_rate * mean_loss / (weights @ loss_rate), 0.0, 1.0 - p_gain)
        for sample, items in (("random", rng.choice(len(activity), n, replace=False)), ("first", np.arange(n))):
            draws = rng.random(n)
            gains = int((draws < p_gain).sum())
            losses = int(((draws >= p_gain) & (draws < p_gain + loss_rate[activity[items]])).sum())
            pairs = stats.BinaryPairs(n=n, gains=gains, losses=losses, base_correct=0, tuned_correct=0)
            passed[sample] += stats.p_noninferior(pairs, margin) < alpha
    assert passed["random"] / reps <= alpha + 3 * np.sqrt(alpha * (1 - alpha) / reps)
    assert passed["first"] / reps >= 5 * alpha


# ---------------------------------------------------------------- perplexity rows over documents


def test_a_sequential_perplexity_row_holds_its_level_at_the_margin_and_stops_at_ten_documents_when_clear() -> None:
    """20 WikiText-like documents looked at after 10 and 20 (the demo's design), alone in the gate (alpha 0.05):
    with the true rise exactly at the 10% margin it passes at most alpha of the time (2,000 simulated rows); with
    no rise it passes, at the first look."""
    from benchmarks.gate_simulation import simulated_documents

    rng = np.random.default_rng(10)
    looks = {"wikitext": sequential.Looks(tuple(str(i) for i in range(20)), 10)}
    verdicts, stops = [], []
    for rise in [0.10] * 2000 + [0.0] * 200:
        base, tuned = simulated_documents(rng, 20, rise)
        row = decide({"wikitext": base}, {"wikitext": tuned}, GATE, looks=looks).rows[0]
        verdicts.append(row.verdict)
        stops.append(row.looks)
    at_margin, unchanged = verdicts[:2000], verdicts[2000:]
    assert at_margin.count("pass") / 2000 <= GATE.alpha + 3 * np.sqrt(GATE.alpha * (1 - GATE.alpha) / 2000)
    assert unchanged.count("pass") == 200 and set(stops[2000:]) == {1}
    assert "stopped at look 1 of 2, 10 of 20 documents" in row.reason
    merged = merge_block(merge_block(None, _first(base, 10)), _rest(base, 10))
    ll, words = zip(*base["items"].values(), strict=True)
    assert merged.values["word_perplexity"] == pytest.approx(np.exp(-sum(ll) / sum(words)))


def _first(scores: dict, n: int) -> BenchmarkScores:
    return BenchmarkScores(metric=scores["metric"], items=dict(list(scores["items"].items())[:n]))


def _rest(scores: dict, n: int) -> BenchmarkScores:
    return BenchmarkScores(metric=scores["metric"], items=dict(list(scores["items"].items())[n:]))
