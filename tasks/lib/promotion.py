"""The promotion policy: which registry aliases a newly trained model gets.

- Gate failed: nothing is registered. A model that forgot general abilities (or did not learn the task)
  never enters the registry, so no alias, search or deployment can pick it up by mistake; the run itself,
  its metrics and its adapter stay in MLflow tracking for diagnosis.
- Gate passed: the new version becomes `challenger`. It also becomes `champion` when there is no champion
  yet or its score beats the champion's strictly (a tie keeps the incumbent: no churn without evidence).
  Aliases move: the previous champion keeps its version number and tags, only the alias leaves it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

CHAMPION = "champion"
CHALLENGER = "challenger"


@dataclass(frozen=True)
class PromotionDecision:
    register: bool  # create a registry version at all
    reason: str
    aliases: list[str] = field(default_factory=list)  # aliases the new version receives
    tags: dict[str, str] = field(default_factory=dict)  # tags set on the new version


def decide_promotion(gate_passed: bool, score: float, champion_score: float | None) -> PromotionDecision:
    """Apply the policy above; `champion_score` is None when the registered model has no champion."""
    if math.isnan(score):
        raise ValueError("score is NaN: cannot rank the model")
    if not gate_passed:
        return PromotionDecision(register=False, reason="forgetting/quality gate failed: not registered")
    if champion_score is None:
        promoted, reason = True, f"no champion yet: promoted with score {score:.4g}"
    elif score > champion_score:
        promoted, reason = True, f"score {score:.4g} beats champion's {champion_score:.4g}: promoted"
    else:
        promoted, reason = False, f"score {score:.4g} does not beat champion's {champion_score:.4g}: challenger"
    return PromotionDecision(
        register=True,
        aliases=[CHALLENGER, CHAMPION] if promoted else [CHALLENGER],
        tags={"gate": "passed", "promoted": str(promoted).lower(), "promotion_reason": reason},
        reason=reason,
    )
