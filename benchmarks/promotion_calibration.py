"""Does scheduled retraining still promote a better model in week 52, and never an equal one? A seeded simulation.

Every number runs the product's own rule (`tasks.lib.gate.promotion.promotes`, what `decide_promotion` applies) at the
looks the ledger (`ConfirmationLedger`) hands out, with each history's champion scored once and its stored
per-item results reused at every look, as the registry does. For contrast, the rule used before (the k-th look at
alpha * 6 / (pi^2 k^2), and the sign-flip test for free text) where it differs.

Right/wrong items (McNemar): 200 test items, the champion right on 85%, 8% of the items answered differently by
each retrain (the demo's retrains differ on 3-10%); even items, or unstable ones (how often an item flips varies,
Beta(0.5, 2)). Free text (ROUGE-L-like, the betting test): 200 items, 60% scored exactly alike.
And the task row's free-text test at mean zero on skewed, tied differences, 40-200 items.

    python -m benchmarks.promotion_calibration [--quick]
"""

from __future__ import annotations

import math

import numpy as np

from benchmarks._common import parser, write_results
from tasks.lib.gate import stats
from tasks.lib.gate.promotion import ConfirmationLedger, ConfirmationLook, decide_promotion, promotes

ITEMS, HORIZON, ALPHA, ACCURACY, DISCORDANCE = 200, 52, 0.05, 0.85, 0.08


def ledger_looks(horizon: int = HORIZON, weeks: int | None = None, alpha: float = ALPHA) -> list[ConfirmationLook]:
    """The looks a fresh ledger hands `weeks` weekly retrains (default: the horizon), one run each."""
    ledger = ConfirmationLedger(fingerprint="test-set").opened(horizon, 0)
    looks = []
    for week in range(weeks or horizon):
        looks.append(ledger.look_of(f"week-{week}", alpha))
        ledger = ledger.with_look(f"week-{week}")
    return looks


def challengers(rng, champion: np.ndarray, gain: float, unstable: bool, discordance: float = DISCORDANCE):
    """Right/wrong challengers on the champion's items: a fraction `discordance` of the items answered differently
    on average, the challenger's accuracy `gain` higher. `unstable`: items differ in how often they flip
    (Beta(0.5, 2) times the average rate), as real test items do: most never change, a few often."""
    correct = champion.mean(axis=-1, keepdims=True)
    loss_rate = (discordance - gain) / 2.0 / correct  # champion right -> challenger wrong
    gain_rate = (discordance + gain) / 2.0 / (1.0 - correct)  # champion wrong -> challenger right
    rate = np.where(champion == 1, loss_rate, gain_rate)
    if unstable:
        rate = np.clip(rate * rng.beta(0.5, 2.0, champion.shape) / 0.2, 0.0, 1.0)
    return np.where(rng.random(champion.shape) < rate, 1.0 - champion, champion)


def free_text(rng, reps: int, n: int, gain: float) -> tuple[np.ndarray, np.ndarray]:
    """ROUGE-L-like (champion, challenger) scores: 60% of the items scored exactly alike, the rest noisy around an
    item difficulty, the challenger's mean `gain` higher (before clipping to [0, 1])."""
    difficulty = rng.beta(2, 3, (reps, n))
    champion = np.clip(difficulty + rng.normal(0, 0.1, (reps, n)), 0, 1)
    tied = rng.random((reps, n)) < 0.6
    challenger = np.where(tied, champion, np.clip(difficulty + gain / 0.4 + rng.normal(0, 0.1, (reps, n)), 0, 1))
    return champion, challenger


def skewed_with_ties(rng, reps: int, n: int, side: str) -> np.ndarray:
    """Mean-zero per-item differences, 60% exact ties; left: most untied items a little better (+U(0, 0.1)), one in
    ten a lot worse (-U(0.2, 0.7)): a model better on many items by a little and worse on a few by a lot; right:
    the mirror image."""
    untied = rng.random((reps, n)) < 0.4
    small = rng.random((reps, n)) < 0.9
    x = np.where(small, rng.uniform(0.0, 0.1, (reps, n)), -rng.uniform(0.2, 0.7, (reps, n)))
    x = np.where(untied, x, 0.0)
    return x if side == "left" else -x


def retrain_history(
    seed: int, reps: int, looks: list[ConfirmationLook], last_gain: float = 0.0, unstable: bool = False, rule=promotes
) -> np.ndarray:
    """Weekly right/wrong retrains, every one as good as the champion but the last (better by `last_gain`); the
    champion's results stored once and reused; a promoted model becomes the champion. True where promoted."""
    rng = np.random.default_rng(seed)
    champion = (rng.random((reps, ITEMS)) < ACCURACY).astype(float)
    promoted = np.zeros((reps, len(looks)), dtype=bool)
    for index, look in enumerate(looks):
        gain = last_gain if index == len(looks) - 1 else 0.0
        new = challengers(rng, champion, gain, unstable)
        promoted[:, index] = rule(champion, new, look)
        champion = np.where(promoted[:, index, None], new, champion)
    return promoted


def decaying_rule(champion: np.ndarray, new: np.ndarray, look: ConfirmationLook) -> np.ndarray:
    """The rule used before, for contrast: exact McNemar at alpha * 6 / (pi^2 k^2) at the k-th look, no horizon."""
    gains = ((new == 1) & (champion == 0)).sum(axis=-1)
    losses = ((new == 0) & (champion == 1)).sum(axis=-1)
    return stats.mcnemar_p_better(gains, losses) < look.alpha * 6.0 / (math.pi**2 * look.number**2)


def confirmable_gain(look: ConfirmationLook, seed: int = 3) -> float:
    """The gain (a fraction) `decide_promotion` reports its items can confirm at 80% power, for an equal challenger."""
    rng = np.random.default_rng(seed)
    champion = (rng.random(ITEMS) < ACCURACY).astype(float)
    equal = challengers(rng, champion[None, :], 0.0, unstable=False)[0]
    decision = decide_promotion(True, list(equal), list(champion), look)
    return float(decision.tags["promotion.confirmable_gain_pts"]) / 100.0


def main() -> None:
    args = parser(__doc__.splitlines()[0]).parse_args()
    reps = 400 if args.quick else 4000
    looks = ledger_looks()
    rows: list[dict] = []

    def add(case: str, before: float | None, now: float, target: str) -> None:
        mc = 3.0 * math.sqrt(max(now * (1.0 - now), 1e-4) / reps)
        rows.append({"case": case, "before": before, "now": now, "monte_carlo_3se": mc, "target": target})
        shown = "—" if before is None else f"{before:.3f}"
        print(f"{case:<86} before {shown:>6}  now {now:.3f} (+-{mc:.3f})  target {target}", flush=True)

    for unstable in (False, True):
        kind = "unstable items" if unstable else "even items"
        now = retrain_history(11 + unstable, reps, looks, unstable=unstable).any(axis=1).mean()
        before = retrain_history(11 + unstable, reps, looks, unstable=unstable, rule=decaying_rule).any(axis=1).mean()
        add(f"52 equal retrains ({kind}): any promoted", before, float(now), "<= 0.05")
    rng = np.random.default_rng(5)
    champion = (rng.random((reps, ITEMS)) < ACCURACY).astype(float)
    worse = challengers(rng, champion, -0.02, unstable=False)
    for look in (looks[0], looks[-1]):
        add(f"a model 2 pts worse promoted at look {look.number}", None, float(promotes(champion, worse, look).mean()),
            "<= 0.05")  # fmt: skip
    gain = confirmable_gain(looks[-1])
    at_1 = retrain_history(22, reps, looks[:1], last_gain=gain)[:, -1].mean()
    at_52 = retrain_history(21, reps, looks, last_gain=gain)[:, -1].mean()
    add(f"reported confirmable gain ({100 * gain:.1f} pts) promoted at look 1", None, float(at_1), "~0.80")
    add("... the same gain at look 52, after 51 equal retrains", None, float(at_52), ">= 0.72, >= 0.9 x look 1")
    for week in (1, 18, 52):
        history = looks[:week]
        now = retrain_history(30 + week, reps, history, last_gain=0.05)[:, -1].mean()
        before = retrain_history(30 + week, reps, history, last_gain=0.05, rule=decaying_rule)[:, -1].mean()
        add(f"a model 5 pts better promoted at look {week}", float(before), float(now), "the same at every look")

    rng = np.random.default_rng(40)
    ever = np.zeros(reps, dtype=bool)
    for look in looks:
        champion, equal = free_text(rng, reps, ITEMS, 0.0)
        ever |= promotes(champion, equal, look)
    add("free text: 52 equal retrains, any promoted (betting test)", None, float(ever.mean()), "<= 0.05")
    for week in (1, 18, 52):
        champion, better = free_text(rng, reps, ITEMS, 0.08)
        sign_flip_floor = 1.0 / (9999 + 1)  # the smallest p-value of the sign-flip test used before
        before = 0.0 if ALPHA * 6.0 / (math.pi**2 * week**2) <= sign_flip_floor else None
        add(f"free text: a model +0.08 ROUGE-L better promoted at look {week}", before,
            float(promotes(champion, better, looks[week - 1]).mean()), "the same at every look")  # fmt: skip
    for n in (40, 100, 200):
        for side in ("left", "right"):
            x = skewed_with_ties(np.random.default_rng(n + (side == "right")), reps, n, side)
            size = float((stats.betting_p_values(x, ALPHA) < ALPHA).mean())
            add(f"task row, free text, mean 0, 60% ties, {side}-skewed, {n} items: shown better", None, size,
                "<= 0.06")  # fmt: skip

    table = ["| case | before | now (± 3 MC SE) | target |", "|---|---|---|---|"]
    for row in rows:
        before = "—" if row["before"] is None else f"{row['before']:.3f}"
        table.append(
            f"| {row['case']} | {before} | {row['now']:.3f} ± {row['monte_carlo_3se']:.3f} | {row['target']} |"
        )
    settings = {"reps": reps, "items": ITEMS, "horizon": HORIZON, "alpha": ALPHA, "discordance": DISCORDANCE}
    markdown = f"Promotion over 52 weekly retrains ({reps:,} seeded histories a cell):\n\n" + "\n".join(table)
    write_results("promotion_calibration", {"settings": settings, "rows": rows}, markdown, args.quick)


if __name__ == "__main__":
    main()
