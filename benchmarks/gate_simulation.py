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
from collections.abc import Sequence

import numpy as np

from tasks.lib.config import GateConfig
from tasks.lib.gate import stats
from tasks.lib.gate.decision import decide, overall_verdict
from tasks.lib.gate.sequential import Looks

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
        base, lost, weights = _documents(rng, n_docs, true_rise, errors)
        passed += stats.log_ratio(base, base - lost, weights).p_at_least(bound) < alpha
    return passed / reps


def _documents(
    rng: np.random.Generator, documents: int, rise: float, errors: str = "normal"
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(base log-likelihood, log-likelihood lost, words) per WikiText-like document: lognormal lengths around 3,000
    words, each document's rise the true rise plus 3 points of `normal` or `skewed` (centred exponential) spread."""
    weights = rng.lognormal(math.log(3000), 0.5, size=documents)
    noise = rng.standard_normal(documents) if errors == "normal" else rng.exponential(1.0, documents) - 1.0
    return -2.5 * weights, weights * (math.log1p(rise) + 0.03 * noise), weights


ACCURACY_ROWS = NAMES[:4]
PERPLEXITY_ROW = "wikitext"


def simulated_documents(rng: np.random.Generator, documents: int, rise: float) -> tuple[dict, dict]:
    """Base and tuned [log-likelihood, words] per WikiText-like document, as the gate's scores hold them."""
    base, lost, weights = _documents(rng, documents, rise)
    return (
        {"metric": "word_perplexity", "items": {str(i): [base[i], weights[i]] for i in range(documents)}},
        {"metric": "word_perplexity", "items": {str(i): [base[i] - lost[i], weights[i]] for i in range(documents)}},
    )


def family_rates(
    gate: GateConfig,
    n: int,
    look_every: int | None,
    drops: Sequence[float],
    rise: float,
    discordance: float,
    reps: int,
    seed: int,
    documents: int = 20,
    document_look_every: int | None = None,
) -> dict:
    """The demo's family of rows simulated through `decide`: 4 accuracy benchmarks of at most `n` items (true drop
    `drops[i]` on row i, on top of `discordance` chance changes) and a WikiText-like perplexity row of `documents`
    documents (true rise `rise`), judged group-sequentially (`look_every` items, `document_look_every` documents a
    look) or in one look. Returns per row how often
    it passed, was shown worse (fail or drop) and how many items it scored on average; and for the family how often
    every row passed, any row passed, any row failed."""
    rng = np.random.default_rng(seed)
    names = [*ACCURACY_ROWS, PERPLEXITY_ROW]
    passed, shown, items = Counter(), Counter(), Counter()
    family: Counter[str] = Counter()
    looks = None
    if look_every:
        looks = {name: Looks(tuple(str(i) for i in range(n)), look_every) for name in ACCURACY_ROWS}
        if document_look_every:
            looks[PERPLEXITY_ROW] = Looks(tuple(str(i) for i in range(documents)), document_look_every)
    for _ in range(reps):
        base, tuned = {}, {}
        for name, drop in zip(ACCURACY_ROWS, drops, strict=True):
            b, t = simulated_results(rng, n, drop, discordance)
            order_key = rng.permutation(n)  # items in a random order: the block structure carries no signal
            base[name] = {"metric": "acc", "items": {str(i): b[j] for i, j in enumerate(order_key)}}
            tuned[name] = {"metric": "acc", "items": {str(i): t[j] for i, j in enumerate(order_key)}}
        base[PERPLEXITY_ROW], tuned[PERPLEXITY_ROW] = simulated_documents(rng, documents, rise)
        rows = {row.name: row for row in decide(base, tuned, gate, looks=looks).rows}
        for name in names:
            passed[name] += rows[name].verdict == "pass"
            shown[name] += rows[name].verdict in ("fail", "drop")
            items[name] += rows[name].n
        family["all pass"] += all(row.verdict == "pass" for row in rows.values())
        family["any pass at the margin"] += any(
            rows[name].verdict == "pass" for name, drop in zip(ACCURACY_ROWS, drops, strict=True) if drop > 0
        )
        family["any fail"] += any(row.verdict == "fail" for row in rows.values())
    return {
        "rows": {
            name: {"pass": passed[name] / reps, "shown_worse": shown[name] / reps, "mean_items": items[name] / reps}
            for name in names
        },
        "family": {key: family[key] / reps for key in ("all pass", "any pass at the margin", "any fail")},
    }
