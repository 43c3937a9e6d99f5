"""The promotion policy: which registry aliases a newly trained model gets.

- Gate failed: nothing is registered. A model that forgot general abilities (or did not learn the task)
  never enters the registry, so no alias, search or deployment can pick it up by mistake; the run itself,
  its metrics and its adapter stay in MLflow tracking for diagnosis.
- Gate passed: the new version becomes `challenger`. It also becomes `champion` when there is no champion
  yet, or when it is shown better than the champion on the same test items: an exact one-sided McNemar test
  of per-item correctness at `alpha`, or for graded per-item scores (free text: ROUGE-L) a sign-flip
  permutation test of the mean difference. A tie, or a gain the items cannot confirm, keeps the incumbent (no
  churn without evidence). Aliases move: the previous champion keeps its version number and tags.
- Repeated confirmations on one test set spend its error budget: the k-th challenger-vs-champion comparison on
  the same test items (a weekly retrain, a sweep's best trial) is tested at `look_alpha(alpha, k)` =
  alpha * 6 / (pi^2 k^2), whose sum over every look is alpha, so the chance that a model no better than the
  champion is ever promoted on those items stays below alpha however often it is retrained. The registry keeps
  the ledger (looks and alpha spent per test-set fingerprint); new test items start a new budget.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from pydantic import BaseModel

from tasks.lib import stats

CHAMPION = "champion"
CHALLENGER = "challenger"


@dataclass(frozen=True)
class PromotionDecision:
    register: bool  # create a registry version at all
    reason: str
    aliases: list[str] = field(default_factory=list)  # aliases the new version receives
    tags: dict[str, str] = field(default_factory=dict)  # tags set on the new version


class ConfirmationLedger(BaseModel):
    """The confirmations (challenger against champion) one test set, by fingerprint, has made, and the alpha spent.

    Each look is a pipeline run id: a register step re-run after a kill finds its own look again and spends
    nothing more."""

    fingerprint: str
    looks: int = 0
    alpha_spent: float = 0.0
    recent_runs: list[str] = []  # the newest looks' pipeline runs (bounded: a tag holds 5,000 characters)

    def look_of(self, run_id: str) -> int:
        """The look number `run_id` has, or would have as the next one."""
        if run_id in self.recent_runs:
            return self.looks - len(self.recent_runs) + self.recent_runs.index(run_id) + 1
        return self.looks + 1

    def with_look(self, run_id: str, alpha: float) -> ConfirmationLedger:
        if run_id in self.recent_runs:
            return self
        look = self.looks + 1
        return ConfirmationLedger(
            fingerprint=self.fingerprint,
            looks=look,
            alpha_spent=self.alpha_spent + look_alpha(alpha, look),
            recent_runs=[*self.recent_runs, run_id][-MAX_LEDGER_RUNS:],
        )


MAX_LEDGER_RUNS = 50


def look_alpha(alpha: float, look: int) -> float:
    """The level of the `look`-th confirmation on one test set; the levels over every look sum to `alpha`."""
    return alpha * 6.0 / (math.pi**2 * look**2)


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
    alpha: float = 0.05,
) -> PromotionDecision:
    """Apply the policy above; `champion_scores` is None when there is no champion, else the champion's per-item
    results (right/wrong, or graded in [0, 1]) on the challenger's own test items (same order)."""
    if not gate_passed:
        return PromotionDecision(register=False, reason="forgetting/quality gate failed: not registered")
    tags = {"gate": "passed"}
    if champion_scores is None:
        promoted, reason = True, "no champion yet: promoted"
    else:
        comparison = _compare(champion_scores, challenger_scores, alpha)
        delta, low, high, p_value, n, summary = comparison
        promoted = p_value < alpha
        reason = f"{summary}: {'promoted' if promoted else 'not shown better, stays challenger'}"
        tags.update(
            {
                "promotion.delta_pts": f"{100 * delta:.2f}",
                "promotion.ci_pts": f"[{100 * low:.2f}, {100 * high:.2f}]",
                "promotion.p_value": f"{p_value:.4g}",
                "promotion.n": str(n),
            }
        )
    tags.update({"promoted": str(promoted).lower(), "promotion_reason": reason})
    return PromotionDecision(
        register=True, aliases=[CHALLENGER, CHAMPION] if promoted else [CHALLENGER], tags=tags, reason=reason
    )


def _compare(
    champion: Sequence[float], challenger: Sequence[float], alpha: float
) -> tuple[float, float, float, float, int, str]:
    """(delta, interval low, high, p that the challenger is better, n, a one-line summary) on the same items."""
    if stats.is_binary(champion) and stats.is_binary(challenger):
        pairs = stats.count_pairs(champion, challenger)
        low, high = stats.difference_interval(pairs, 1.0 - 2.0 * alpha)
        p_value = stats.p_better(pairs)
        summary = (
            f"{100 * pairs.delta:+.1f} pts [{100 * low:+.1f}, {100 * high:+.1f}] vs the champion on the same "
            f"{pairs.n} items ({pairs.gains} gained, {pairs.losses} lost), p={p_value:.2g}"
        )
        return pairs.delta, low, high, p_value, pairs.n, summary
    paired = stats.PairedScores(tuple(champion), tuple(challenger))
    low, high = paired.interval(1.0 - 2.0 * alpha)
    p_value = paired.p_better()
    summary = (
        f"{100 * paired.delta:+.1f} pts [{100 * low:+.1f}, {100 * high:+.1f}] mean score vs the champion on the same "
        f"{paired.n} items ({paired.gains} better, {paired.losses} worse), sign-flip p={p_value:.2g}"
    )
    return paired.delta, low, high, p_value, paired.n, summary
