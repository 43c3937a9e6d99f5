"""Paired statistics for comparing two models scored on the same items (pure functions, no I/O).

Accuracy-type items are binary (right/wrong for each model), so a comparison reduces to the discordant pairs:
`gains` (base wrong, tuned right) and `losses` (base right, tuned wrong) out of `n` items.

- Interval for the difference tuned - base: the Wald interval with the Agresti-Min adjustment (half a pair
  added to each of the four cells; Agresti & Min 2005, "Simple improved confidence intervals for comparing
  matched proportions"), which keeps its coverage with few discordant pairs where the plain Wald does not.
- Non-inferiority (H0: difference <= -margin): one-sided z test on that adjusted estimate.
- Worse / better than the base (H0: no difference): the exact one-sided McNemar test, i.e. a binomial test
  of the discordant pairs at 1/2.
- Per-document log-likelihoods (perplexity benchmarks): seeded paired bootstrap over documents.
- Several benchmarks at once: Holm's step-down adjustment keeps the family-wise error at alpha.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.stats import binomtest, norm

POWER = 0.80


@dataclass(frozen=True)
class BinaryPairs:
    n: int
    gains: int  # base wrong, tuned right
    losses: int  # base right, tuned wrong
    base_correct: int
    tuned_correct: int

    @property
    def discordant(self) -> int:
        return self.gains + self.losses

    @property
    def delta(self) -> float:
        """tuned - base accuracy (a fraction)."""
        return (self.gains - self.losses) / self.n if self.n else 0.0


def count_pairs(base: Sequence[bool | int | float], tuned: Sequence[bool | int | float]) -> BinaryPairs:
    if len(base) != len(tuned):
        raise ValueError(f"paired results need the same items: {len(base)} base vs {len(tuned)} tuned")
    b = [bool(value) for value in base]
    t = [bool(value) for value in tuned]
    return BinaryPairs(
        n=len(b),
        gains=sum(1 for x, y in zip(b, t, strict=True) if y and not x),
        losses=sum(1 for x, y in zip(b, t, strict=True) if x and not y),
        base_correct=sum(b),
        tuned_correct=sum(t),
    )


def adjusted_difference(pairs: BinaryPairs) -> tuple[float, float]:
    """Agresti-Min adjusted estimate of tuned - base and its standard error."""
    n = pairs.n + 2.0
    p_gain, p_loss = (pairs.gains + 0.5) / n, (pairs.losses + 0.5) / n
    delta = p_gain - p_loss
    variance = max(p_gain + p_loss - delta**2, 0.0) / n
    return delta, math.sqrt(variance)


def difference_interval(pairs: BinaryPairs, confidence: float) -> tuple[float, float]:
    delta, se = adjusted_difference(pairs)
    z = norm.ppf(0.5 + confidence / 2.0)
    return max(delta - z * se, -1.0), min(delta + z * se, 1.0)


def p_noninferior(pairs: BinaryPairs, margin: float) -> float:
    """One-sided p-value of H0 "tuned is worse than base by `margin` or more" (margin as a fraction)."""
    delta, se = adjusted_difference(pairs)
    return float(norm.sf((delta + margin) / se)) if se > 0 else float(delta <= -margin)


def p_worse(pairs: BinaryPairs) -> float:
    """Exact one-sided McNemar p-value of H0 "no difference" against "tuned loses more items than it gains"."""
    if pairs.discordant == 0:
        return 1.0
    return float(binomtest(pairs.losses, pairs.discordant, 0.5, alternative="greater").pvalue)


def p_better(pairs: BinaryPairs) -> float:
    """Exact one-sided McNemar p-value against "tuned gains more items than it loses"."""
    if pairs.discordant == 0:
        return 1.0
    return float(binomtest(pairs.gains, pairs.discordant, 0.5, alternative="greater").pvalue)


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm step-down adjusted p-values (monotone, capped at 1), in the input order."""
    order = sorted(range(len(pvalues)), key=lambda i: pvalues[i])
    adjusted, running = [1.0] * len(pvalues), 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (len(pvalues) - rank) * pvalues[index]))
        adjusted[index] = running
    return adjusted


def detectable_margin(se_per_item: float, n: int, alpha: float, power: float = POWER) -> float:
    """The smallest margin that non-inferiority can be shown for at this n, with `power`, if nothing changed."""
    if n <= 0:
        return math.inf
    return (norm.isf(alpha) + norm.ppf(power)) * se_per_item / math.sqrt(n)


def items_needed(se_per_item: float, margin: float, alpha: float, power: float = POWER) -> int:
    """Items needed to show non-inferiority at `margin` with `power` when the true difference is zero."""
    if margin <= 0:
        return 0
    return math.ceil(((norm.isf(alpha) + norm.ppf(power)) * se_per_item / margin) ** 2)


def per_item_sd(pairs: BinaryPairs, floor: float = 0.05) -> float:
    """SD of one item's paired difference, from the observed discordance (floored so 0 discordance is not 0)."""
    p_discordant = max(pairs.discordant / pairs.n if pairs.n else 0.0, floor)
    return math.sqrt(max(p_discordant - pairs.delta**2, floor))


def bootstrap_log_ratio(
    base_loglik: Sequence[float],
    tuned_loglik: Sequence[float],
    weights: Sequence[float],
    draws: int,
    seed: int,
) -> tuple[float, np.ndarray]:
    """Paired bootstrap over documents of log(perplexity_tuned / perplexity_base).

    Perplexity = exp(-sum(loglik) / sum(weights)) (weights: words, tokens or bytes per document), so the
    log ratio is (sum(base) - sum(tuned)) / sum(weights). Returns the observed value and `draws` resamples.
    """
    base = np.asarray(base_loglik, dtype=float)
    tuned = np.asarray(tuned_loglik, dtype=float)
    weight = np.asarray(weights, dtype=float)
    if not (len(base) == len(tuned) == len(weight)) or len(base) == 0:
        raise ValueError("bootstrap needs the same non-empty documents for base and tuned")
    observed = float((base.sum() - tuned.sum()) / weight.sum())
    rng = np.random.default_rng(seed)
    index = rng.integers(0, len(base), size=(draws, len(base)))
    resampled = (base[index].sum(1) - tuned[index].sum(1)) / weight[index].sum(1)
    return observed, resampled
