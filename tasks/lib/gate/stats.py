"""Paired statistics for comparing two models scored on the same items (pure functions, no I/O).

Accuracy-type items are binary (right/wrong for each model), so a comparison reduces to the discordant pairs:
`gains` (base wrong, tuned right) and `losses` (base right, tuned wrong) out of `n` items.

- Interval for the difference tuned - base, non-inferiority (H0: difference <= -margin) and forgetting beyond
  the margin (H0: difference >= -margin): Tango's score test and the interval that inverts it (Tango 1998),
  which holds its level at the margin where a Wald test on the Agresti-Min adjusted difference was above it
  (0.061-0.068 at a nominal 0.05 for n = 400 and the demo's 5-7% discordance; tests/unit/test_gate.py).
- Worse / better than the base (H0: no difference): the exact one-sided McNemar test, i.e. a binomial test
  of the discordant pairs at 1/2.
- Per-document log-likelihoods (perplexity benchmarks): the log perplexity ratio is a ratio estimator
  (log-likelihood lost / words, summed over documents); its standard error by the jackknife over documents,
  Student's t with n - 1 degrees of freedom for the tests and the interval they invert (size at the margin with
  20 documents: 0.056 at a nominal 0.05 and 0.013 at 0.0125, tests/unit/test_gate.py; a test on each document's
  excess over the bound held its level too but, with document lengths varying, could not fail even a collapse).
  A percentile bootstrap of 5 documents, used before, could not fail a row whose documents all rose less than
  the margin, however spread they were.
- A benchmark the base cannot do (MMLU for a 135M model): the exact binomial test of the base's correct items
  against the mean chance of its items; not shown above chance, the row cannot show forgetting.
- Graded per-item scores (free-text tasks: ROUGE-L per item), tuned against base or a challenger against the
  champion: a test of the mean difference by betting, valid for any distribution of the differences in [-1, 1]
  (a sign-flip test, used before, tested symmetry: a model better on many items by a little and worse on a few by
  a lot, equal in mean, passed 12.6% of the time at a nominal 5%), and the interval that inverts it.
- Several benchmarks at once: Holm's step-down adjustment keeps the family-wise error at alpha.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import brentq
from scipy.stats import binom, binomtest, norm
from scipy.stats import t as student_t

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
    return float(mcnemar_p_better(pairs.gains, pairs.losses))


def mcnemar_p_better(gains, losses) -> np.ndarray:
    """`p_better` over arrays of counts: P(Binomial(gains + losses, 1/2) >= gains); 1 with no discordant item."""
    gains, losses = np.asarray(gains), np.asarray(losses)
    return np.where(gains + losses > 0, binom.sf(gains - 1, gains + losses, 0.5), 1.0)


def p_above_chance(correct: int, n: int, chance: float) -> float:
    """Exact binomial p-value of H0 "the model guesses" (accuracy = chance) against "it does better"."""
    if n == 0:
        return 1.0
    return float(binomtest(correct, n, chance, alternative="greater").pvalue)


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


@dataclass(frozen=True)
class LogRatio:
    """log(perplexity_tuned / perplexity_base) over paired documents: `lost` is each document's log-likelihood
    lost by tuning (base - tuned), `weights` its words (or tokens, bytes)."""

    lost: tuple[float, ...]
    weights: tuple[float, ...]

    @property
    def n(self) -> int:
        return len(self.lost)

    @property
    def estimate(self) -> float:
        return sum(self.lost) / sum(self.weights)

    @property
    def se(self) -> float:
        """Of the estimate, by the jackknife over documents (leave one out); inf below 2 documents."""
        if self.n < 2:
            return math.inf
        lost, weights = np.asarray(self.lost), np.asarray(self.weights)
        left_out = (lost.sum() - lost) / (weights.sum() - weights)
        return float(math.sqrt((self.n - 1) / self.n * np.sum((left_out - left_out.mean()) ** 2)))

    @property
    def se_per_document(self) -> float:
        return self.se * math.sqrt(self.n)

    def _t(self, bound: float) -> float:
        difference = self.estimate - bound
        if self.se == 0.0:
            return math.copysign(math.inf, difference) if difference else 0.0
        return difference / self.se

    def p_at_least(self, bound: float) -> float:
        """p-value of H0: the true log ratio >= bound (small: shown below it)."""
        return float(student_t.cdf(self._t(bound), self.n - 1)) if self.n >= 2 else 1.0

    def p_at_most(self, bound: float) -> float:
        """p-value of H0: the true log ratio <= bound (small: shown above it)."""
        return float(student_t.sf(self._t(bound), self.n - 1)) if self.n >= 2 else 1.0

    def interval(self, tail: float) -> tuple[float, float]:
        """Two-sided, `tail` in each side: the t-interval the tests invert."""
        if self.n < 2:
            return -math.inf, math.inf
        half = float(student_t.isf(tail, self.n - 1)) * self.se
        return self.estimate - half, self.estimate + half


def log_ratio(base_loglik: Sequence[float], tuned_loglik: Sequence[float], weights: Sequence[float]) -> LogRatio:
    """Perplexity = exp(-sum(loglik) / sum(weights)), so log(ppl_tuned / ppl_base) = sum(base - tuned) /
    sum(weights): a ratio of sums over the documents."""
    if not (len(base_loglik) == len(tuned_loglik) == len(weights)) or len(weights) == 0:
        raise ValueError("a log ratio needs the same non-empty documents for base and tuned")
    lost = tuple(float(b) - float(t) for b, t in zip(base_loglik, tuned_loglik, strict=True))
    return LogRatio(lost, tuple(float(w) for w in weights))


def detectable_margin_t(se_per_item: float, n: int, alpha: float, power: float = POWER) -> float:
    """`detectable_margin` with Student's t (n - 1 degrees of freedom): few documents detect little."""
    if n < 2:
        return math.inf
    df = n - 1
    return float(student_t.isf(alpha, df) + student_t.ppf(power, df)) * se_per_item / math.sqrt(n)


def items_needed_t(se_per_item: float, margin: float, alpha: float, power: float = POWER) -> int:
    """The fewest documents whose t-test shows non-inferiority at `margin` with `power` if nothing changed."""
    if margin <= 0:
        return 0
    if not math.isfinite(se_per_item):
        return 0  # unknown: fewer than 2 documents give no spread
    n = 2
    while detectable_margin_t(se_per_item, n, alpha, power) > margin:
        n *= 2
        if n > 10**7:
            return n
    low, high = n // 2, n
    while high - low > 1:
        middle = (low + high) // 2
        if detectable_margin_t(se_per_item, middle, alpha, power) > margin:
            low = middle
        else:
            high = middle
    return max(high, 2)


BETTING_ORDERS = 16  # seeded orders of the items whose capitals are averaged (less dependence on any one order)
BETTING_TRUNCATION = 0.9  # the largest stake, as a fraction of the one that a difference of -1 would wipe out
BETTING_CHUNK = 4_000_000  # values (rows x orders x items) a block of rows holds
BETTING_PRIOR_VARIANCE = 0.25  # one prior item of this variance starts the running estimate


@dataclass(frozen=True)
class PairedScores:
    """Per-item scores in [0, 1] (ROUGE-L, ...) of two models on the same items: the mean difference, tuned - base,
    tested by betting (`betting_p_values`): valid for any distribution of the differences, skewed or tied, at any
    number of items, and with no floor on the p-value; the interval inverts the same test."""

    base: tuple[float, ...]
    tuned: tuple[float, ...]

    @property
    def n(self) -> int:
        return len(self.base)

    @property
    def differences(self) -> np.ndarray:
        return np.asarray(self.tuned, dtype=float) - np.asarray(self.base, dtype=float)

    @property
    def delta(self) -> float:
        return float(self.differences.mean()) if self.n else 0.0

    @property
    def sd(self) -> float:
        return float(self.differences.std(ddof=1)) if self.n > 1 else 0.0

    @property
    def gains(self) -> int:
        return int((self.differences > 0).sum())

    @property
    def losses(self) -> int:
        return int((self.differences < 0).sum())

    def p_better(self, level: float, null_mean: float = 0.0) -> float:
        """p-value of H0 "the mean difference is at most `null_mean`", with bets sized for a test at `level`."""
        if self.n == 0:
            return 1.0
        return float(betting_p_values(self.differences[None, :], level, null_mean)[0])

    def interval(self, tail: float) -> tuple[float, float]:
        """Two-sided, `tail` in each side: the null means the one-sided betting tests at `tail` do not reject."""
        if self.n == 0:
            return -1.0, 1.0
        low = _last_rejected(self.differences, tail)
        high = -_last_rejected(-self.differences, tail)
        return low, high


def _last_rejected(differences: np.ndarray, tail: float) -> float:
    """The largest null mean m whose "mean <= m" is rejected at `tail` (bisection; -1 when none is)."""
    low, high = -1.0, float(differences.mean())
    if betting_p_values(differences[None, :], tail, low + 1e-9)[0] >= tail:
        return -1.0
    for _ in range(30):
        middle = (low + high) / 2.0
        if betting_p_values(differences[None, :], tail, middle)[0] < tail:
            low = middle
        else:
            high = middle
    return low


def betting_p_values(
    differences: np.ndarray, level: float, null_mean: float = 0.0, orders: int = BETTING_ORDERS, seed: int = 0
) -> np.ndarray:
    """One-sided p-values of H0 "mean difference <= null_mean" for paired per-item differences in [-1, 1], one per
    row of `differences` (rows: comparisons of n items), by testing by betting (Waudby-Smith & Ramdas 2024,
    "Estimating means of bounded random variables by betting", JRSS B 86): a gambler starts with capital 1 and bets
    on each item in turn that its difference exceeds `null_mean`, the stake chosen from the items already seen
    (their running variance; sized for a test at `level` over n items, truncated at BETTING_TRUNCATION of the
    largest safe stake). Under H0 the capital is a nonnegative supermartingale whatever the distribution (skewed,
    tied, heavy on a few items), so P(capital >= 1/level) <= level (Markov, Ville) at every n: no normal or symmetry
    assumption, and p = 1/capital has no floor. The capital is averaged over BETTING_ORDERS seeded orders of the
    items (an average of such capitals is one too). The items are assumed a random sample of the task's items."""
    x = np.atleast_2d(np.asarray(differences, dtype=float))
    rows, n = x.shape
    if n == 0:
        return np.ones(rows)
    if np.any(np.abs(x) > 1.0 + 1e-9):
        raise ValueError("betting tests need per-item differences in [-1, 1] (scores in [0, 1])")
    rng = np.random.default_rng(seed)
    permutations = np.stack([rng.permutation(n) for _ in range(orders)])  # (orders, n)
    step = max(1, BETTING_CHUNK // (orders * n))  # rows at a time: memory bounded however many items
    return np.concatenate(
        [_betting_p(x[start : start + step], permutations, level, null_mean) for start in range(0, rows, step)]
    )


def _betting_p(x: np.ndarray, permutations: np.ndarray, level: float, null_mean: float) -> np.ndarray:
    n = x.shape[1]
    ordered = x[:, permutations]  # (rows, orders, n)
    count = np.arange(1, n + 1)
    # Predictable plug-in (WSR 2024, section 5): mean and variance of the items before each one, with a prior item.
    running_mean = np.cumsum(ordered, axis=-1) / (count + 1)
    squared = (ordered - running_mean) ** 2
    running_var = (BETTING_PRIOR_VARIANCE + np.cumsum(squared, axis=-1)) / (count + 1)
    var_before = np.concatenate(
        [np.full((*ordered.shape[:-1], 1), BETTING_PRIOR_VARIANCE), running_var[..., :-1]], axis=-1
    )
    stake = np.sqrt(2.0 * math.log(1.0 / level) / (n * var_before))
    stake = np.minimum(stake, BETTING_TRUNCATION / (1.0 + null_mean))
    log_capital = np.log1p(stake * (ordered - null_mean)).sum(axis=-1)  # (rows, orders)
    capital = np.exp(np.minimum(log_capital, 700.0)).mean(axis=-1)
    return np.minimum(1.0, 1.0 / capital)


def mcnemar_power(n: int, discordance: float, gain: float, level: float) -> float:
    """Exact power of the one-sided McNemar test at `level` on n paired items when a fraction `discordance` of them
    differ and the challenger's accuracy is `gain` higher: the discordant count is Binomial(n, discordance) and each
    discordant item a gain with probability (1 + gain / discordance) / 2."""
    discordance = min(max(discordance, abs(gain), 1e-9), 1.0)
    counts = np.arange(n + 1)
    # The fewest gains that reject among d discordant items: binom.sf(c - 1, d, 1/2) < level.
    critical = binom.isf(level, counts, 0.5) + 1.0
    critical = np.where(binom.sf(critical - 2.0, counts, 0.5) < level, critical - 1.0, critical)
    q = min(max((1.0 + gain / discordance) / 2.0, 0.0), 1.0)
    reject = binom.sf(critical - 1.0, counts, q)
    return float(np.sum(binom.pmf(counts, n, discordance) * reject))


def mcnemar_confirmable_gain(n: int, discordance: float, level: float, power: float = POWER) -> float:
    """The smallest true gain (accuracy, a fraction) the exact McNemar test at `level` confirms with `power` on n
    items, the items differing at least as often as `discordance` (more when the gain itself is larger)."""
    if n == 0 or mcnemar_power(n, 1.0, 1.0, level) < power:
        return math.inf
    low, high = 0.0, 1.0
    for _ in range(40):
        middle = (low + high) / 2.0
        if mcnemar_power(n, max(discordance, middle), middle, level) >= power:
            high = middle
        else:
            low = middle
    return high


def betting_confirmable_gain(
    differences: Sequence[float], level: float, power: float = POWER, draws: int = 400, seed: int = 0
) -> float:
    """The smallest true mean gain the betting test at `level` confirms with `power` on as many items as
    `differences`, their spread as observed: seeded resamples of the centred differences shifted by the gain
    (clipped to [-1, 1]; the gain reported is the mean after clipping). Monte-Carlo: about +-0.005 at 400 draws."""
    x = np.asarray(differences, dtype=float)
    if x.size == 0:
        return math.inf
    rng = np.random.default_rng(seed)
    centred = x - x.mean()
    samples = centred[rng.integers(0, x.size, (draws, x.size))]

    def rejected(gain: float) -> float:
        shifted = np.clip(samples + gain, -1.0, 1.0)
        return float((betting_p_values(shifted, level) < level).mean())

    if rejected(1.0) < power:
        return math.inf
    low, high = 0.0, 1.0
    for _ in range(14):
        middle = (low + high) / 2.0
        low, high = (low, middle) if rejected(middle) >= power else (middle, high)
    return float(np.clip(samples + high, -1.0, 1.0).mean())


def is_binary(values: Sequence[float]) -> bool:
    """Right/wrong per item (0/1), which the exact McNemar tests read; anything else is a graded score."""
    return bool(np.isin(np.asarray(values, dtype=float), (0.0, 1.0)).all())
