"""What a gate row says: whether its verdict passes, the sentence that explains it, and the checks that make a row
uninformative."""

from __future__ import annotations

from typing import Literal

from tasks.lib.config import GateConfig
from tasks.lib.config.benchmark_names import HIGHER_IS_BETTER
from tasks.lib.gate import sequential, stats
from tasks.lib.gate.benchmark_scores import BenchmarkScores
from tasks.lib.gate.gate_result import GateRow, GroupCounts, Verdict


def passes(verdict: Verdict, gate: GateConfig) -> bool:
    return verdict in ("pass", "uninformative") or (verdict == "inconclusive" and gate.on_inconclusive == "pass")


def unscorable(name: str, metric: str, kind: str, why: str) -> GateRow:
    return GateRow(name=name, metric=metric, kind=kind, verdict="fail", passed=False, reason=why)


MIN_PERPLEXITY_DOCUMENTS = 10  # below this a spread estimated from the documents themselves is not trusted


def _stopped(row: GateRow) -> str:
    """Why a group-sequential row stopped where it did; empty for a fixed-design row."""
    if row.looks is None:
        return ""
    unit = "documents" if row.kind == "perplexity" else "items"
    where = f"look {row.looks} of {row.max_looks}, {row.n} of {row.max_items} {unit}"
    if row.verdict in ("pass", "fail"):
        return f" [stopped at {where}: boundary crossed]"
    return f" [{where}: no boundary crossed]"


def describe(row: GateRow, unit: str) -> str:
    """The row's finding, each p-value named by what it tests (adjusted across the benchmarks)."""
    return _finding(row, unit) + _stopped(row)


def _finding(row: GateRow, unit: str) -> str:
    change = f"{row.delta:+.2f}{unit} [{row.ci_low:+.2f}, {row.ci_high:+.2f}]"
    worse = "rise" if row.kind == "perplexity" else "drop"
    margin = f"the {row.margin:g}{unit} margin"
    if row.verdict == "pass":
        return f"{change}: no {worse} beyond {margin} (non-inferiority p={row.p_noninferior:.2g})"
    if row.verdict == "fail":
        return f"{change}: forgetting shown beyond {margin} (p={row.p_beyond_margin:.2g} for a {worse} beyond it)"
    if row.kind == "perplexity" and row.n < MIN_PERPLEXITY_DOCUMENTS:
        return (
            f"{change}: {row.n} documents are too few to decide (a perplexity row needs at least "
            f"{MIN_PERPLEXITY_DOCUMENTS}; raise forgetting.perplexity_limit)"
        )
    cannot_tell = (
        f"{row.n} items cannot tell; they can show a margin of {row.detectable_drop:.2g}{unit}, "
        f"about {row.items_needed} items would settle {margin}"
    )
    if row.verdict == "drop":
        return (
            f"{change}: a {worse} is shown (p={row.p_worse:.2g} against no change), not beyond {margin}; {cannot_tell}"
        )
    return f"{change}: {cannot_tell}"


def row_kind(metric: str, items: list) -> Literal["accuracy", "perplexity"] | None:
    """How a metric is compared: right/wrong per item, or [log-likelihood, weight] per document; None: neither."""
    if all(isinstance(item, list | tuple) and len(item) == 2 for item in items):
        return "perplexity" if not HIGHER_IS_BETTER.get(metric, True) else None
    if all(item in (0, 1, True, False) for item in items):
        return "accuracy"
    return None


def chance_evidence(base: BenchmarkScores, looks: sequential.Looks | None) -> tuple[int, int, float] | None:
    """(base items right, items, chance accuracy) the "above chance" test reads, for a multiple-choice row: the base
    alone, on all its items in the fixed design and on the first look's block in the group-sequential one (read
    before any look, so which rows form the family never changes between looks); None: no chance level."""
    items, choices = base.items, base.choices
    keys = list(looks.order[: looks.every]) if looks else list(items)
    keys = [key for key in keys if key in items]
    if choices:
        chance = sum(1.0 / choices[key] for key in keys) / len(keys) if keys else None
    else:
        chance = base.chance
    if not chance or not keys:
        return None
    return int(sum(bool(items[key]) for key in keys)), len(keys), chance


def uninformative(
    name: str, metric: str, base: list, tuned: list, evidence: tuple[int, int, float], p: float, gate: GateConfig
) -> GateRow:
    """The row of a benchmark the base is not shown to do better than guessing on: neither pass nor fail."""
    pairs = stats.count_pairs(base, tuned)
    low, high = stats.difference_interval(pairs, 1.0 - 2.0 * gate.alpha)
    correct, n, chance = evidence
    return GateRow(
        name=name,
        metric=metric,
        kind="accuracy",
        verdict="uninformative",
        passed=True,
        reason=f"base {100.0 * correct / n:.1f}% of {n} items is not shown above chance ({100.0 * chance:.1f}%, "
        f"p={p:.2g}): this benchmark cannot show forgetting for this model",
        **paired_fields(pairs, low, high),
        chance=100.0 * chance,
        p_value=p,
        p_above_chance=p,
        alpha=gate.alpha,
    )


def group_counts(groups: dict[str, str] | None, base_items: dict, tuned_items: dict) -> list[GroupCounts]:
    if not groups:
        return []
    by_group: dict[str, tuple[list, list]] = {}
    for key in tuned_items:  # group-sequential: the items the tuned model was scored on
        side = by_group.setdefault(groups.get(key, "?"), ([], []))
        side[0].append(base_items[key])
        side[1].append(tuned_items[key])
    counts = []
    for name, (base, tuned) in sorted(by_group.items()):
        pairs = stats.count_pairs(base, tuned)
        counts.append(
            GroupCounts(
                name=name,
                n=pairs.n,
                base=100.0 * pairs.base_correct / pairs.n,
                tuned=100.0 * pairs.tuned_correct / pairs.n,
                gains=pairs.gains,
                losses=pairs.losses,
            )
        )
    return counts


def paired_fields(pairs: stats.BinaryPairs, low: float, high: float) -> dict:
    """A row's counts, scores, delta and interval from paired right/wrong results, in points."""
    return {
        "n": pairs.n,
        "base": 100.0 * pairs.base_correct / pairs.n,
        "tuned": 100.0 * pairs.tuned_correct / pairs.n,
        "delta": 100.0 * pairs.delta,
        "ci_low": 100.0 * low,
        "ci_high": 100.0 * high,
        "gains": pairs.gains,
        "losses": pairs.losses,
    }
