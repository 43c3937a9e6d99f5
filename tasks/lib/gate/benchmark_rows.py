"""One gate row per forgetting benchmark, from base and tuned per-item results, in the fixed or the group-sequential
design."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal, NamedTuple

import numpy as np
from pydantic import BaseModel
from scipy.stats import norm

from tasks.lib.config import GateConfig
from tasks.lib.config.benchmark_names import HEADLINE, HIGHER_IS_BETTER
from tasks.lib.gate import sequential, stats
from tasks.lib.gate.benchmark_scores import BenchmarkScores
from tasks.lib.gate.gate_result import GateRow, Verdict
from tasks.lib.gate.row_findings import (
    MIN_PERPLEXITY_DOCUMENTS,
    chance_evidence,
    describe,
    group_counts,
    paired_fields,
    passes,
    row_kind,
    uninformative,
    unscorable,
)


def _paired_items(
    base_scores: BenchmarkScores | None, tuned_scores: BenchmarkScores | None, tuned_may_stop_early: bool = False
) -> tuple[list, list] | str:
    """The per-item results of both sides on the same documents, or why they cannot be paired. Group-sequential:
    the tuned model is scored on the items of the looks it needed, the base on all."""
    base_items = base_scores.items if base_scores else {}
    tuned_items = tuned_scores.items if tuned_scores else {}
    missing = [side for side, items in (("base", base_items), ("tuned", tuned_items)) if not items]
    if missing:
        return f"no per-item results for {' and '.join(missing)}: cannot pair"
    if tuned_may_stop_early and set(tuned_items) <= set(base_items):
        keys = list(tuned_items)
        return [base_items[key] for key in keys], [tuned_items[key] for key in keys]
    if set(base_items) != set(tuned_items):
        return f"base and tuned were scored on different items ({len(base_items)} vs {len(tuned_items)})"
    keys = list(base_items)
    return [base_items[key] for key in keys], [tuned_items[key] for key in keys]


class _Pending(BaseModel):
    """A benchmark row before the family-wise adjustment."""

    row: GateRow
    p_noninferior: float  # H0: worse by the margin or more
    p_beyond_margin: float  # H0: worse by less than the margin (small: forgetting beyond the margin is shown)
    p_worse: float  # H0: no change (small: a drop is shown, of any size)
    crossed: Verdict | None = None  # group-sequential: the boundary crossed (pass or fail), "inconclusive": none


def _accuracy_pending(
    name: str, metric: str, base: list, tuned: list, gate: GateConfig, k: int, margin_points: float
) -> _Pending:
    pairs = stats.count_pairs(base, tuned)
    margin = margin_points / 100.0
    interval = stats.difference_interval(pairs, 1.0 - 2.0 * gate.alpha / k)
    return _Pending(
        row=_accuracy_row(name, metric, pairs, interval, margin_points, gate.alpha / k, pairs.n),
        p_noninferior=stats.p_noninferior(pairs, margin),
        p_beyond_margin=stats.p_beyond_margin(pairs, margin),
        p_worse=stats.p_worse(pairs),
    )


def _accuracy_row(
    name: str,
    metric: str,
    pairs: stats.BinaryPairs,
    interval: tuple[float, float],
    margin_points: float,
    row_alpha: float,
    detectable_at: int,
    **looked: int,
) -> GateRow:
    """An accuracy row before its verdict: counts, interval and what `detectable_at` items could detect."""
    sd = stats.per_item_sd(pairs)
    return GateRow(
        name=name,
        metric=metric,
        kind="accuracy",
        verdict="inconclusive",
        passed=False,
        reason="",
        **paired_fields(pairs, *interval),
        margin=margin_points,
        detectable_drop=100.0 * stats.detectable_margin(sd, detectable_at, row_alpha),
        items_needed=stats.items_needed(sd, margin_points / 100.0, row_alpha),
        **looked,
    )


def _crossed(outcome: np.ndarray) -> Verdict:
    """The boundary a group-sequential row crossed: pass, fail, or none (inconclusive)."""
    return {sequential.PASS: "pass", sequential.FAIL: "fail"}.get(int(outcome[0]), "inconclusive")


def _design_and_looks_seen(
    looks: sequential.Looks, level: float, tuned_items: Mapping[str, Any], unit: str
) -> tuple[sequential.SequentialDesign, int] | str:
    """The row's design at `level` per tail and how many of its looks the tuned model's items cover (a look needs
    every item of its blocks); why the row cannot be judged when they cover none."""
    plan, seen = sequential.design(looks.counts, level), 0
    while seen < len(plan.looks) and all(key in tuned_items for key in looks.order[: plan.looks[seen]]):
        seen += 1
    if seen == 0:
        return f"the tuned model was scored on fewer {unit} than the first look ({plan.looks[0]})"
    return plan, seen


def _sequential_accuracy_pending(
    name: str,
    metric: str,
    base_items: Mapping[str, Any],
    tuned_items: Mapping[str, Any],
    looks: sequential.Looks,
    gate: GateConfig,
    k: int,
    margin_points: float,
) -> _Pending | str:
    """A group-sequential row: looks after every block of its items in their seeded order, at level alpha/k per
    tail, stopping at the first boundary crossed (tasks/lib/gate/sequential.py)."""
    margin, order = margin_points / 100.0, looks.order
    designed = _design_and_looks_seen(looks, gate.alpha / k, tuned_items, "items")
    if isinstance(designed, str):
        return designed
    plan, seen = designed
    counts = [stats.count_pairs(*_items_at(base_items, tuned_items, order[:n])) for n in plan.looks[:seen]]
    outcome, stop = sequential.paired_outcomes(
        plan, np.array([c.gains for c in counts]), np.array([c.losses for c in counts]), margin
    )
    look = int(stop[0])
    pairs = counts[look]
    boundary = plan.boundaries[look]
    # The repeated confidence interval: Tango's at the boundary of the look it stopped at.
    interval = stats.difference_interval(pairs, 1.0 - 2.0 * float(norm.sf(boundary)))
    z_pass = stats.score_statistic(pairs, -margin)
    z_fail = -float(stats.score_statistics(pairs.n, pairs.gains, pairs.losses, -margin, continuity=0.5))
    at_maximum = look == len(plan.looks) - 1
    looked = {"looks": look + 1, "max_looks": len(plan.looks), "max_items": plan.maximum}
    return _Pending(
        row=_accuracy_row(name, metric, pairs, interval, margin_points, gate.alpha / k, plan.maximum, **looked),
        p_noninferior=plan.p_value(look, z_pass),
        p_beyond_margin=plan.p_value(look, z_fail),
        # Only read at the maximum: a drop against no change, on all the items, when neither boundary was crossed.
        p_worse=stats.p_worse(pairs) if at_maximum else 1.0,
        crossed=_crossed(outcome),
    )


def _items_at(base_items: Mapping[str, Any], tuned_items: Mapping[str, Any], keys: Sequence[str]) -> tuple[list, list]:
    return [base_items[key] for key in keys], [tuned_items[key] for key in keys]


def _sequential_perplexity_pending(
    name: str,
    metric: str,
    base_items: Mapping[str, Any],
    tuned_items: Mapping[str, Any],
    looks: sequential.Looks,
    gate: GateConfig,
    k: int,
    margin_relative: float,
) -> _Pending | str:
    """A group-sequential perplexity row: after every block of documents, each one-sided t-test's p-value is turned
    into the normal quantile it equals (Jennison & Turnbull's significance-level approach for t-tests in group
    sequential designs) and read against the boundary; the interval is the t-interval at the boundary's level."""
    order, bound = looks.order, math.log1p(margin_relative)
    designed = _design_and_looks_seen(looks, gate.alpha / k, tuned_items, "documents")
    if isinstance(designed, str):
        return designed
    plan, seen = designed
    ratios = []
    for n in plan.looks[:seen]:
        base, tuned = _items_at(base_items, tuned_items, order[:n])
        ratios.append(stats.log_ratio([b[0] for b in base], [t[0] for t in tuned], [b[1] for b in base]))
    # A look on fewer than MIN_PERPLEXITY_DOCUMENTS decides nothing: its statistics cannot cross a boundary.
    trusted = [ratio.n >= MIN_PERPLEXITY_DOCUMENTS for ratio in ratios]
    z_pass = np.array(
        [[norm.isf(r.p_at_least(bound)) if ok else -np.inf for r, ok in zip(ratios, trusted, strict=True)]]
    )
    z_fail = np.array(
        [[norm.isf(r.p_at_most(bound)) if ok else -np.inf for r, ok in zip(ratios, trusted, strict=True)]]
    )
    outcome, stop = sequential.crossings(plan, z_pass, z_fail)
    look = int(stop[0])
    base, tuned = _items_at(base_items, tuned_items, order[: plan.looks[look]])
    pending = _perplexity_pending(name, metric, base, tuned, gate, k, margin_relative, plan.boundaries[look])
    at_maximum = look == len(plan.looks) - 1
    pending.row.looks, pending.row.max_looks, pending.row.max_items = look + 1, len(plan.looks), plan.maximum
    return pending.model_copy(
        update={
            "p_noninferior": plan.p_value(look, float(z_pass[0, look])),
            "p_beyond_margin": plan.p_value(look, float(z_fail[0, look])),
            "p_worse": ratios[look].p_at_most(0.0) if at_maximum and trusted[look] else 1.0,
            "crossed": _crossed(outcome),
        }
    )


def _perplexity_pending(
    name: str,
    metric: str,
    base: list,
    tuned: list,
    gate: GateConfig,
    k: int,
    margin_relative: float,
    boundary: float | None = None,
) -> _Pending:
    """A perplexity row; `boundary`: a group-sequential look's, whose level the interval takes."""
    base_ll, weights = [item[0] for item in base], [item[1] for item in base]
    tuned_ll = [item[0] for item in tuned]
    ratio = stats.log_ratio(base_ll, tuned_ll, weights)
    bound = math.log1p(margin_relative)
    tail = gate.alpha / k
    low, high = ratio.interval(tail if boundary is None else float(norm.sf(boundary)))
    ppl_base = math.exp(-sum(base_ll) / sum(weights))
    ppl_tuned = math.exp(-sum(tuned_ll) / sum(weights))
    row = GateRow(
        name=name,
        metric=metric,
        kind="perplexity",
        verdict="inconclusive",
        passed=False,
        reason="",
        n=len(base),
        base=ppl_base,
        tuned=ppl_tuned,
        delta=100.0 * math.expm1(ratio.estimate),
        ci_low=100.0 * math.expm1(low),
        ci_high=100.0 * math.expm1(high),
        margin=100.0 * margin_relative,
        detectable_drop=100.0 * math.expm1(stats.detectable_margin_t(ratio.se_per_document, len(base), tail)),
        items_needed=stats.items_needed_t(ratio.se_per_document, bound, tail),
    )
    if len(base) < MIN_PERPLEXITY_DOCUMENTS:  # at most inconclusive; no power figures from so few
        row.detectable_drop = row.items_needed = None
        return _Pending(row=row, p_noninferior=1.0, p_beyond_margin=1.0, p_worse=1.0)
    return _Pending(
        row=row,
        p_noninferior=ratio.p_at_least(bound),
        p_beyond_margin=ratio.p_at_most(bound),
        p_worse=ratio.p_at_most(0.0),
    )


class _Paired(NamedTuple):
    """A benchmark whose items pair: where its row goes, and what both sides scored on them."""

    position: int
    name: str
    kind: Literal["accuracy", "perplexity"]
    metric: str
    base_items: list
    tuned_items: list


def benchmark_rows(
    base: Mapping[str, BenchmarkScores],
    tuned: Mapping[str, BenchmarkScores],
    gate: GateConfig,
    margins: Mapping[str, float],
    looks: Mapping[str, sequential.Looks] | None = None,
) -> list[GateRow]:
    sequential_mode = looks is not None
    looks = looks or {}
    names = list(base) + [name for name in tuned if name not in base]
    rows: list[GateRow | None] = []
    built: list[_Paired] = []
    for name in names:
        scores = base.get(name) or tuned.get(name) or BenchmarkScores()
        metric = scores.metric or HEADLINE.get(name)
        if metric is None:
            rows.append(unscorable(name, "?", "accuracy", f"unknown benchmark {name!r}"))
            continue
        paired = _paired_items(base.get(name), tuned.get(name), name in looks)
        if isinstance(paired, str):
            kind = "perplexity" if not HIGHER_IS_BETTER.get(metric, True) else "accuracy"
            rows.append(unscorable(name, metric, kind, paired))
            continue
        kind = row_kind(metric, paired[0] + paired[1])
        if kind is None:
            why = f"{metric} is neither right/wrong per item nor a perplexity: no paired test (set its metric)"
            rows.append(unscorable(name, metric, "accuracy", why))
            continue
        built.append(_Paired(len(rows), name, kind, metric, *paired))
        rows.append(None)
    # Rows the base cannot do leave the family before anything is compared (they depend on the base alone).
    informative: list[_Paired] = []
    set_aside, chances = {}, {}
    for row in built:
        base_row = base.get(row.name)
        evidence = chance_evidence(base_row, looks.get(row.name)) if row.kind == "accuracy" and base_row else None
        if evidence:
            correct, n, chance = evidence
            p_chance = stats.p_above_chance(correct, n, chance)
            if p_chance >= gate.alpha:
                set_aside[row.position] = uninformative(
                    row.name, row.metric, row.base_items, row.tuned_items, evidence, p_chance, gate
                )
                continue
            chances[row.position] = (100.0 * chance, p_chance)
        informative.append(row)
    k = max(len(informative), 1)
    pending: list[tuple[int, _Pending]] = []
    for position, name, kind, metric, base_items, tuned_items in informative:
        if name in looks:
            if kind == "accuracy":
                margin, pending_row = margins.get(name, gate.max_accuracy_drop), _sequential_accuracy_pending
            else:
                margin, pending_row = margins.get(name, gate.max_perplexity_increase), _sequential_perplexity_pending
            item = pending_row(name, metric, base[name].items, tuned[name].items, looks[name], gate, k, margin)
            if isinstance(item, str):
                rows[position] = unscorable(name, metric, kind, item)
                continue
            pending.append((position, item))
        elif kind == "accuracy":
            margin = margins.get(name, gate.max_accuracy_drop)
            pending.append((position, _accuracy_pending(name, metric, base_items, tuned_items, gate, k, margin)))
        else:
            margin = margins.get(name, gate.max_perplexity_increase)
            pending.append((position, _perplexity_pending(name, metric, base_items, tuned_items, gate, k, margin)))
    # Fixed design: Holm's step-down. Group-sequential: Bonferroni (each row's tails spend alpha/k over its looks).
    adjust = (lambda ps: [min(1.0, k * p) for p in ps]) if sequential_mode else stats.holm
    adjusted_ni = adjust([item.p_noninferior for _, item in pending])
    adjusted_beyond = adjust([item.p_beyond_margin for _, item in pending])
    adjusted_worse = adjust([item.p_worse for _, item in pending])
    adjusted = zip(pending, adjusted_ni, adjusted_beyond, adjusted_worse, strict=True)
    for (position, item), p_ni, p_beyond, p_worse in adjusted:
        if item.crossed in ("pass", "fail"):  # a boundary decides; a p-value at an early look may not
            verdict, p_value = item.crossed, p_ni if item.crossed == "pass" else p_beyond
        elif item.crossed == "inconclusive":
            verdict, p_value = ("drop", p_worse) if p_worse < gate.alpha else ("inconclusive", p_ni)
        elif p_ni < gate.alpha:
            verdict, p_value = "pass", p_ni
        elif p_beyond < gate.alpha:  # "fail" means forgetting beyond the margin is shown, nothing less
            verdict, p_value = "fail", p_beyond
        elif p_worse < gate.alpha:
            verdict, p_value = "drop", p_worse
        else:
            verdict, p_value = "inconclusive", p_ni
        row = item.row.model_copy(
            update={
                "verdict": verdict,
                "passed": passes(verdict, gate),
                "p_value": p_value,
                "p_noninferior": p_ni,
                "p_beyond_margin": p_beyond,
                "p_worse": p_worse,
                "alpha": gate.alpha,
            }
        )
        row.reason = describe(row, " pts" if row.kind == "accuracy" else "%")
        if position in chances:
            row.chance, row.p_above_chance = chances[position]
        rows[position] = row
    rows = [set_aside.get(position, row) for position, row in enumerate(rows)]
    for paired in built:
        groups = base[paired.name].groups if paired.name in base else None
        if paired.kind == "accuracy" and groups:
            counts = group_counts(groups, base[paired.name].items, tuned[paired.name].items)
            rows[paired.position] = rows[paired.position].model_copy(update={"groups": counts})
    return [row for row in rows if row is not None]
