"""Paired statistics for comparing two models scored on the same items (pure functions, no I/O).

Accuracy-type items are binary (right/wrong for each model), so a comparison reduces to the discordant pairs:
`gains` (base wrong, tuned right) and `losses` (base right, tuned wrong) out of `n` items.

- Interval for the difference tuned - base, non-inferiority (H0: difference <= -margin) and forgetting beyond
  the margin (H0: difference >= -margin): Tango's score test and the interval that inverts it (Tango 1998),
  which holds its level at the margin where a Wald test on the Agresti-Min adjusted difference was above it
  (0.061-0.068 at a nominal 0.05 for n = 400 and the demo's 5-7% discordance; tests/unit/test_gate.py).
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
from scipy.optimize import brentq
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


def score_statistic(pairs: BinaryPairs, delta0: float) -> float:
    """Tango's score statistic for H0: tuned - base = delta0 on paired right/wrong results (Tango 1998, "Equivalence
    test and confidence interval for the difference in proportions for the paired-sample design", Stat Med 17).

    The variance is taken at the restricted maximum-likelihood estimate of the loss probability under H0, which
    keeps the test near its level with few discordant pairs where a Wald test on the observed difference is not.
    Large values speak for tuned - base > delta0.
    """
    return float(score_statistics(pairs.n, pairs.gains, pairs.losses, delta0))


def score_statistics(n, gains, losses, delta0: float, continuity: float = 0.0) -> np.ndarray:
    """`score_statistic` over arrays of counts (what the simulations in the tests evaluate at once); `continuity`
    is added to the difference of counts (+0.5 makes a test of the lower tail conservative by half an item)."""
    n, gains, losses = (np.asarray(x, dtype=float) for x in (n, gains, losses))
    a = 2.0 * n
    b = -gains - losses + (2.0 * n - gains + losses) * delta0
    c = -losses * delta0 * (1.0 - delta0)
    with np.errstate(divide="ignore", invalid="ignore"):
        p_loss = (np.sqrt(np.maximum(b * b - 4.0 * a * c, 0.0)) - b) / (2.0 * a)
        variance = n * (2.0 * p_loss + delta0 * (1.0 - delta0))
        numerator = gains - losses - n * delta0 + continuity
        z = numerator / np.sqrt(variance)
    degenerate = ~(variance > 0.0)  # no spread under H0 (n = 0, or no discordant pair at delta0 = 0)
    return np.where(degenerate, np.where(numerator > 0, np.inf, np.where(numerator < 0, -np.inf, 0.0)), z)


def difference_interval(pairs: BinaryPairs, confidence: float) -> tuple[float, float]:
    """Tango's score interval for tuned - base: the delta0 values the two-sided score test does not reject."""
    if pairs.n == 0:
        return -1.0, 1.0
    z = float(norm.ppf(0.5 + confidence / 2.0))
    estimate, eps = pairs.delta, 1e-12
    low = -1.0 if estimate <= -1.0 + eps else brentq(lambda d: score_statistic(pairs, d) - z, -1.0 + eps, estimate)
    high = 1.0 if estimate >= 1.0 - eps else brentq(lambda d: score_statistic(pairs, d) + z, estimate, 1.0 - eps)
    return low, high


def p_noninferior(pairs: BinaryPairs, margin: float) -> float:
    """One-sided p-value of H0 "tuned is worse than base by `margin` or more" (margin as a fraction): Tango's score
    test at delta0 = -margin."""
    return float(norm.sf(score_statistic(pairs, -margin)))


def p_beyond_margin(pairs: BinaryPairs, margin: float) -> float:
    """One-sided p-value of H0 "tuned is worse than base by less than `margin`, or better": small when forgetting
    beyond the margin is shown. The same score test at delta0 = -margin, its other tail, with a continuity
    correction of half an item: uncorrected, this tail (skewed by the losses) rejected 6.3% of the time at a nominal
    5% with 100 items; corrected, at most 5.1% (exact, tests/unit/test_gate.py)."""
    return float(norm.cdf(score_statistics(pairs.n, pairs.gains, pairs.losses, -margin, continuity=0.5)))


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
