"""Seeded simulation of the gate's error rates on per-item paired results (no model needed).

Each simulated fine-tune scores k accuracy benchmarks of n items. On every item base and tuned either agree
(right or wrong together) or differ: `discordance` is the fraction of items whose answer changes by chance
(half gained, half lost), and the first benchmark also loses `true_drop` of its items for real. The rates are of the
overall verdict over the benchmark rows: what the forgetting gate would say.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

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
