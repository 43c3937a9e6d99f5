"""Group-sequential tests: look at a benchmark's paired results after every block of items and stop once decided.

Design: Lan-DeMets alpha spending with the O'Brien-Fleming-type function alpha(t) = 2 - 2 Phi(z_{alpha/2} / sqrt(t))
(Lan & DeMets 1983), t the fraction of the maximum items scored. Each one-sided test (non-inferiority, and
forgetting beyond the margin) gets its own boundary c_1 > c_2 > ... > c_K on the z scale: the probability, under the
null at the margin, of first crossing at look j is alpha(t_j) - alpha(t_{j-1}). The boundaries are computed by the
recursive numerical integration of Armitage, McPherson & Rowe (1969) for a Brownian motion observed at t_1..t_K
(Jennison & Turnbull 2000, ch. 19): deterministic, no Monte Carlo. Early looks spend almost nothing, so the last
boundary is close to the fixed-design critical value and little power is lost at the maximum.

The two tails are non-binding for each other (each boundary is computed as if the other did not stop the test),
which keeps both tests at their level whatever the other does. The p-value of a stopped test is the stage-wise
ordering p-value: the null probability of crossing at an earlier look, or at this look with a larger statistic.
At the look a test stops at, it is below the test's level exactly when the boundary was crossed. A repeated
confidence interval (the Tango interval at the crossed boundary's level) covers the difference at every look
simultaneously.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy.optimize import brentq
from scipy.stats import norm

from tasks.lib.gate.stats import score_statistics

GRID_POINTS = 1501  # points of the density grid at each look
GRID_LOW = -12.0  # the grid's lower end in standard deviations of the Brownian motion
Z_MAX = 12.0  # a boundary no statistic crosses (nothing spent at that look)


def spending(t: float, alpha: float) -> float:
    """Alpha spent by information fraction t (0 < t <= 1): Lan-DeMets O'Brien-Fleming type, all of it at t = 1 and
    almost none early."""
    if t <= 0.0:
        return 0.0
    return float(2.0 * norm.sf(norm.isf(alpha / 2.0) / math.sqrt(min(t, 1.0))))


@dataclass(frozen=True)
class SequentialDesign:
    """One one-sided test looked at after `looks` items (increasing, the last the maximum) at level `alpha`."""

    looks: tuple[int, ...]
    alpha: float
    boundaries: tuple[float, ...]  # z-scale critical values, one per look
    spent: tuple[float, ...]  # null probability of first crossing at each look (sums to alpha)

    @property
    def maximum(self) -> int:
        return self.looks[-1]

    def p_value(self, look: int, z: float) -> float:
        """Stage-wise ordering p-value of statistic `z` at look index `look` (0-based), the test not stopped
        earlier: the null probability of crossing at an earlier look, or at this one with a larger statistic."""
        return _stagewise_p(self.looks, self.alpha, look, float(z))


def design(looks: tuple[int, ...] | list[int], alpha: float) -> SequentialDesign:
    looks = tuple(int(n) for n in looks)
    if not looks or looks[0] <= 0 or any(b <= a for a, b in zip(looks, looks[1:], strict=False)):
        raise ValueError(f"looks must be increasing positive item counts: {looks}")
    boundaries, spent = _boundaries(looks, float(alpha))
    return SequentialDesign(looks, float(alpha), boundaries, spent)


@dataclass(frozen=True)
class Looks:
    """A benchmark scored a block at a time: its item keys in the seeded order they are scored in, and how many a
    look adds (the last look: every item)."""

    order: tuple[str, ...]
    every: int

    @property
    def counts(self) -> tuple[int, ...]:
        return looks_for(len(self.order), self.every)


def looks_for(maximum: int, every: int | None) -> tuple[int, ...]:
    """Item counts at which the test looks: every `every` items up to `maximum` (always a look at the maximum)."""
    if not every or every >= maximum:
        return (maximum,)
    return (*range(every, maximum, every), maximum)


class _Continuing:
    """The sub-density of the Brownian motion B(t) = Z sqrt(t) on the paths not stopped so far, on a grid."""

    def __init__(self, t: float, upper_z: float) -> None:
        self.t = t
        self.grid = np.linspace(GRID_LOW * math.sqrt(t), upper_z * math.sqrt(t), GRID_POINTS)
        self.density = norm.pdf(self.grid, scale=math.sqrt(t))

    def _mass(self) -> np.ndarray:
        step = self.grid[1] - self.grid[0]
        weights = np.full(self.grid.shape, step)
        weights[0] = weights[-1] = step / 2.0  # trapezoid rule
        return self.density * weights

    def crossing(self, t: float, z: float) -> float:
        """Probability of continuing to here and then Z(t) >= z."""
        return float(np.sum(self._mass() * norm.sf((z * math.sqrt(t) - self.grid) / math.sqrt(t - self.t))))

    def advance(self, t: float, upper_z: float) -> None:
        """To the paths still continuing at t: Z(t) < upper_z."""
        step = t - self.t
        grid = np.linspace(GRID_LOW * math.sqrt(t), upper_z * math.sqrt(t), GRID_POINTS)
        kernel = norm.pdf((grid[:, None] - self.grid[None, :]) / math.sqrt(step)) / math.sqrt(step)
        self.density, self.grid, self.t = kernel @ self._mass(), grid, t


@lru_cache(maxsize=256)
def _boundaries(looks: tuple[int, ...], alpha: float) -> tuple[tuple[float, ...], tuple[float, ...]]:
    fractions = [n / looks[-1] for n in looks]
    increments = np.diff([0.0, *(spending(t, alpha) for t in fractions)])
    first = float(norm.isf(increments[0])) if increments[0] > 0 else Z_MAX
    boundaries, spent = [first], [float(norm.sf(first))]
    paths = _Continuing(fractions[0], first)
    for t, increment in zip(fractions[1:], increments[1:], strict=True):
        if increment <= 0 or paths.crossing(t, Z_MAX) >= increment:
            c = Z_MAX
        else:
            c = brentq(lambda z, t=t, target=increment: paths.crossing(t, z) - target, -Z_MAX, Z_MAX, xtol=1e-10)
        boundaries.append(c)
        spent.append(paths.crossing(t, c))
        paths.advance(t, c)
    return tuple(boundaries), tuple(spent)


@lru_cache(maxsize=256)
def _continuing_before(looks: tuple[int, ...], alpha: float, look: int) -> _Continuing:
    """The paths not stopped by look index `look - 1` (look >= 1), under the null."""
    boundaries, _ = _boundaries(looks, alpha)
    fractions = [n / looks[-1] for n in looks]
    paths = _Continuing(fractions[0], boundaries[0])
    for j in range(1, look):
        paths.advance(fractions[j], boundaries[j])
    return paths


def _stagewise_p(looks: tuple[int, ...], alpha: float, look: int, z: float) -> float:
    _, spent = _boundaries(looks, alpha)
    earlier = float(sum(spent[:look]))
    if look == 0:
        return min(1.0, earlier + float(norm.sf(z)))
    crossing = _continuing_before(looks, alpha, look).crossing(looks[look] / looks[-1], z)
    return min(1.0, earlier + crossing)


PASS, FAIL, OPEN = 1, -1, 0


def paired_outcomes(
    design: SequentialDesign, gains: np.ndarray, losses: np.ndarray, margin: float
) -> tuple[np.ndarray, np.ndarray]:
    """Non-inferiority at `margin` (a fraction) and forgetting beyond it, both group-sequential on paired right/wrong
    results: `gains` and `losses` are cumulative counts at each look (shape (..., looks seen), at most the design's
    looks). Returns per row the outcome (PASS, FAIL, or OPEN: no boundary crossed in the looks seen) and the index
    of the look it stopped at (the last one seen when OPEN). Both tails use Tango's score statistic at -margin,
    as the fixed-design gate does (the forgetting tail with its half-item continuity correction)."""
    gains, losses = np.atleast_2d(gains).astype(float), np.atleast_2d(losses).astype(float)
    seen = gains.shape[-1]
    n = np.broadcast_to(np.asarray(design.looks[:seen], dtype=float), gains.shape)
    z_pass = score_statistics(n, gains, losses, -margin)
    z_fail = -score_statistics(n, gains, losses, -margin, continuity=0.5)
    return crossings(design, z_pass, z_fail)


def crossings(design: SequentialDesign, z_pass: np.ndarray, z_fail: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The first look (index) at which either statistic reaches its boundary, per row of the (..., looks seen)
    arrays, and which: PASS (z_pass), FAIL (z_fail), or OPEN with the last look seen."""
    z_pass, z_fail = np.atleast_2d(z_pass), np.atleast_2d(z_fail)
    seen = z_pass.shape[-1]
    bounds = np.asarray(design.boundaries[:seen])
    crossed_pass, crossed_fail = z_pass >= bounds, z_fail >= bounds
    crossed = crossed_pass | crossed_fail
    stop = np.where(crossed.any(axis=-1), crossed.argmax(axis=-1), seen - 1)
    at_stop = np.take_along_axis(crossed_pass, stop[..., None], axis=-1)[..., 0]
    failed = np.take_along_axis(crossed_fail, stop[..., None], axis=-1)[..., 0]
    outcome = np.where(at_stop, PASS, np.where(failed, FAIL, OPEN))
    return outcome, stop
