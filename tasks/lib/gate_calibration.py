"""Seeded simulation of the gate's error rates on per-item paired results (no model needed).

Each simulated fine-tune scores k accuracy benchmarks of n items. On every item base and tuned either agree
(right or wrong together) or differ: `discordance` is the fraction of items whose answer changes by chance
(half gained, half lost), and the first benchmark also loses `true_drop` of its items for real. The rates are of the
overall verdict over the benchmark rows: what the forgetting gate would say.

The perplexity row is simulated on its own (`perplexity_pass_rate`): documents of WikiText-like lengths whose
per-document rise scatters around a true rise.
"""

from __future__ import annotations

import math
from collections import Counter

import numpy as np

from tasks.lib import stats
from tasks.lib.config import GateConfig
from tasks.lib.gate import decide, overall_verdict

NAMES = ["hellaswag", "arc_easy", "piqa", "lambada", "arc_challenge"]
BOTH_RIGHT = 0.4  # items both models answer correctly; does not change the paired statistics


def simulated_results(
    rng: np.random.Generator, n: int, true_drop: float, discordance: float
) -> tuple[list[int], list[int]]:
    p_gain, p_loss = discordance / 2, discordance / 2 + true_drop
    gains, losses, both, _ = rng.multinomial(n, [p_gain, p_loss, BOTH_RIGHT, 1 - BOTH_RIGHT - p_gain - p_loss])
    base = [0] * gains + [1] * losses + [1] * both
    tuned = [1] * gains + [0] * losses + [1] * both
    rest = n - len(base)
    return base + [0] * rest, tuned + [0] * rest


def verdict_rates(
    gate: GateConfig, n: int, k: int, true_drop: float, discordance: float, reps: int, seed: int
) -> dict[str, float]:
    """Share of `reps` simulated fine-tunes whose benchmark rows end pass / fail / drop / inconclusive overall."""
    if k > len(NAMES):
        raise ValueError(f"at most {len(NAMES)} benchmarks")
    rng = np.random.default_rng(seed)
    counts: Counter[str] = Counter()
    for _ in range(reps):
        base, tuned = {}, {}
        for index, name in enumerate(NAMES[:k]):
            b, t = simulated_results(rng, n, true_drop if index == 0 else 0.0, discordance)
            base[name] = {"acc_norm": float(np.mean(b)), "items": {str(i): v for i, v in enumerate(b)}}
            tuned[name] = {"acc_norm": float(np.mean(t)), "items": {str(i): v for i, v in enumerate(t)}}
        result = decide(base, tuned, gate)
        counts[overall_verdict(result.rows)] += 1
    return {verdict: counts[verdict] / reps for verdict in ("pass", "fail", "drop", "inconclusive")}


def perplexity_pass_rate(
    n_docs: int, alpha: float, errors: str, true_rise: float, margin: float, reps: int, seed: int
) -> float:
    """How often the perplexity row's non-inferiority test passes at level `alpha`: `n_docs` documents of
    WikiText-like lengths (lognormal around 3,000 words), each document's rise the true rise plus 3 points of
    spread: `normal` errors, or `skewed` ones (centred exponential: most documents a little under, a few far over,
    forgetting concentrated in a few documents)."""
    rng = np.random.default_rng(seed)
    bound, passed = math.log1p(margin), 0
    for _ in range(reps):
        weights = rng.lognormal(math.log(3000), 0.5, size=n_docs)
        noise = rng.standard_normal(n_docs) if errors == "normal" else rng.exponential(1.0, n_docs) - 1.0
        lost = weights * (math.log1p(true_rise) + 0.03 * noise)
        base = -2.5 * weights
        passed += stats.log_ratio(base, base - lost, weights).p_at_least(bound) < alpha
    return passed / reps
