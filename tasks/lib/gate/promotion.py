"""The promotion policy: which registry aliases a newly trained model gets.

- Gate failed: nothing is registered. A model that forgot general abilities (or did not learn the task)
  never enters the registry, so no alias, search or deployment can pick it up by mistake; the run itself,
  its metrics and its adapter stay in MLflow tracking for diagnosis.
- Gate passed: the new version becomes `challenger`. It also becomes `champion` when there is no champion
  yet, or when it is shown better than the champion on the same test items: an exact one-sided McNemar test
  of per-item correctness, or for graded per-item scores (free text: ROUGE-L) a betting test of the mean
  difference. A tie, or a gain the items cannot confirm, keeps the incumbent (no
  churn without evidence). Aliases move: the previous champion keeps its version number and tags.
- Repeated confirmations on one test set share one error budget over a declared horizon: each weekly retrain (or a
  sweep's best trial) is one more look at the same test items, and the chance that a model no better than the
  champion is ever promoted on them must stay below `gate.alpha`. The budget is spread evenly (Bonferroni): every
  look within `registry.confirmation_horizon` looks (default 52, a year of weekly retrains) is tested at
  alpha / horizon, so (a) P(a model no better than the champion is ever promoted within the horizon) <= alpha,
  whatever the models and however the champion's stored results are reused; (b) a worse model is promoted at any
  look with probability <= alpha / horizon; (c) a given gain is found with the same power at look 52 as at look 1.
  (A budget that decays with the look number, as used before, alpha * 6 / (pi^2 k^2), left a 5-point gain 0.6%
  power by look 52: weekly retraining silently stopped promoting.) Each decision states the gain this test set can
  confirm at 80% power at this level, so a test set too small for the gains that matter shows at once. Past the
  horizon nothing is promoted and the run says so; fresh test items (a new fingerprint) or a declared new horizon
  (`registry.horizon_renewals`, each one spending another alpha on the same items) renew the budget. The registry
  keeps the ledger (looks per test-set fingerprint).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from pydantic import BaseModel

from tasks.lib.gate import stats

CHAMPION = "champion"
CHALLENGER = "challenger"


@dataclass(frozen=True)
class PromotionDecision:
    register: bool  # create a registry version at all
    reason: str
    aliases: list[str] = field(default_factory=list)  # aliases the new version receives
    tags: dict[str, str] = field(default_factory=dict)  # tags set on the new version


@dataclass(frozen=True)
class ConfirmationLook:
    """One challenger-vs-champion confirmation on a test set: the `number`-th of a `horizon` sharing `alpha`."""

    number: int
    horizon: int
    alpha: float

    @property
    def within_horizon(self) -> bool:
        return self.number <= self.horizon

    @property
    def level(self) -> float:
        """The test's level at this look: the budget spread evenly over the horizon (0 past it)."""
        return self.alpha / self.horizon if self.within_horizon else 0.0

    def describe(self) -> str:
        return f"look {self.number} of {self.horizon} on these test items"


SINGLE_LOOK = ConfirmationLook(number=1, horizon=1, alpha=0.05)


class ConfirmationLedger(BaseModel):
    """The confirmations (challenger against champion) one test set, by fingerprint, has made in its current horizon.

    Each look is a pipeline run id: a register step re-run after a kill finds its own look again and spends
    nothing more. The horizon is fixed when the budget opens (a config changed later does not stretch it);
    `renewals` counts the horizons declared on these items, each spending another alpha."""

    fingerprint: str
    looks: int = 0
    horizon: int | None = None
    renewals: int = 0
    recent_runs: list[str] = []  # the newest looks' pipeline runs (bounded: a tag holds 5,000 characters)

    def opened(self, horizon: int, renewals: int) -> ConfirmationLedger:
        """This ledger, or a fresh budget when a new horizon is declared (`renewals` above the ledger's)."""
        if renewals > self.renewals:
            return ConfirmationLedger(fingerprint=self.fingerprint, horizon=horizon, renewals=renewals)
        return self if self.horizon is not None else self.model_copy(update={"horizon": horizon})

    def look_of(self, run_id: str, alpha: float) -> ConfirmationLook:
        """The look `run_id` has, or would have as the next one."""
        number = self.looks + 1
        if run_id in self.recent_runs:
            number = self.looks - len(self.recent_runs) + self.recent_runs.index(run_id) + 1
        return ConfirmationLook(number=number, horizon=self.horizon or 1, alpha=alpha)

    def with_look(self, run_id: str) -> ConfirmationLedger:
        if run_id in self.recent_runs:
            return self
        return self.model_copy(
            update={"looks": self.looks + 1, "recent_runs": [*self.recent_runs, run_id][-MAX_LEDGER_RUNS:]}
        )


MAX_LEDGER_RUNS = 50


def items_fingerprint(items: Sequence[tuple[str, object]]) -> str:
    """Identifies a test set: (item id, conversation) pairs in order."""
    return hashlib.sha256(json.dumps(list(items), sort_keys=True, default=str).encode()).hexdigest()[:24]


def encode_correct(correct: Sequence[bool]) -> str:
    return "".join("1" if value else "0" for value in correct)


def decode_correct(text: str) -> list[bool]:
    if set(text) - {"0", "1"}:
        raise ValueError(f"not a per-item correctness string: {text[:40]!r}")
    return [char == "1" for char in text]


def encode_scores(scores: Sequence[float]) -> str:
    """Graded per-item scores as a tag value: 3 decimals, comma-separated (right/wrong: `encode_correct`)."""
    return ",".join(f"{score:.3f}" for score in scores)


def decode_scores(text: str) -> list[float]:
    return [float(value) for value in text.split(",")] if text else []


def decide_promotion(
    gate_passed: bool,
    challenger_scores: Sequence[float],
    champion_scores: Sequence[float] | None,
    look: ConfirmationLook = SINGLE_LOOK,
) -> PromotionDecision:
    """Apply the policy above; `champion_scores` is None when there is no champion, else the champion's per-item
    results (right/wrong, or graded in [0, 1]) on the challenger's own test items (same order); `look` is this
    confirmation's place in the test set's budget."""
    if not gate_passed:
        return PromotionDecision(register=False, reason="forgetting/quality gate failed: not registered")
    tags = {"gate": "passed"}
    if champion_scores is None:
        promoted, reason = True, "no champion yet: promoted"
    else:
        comparison = compare(champion_scores, challenger_scores, look)
        promoted = look.within_horizon and comparison.p_value < look.level  # the rule `promotes` applies
        if not look.within_horizon:
            outcome = (
                f"not promoted: the test items' confirmation budget is spent ({look.describe()}, past the "
                f"{look.horizon}-look horizon); renew it with fresh test items or a new horizon "
                "(registry.horizon_renewals)"
            )
        else:
            outcome = "promoted" if promoted else "not shown better, stays challenger"
        reason = f"{comparison.summary}: {outcome}"
        tags.update(comparison.tags())
    tags.update({"promoted": str(promoted).lower(), "promotion_reason": reason})
    return PromotionDecision(
        register=True, aliases=[CHALLENGER, CHAMPION] if promoted else [CHALLENGER], tags=tags, reason=reason
    )


def promotes(champion: np.ndarray, challengers: np.ndarray, look: ConfirmationLook) -> np.ndarray:
    """The rule `decide_promotion` applies, over many challengers at once (rows of `challengers`, the champion's
    per-item results broadcast against them): shown better at the look's level, within the horizon. The seeded
    simulations in the tests call it through the ledger's looks."""
    champion, challengers = np.asarray(champion, dtype=float), np.atleast_2d(np.asarray(challengers, dtype=float))
    if not look.within_horizon:
        return np.zeros(challengers.shape[0], dtype=bool)
    if stats.is_binary(champion.ravel()) and stats.is_binary(challengers.ravel()):
        gains = ((challengers == 1) & (champion == 0)).sum(axis=-1)
        losses = ((challengers == 0) & (champion == 1)).sum(axis=-1)
        p_values = stats.mcnemar_p_better(gains, losses)
    else:
        p_values = stats.betting_p_values(challengers - champion, look.level)
    return p_values < look.level


@dataclass(frozen=True)
class Comparison:
    """Challenger against champion on the same items, at one look."""

    delta: float  # challenger - champion: accuracy or mean score (a fraction)
    low: float  # interval at the look's level in each tail
    high: float
    p_value: float  # H0: the challenger is no better
    n: int
    confirmable_gain: float  # the true gain found with 80% power at this look's level
    look: ConfirmationLook
    summary: str

    def tags(self) -> dict[str, str]:
        return {
            "promotion.delta_pts": f"{100 * self.delta:.2f}",
            "promotion.ci_pts": f"[{100 * self.low:.2f}, {100 * self.high:.2f}]",
            "promotion.p_value": f"{self.p_value:.4g}",
            "promotion.level": f"{self.look.level:.4g}",
            "promotion.look": f"{self.look.number}/{self.look.horizon}",
            "promotion.confirmable_gain_pts": f"{100 * self.confirmable_gain:.2f}",
            "promotion.n": str(self.n),
        }


def compare(champion: Sequence[float], challenger: Sequence[float], look: ConfirmationLook) -> Comparison:
    """Exact one-sided McNemar for right/wrong items, the betting test of the mean for graded scores, at the look's
    level (the level of look 1 when past the horizon, to still report what the items show)."""
    level = look.level or look.alpha / look.horizon
    confirmable = "can confirm a gain of {:.1f} pts at 80% power at this look (level {:.2g}, {})"
    if stats.is_binary(champion) and stats.is_binary(challenger):
        pairs = stats.count_pairs(champion, challenger)
        low, high = stats.difference_interval(pairs, 1.0 - 2.0 * level)
        p_value = stats.p_better(pairs)
        discordance = max(pairs.discordant, 1) / pairs.n if pairs.n else 1.0
        gain = stats.mcnemar_confirmable_gain(pairs.n, discordance, level)
        summary = (
            f"{100 * pairs.delta:+.1f} pts [{100 * low:+.1f}, {100 * high:+.1f}] vs the champion on the same "
            f"{pairs.n} items ({pairs.gains} gained, {pairs.losses} lost), exact McNemar p={p_value:.2g}; these items "
            + confirmable.format(100 * gain, level, look.describe())
        )
        return Comparison(pairs.delta, low, high, p_value, pairs.n, gain, look, summary)
    paired = stats.PairedScores(tuple(champion), tuple(challenger))
    low, high = paired.interval(level)
    p_value = paired.p_better(level)
    gain = stats.betting_confirmable_gain(paired.differences, level)
    summary = (
        f"{100 * paired.delta:+.1f} pts [{100 * low:+.1f}, {100 * high:+.1f}] mean score vs the champion on the same "
        f"{paired.n} items ({paired.gains} better, {paired.losses} worse), betting p={p_value:.2g}; these items "
        + confirmable.format(100 * gain, level, look.describe())
    )
    return Comparison(paired.delta, low, high, p_value, paired.n, gain, look, summary)
