"""The promotion gate: is the tuned model shown better on its task, and shown not to have forgotten?

Base and tuned are scored on the same items, so every comparison is paired (tasks/lib/stats.py):

- Accuracy benchmarks: per-item right/wrong. Non-inferiority with margin `gate.max_accuracy_drop` (points), and
  forgetting beyond that margin: the two tails of Tango's score test at the margin. A drop of any size (against no
  change): the exact one-sided McNemar test.
- Perplexity benchmarks: per-document log-likelihoods; log(ppl_tuned / ppl_base) as a ratio estimator over the
  documents, Student's t with n - 1 degrees of freedom; margin `gate.max_perplexity_increase` (relative). Fewer
  than MIN_PERPLEXITY_DOCUMENTS documents decide nothing: such a row is at most inconclusive.
- Across benchmarks, each family of p-values is Holm-adjusted, so its family-wise error is `gate.alpha`.
- Target task: exact one-sided McNemar superiority test of tuned over base on per-item correctness, at alpha.

Each row gets a verdict:
- pass: non-inferiority shown (for the task: superiority shown);
- fail: forgetting beyond the margin shown (H0 "the drop is smaller than the margin" rejected; for the task: no
  gain seen);
- drop: a drop is shown against no change (exact McNemar, Holm), but neither beyond the margin nor within it:
  not called forgetting beyond the margin, and never promoted (whatever `gate.on_inconclusive` says);
- inconclusive: the items cannot tell; the row says the drop it could detect with 80% power and how many
  items would settle it. `gate.on_inconclusive` decides whether that blocks promotion (default: it does);
- uninformative: a multiple-choice benchmark the base model is not shown to do better than chance on (exact
  binomial test at alpha on the base alone: its items, or in the group-sequential design the first look's block,
  fixed before anything is compared): it cannot show forgetting, so it neither passes nor fails, leaves the Holm family,
  and does not decide the overall verdict.

Each benchmark's margin is `gate.max_accuracy_drop` / `gate.max_perplexity_increase` unless
`forgetting.settings.<name>.margin` sets its own; the metric is the one the scores say they were judged on.

Each benchmark's interval is two-sided at 1 - 2*alpha/k (its lower end is the one-sided bound at alpha/k), so
jointly they hold with probability at least 1 - 2*alpha (Bonferroni); the verdicts use Holm, which decides at
least as often.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel
from scipy.stats import norm

from tasks.lib import sequential, stats
from tasks.lib.benchmark_names import HEADLINE, HIGHER_IS_BETTER
from tasks.lib.config import GateConfig
from tasks.lib.gate_result import VERDICT_CODE, GateResult, GateRow, GroupCounts, Verdict


def _passes(verdict: Verdict, gate: GateConfig) -> bool:
    return verdict in ("pass", "uninformative") or (verdict == "inconclusive" and gate.on_inconclusive == "pass")


def _unscorable(name: str, metric: str, kind: str, why: str) -> GateRow:
    return GateRow(name=name, metric=metric, kind=kind, verdict="fail", passed=False, reason=why)


def _paired_items(
    base_scores: dict | None, tuned_scores: dict | None, tuned_may_stop_early: bool = False
) -> tuple[list, list] | str:
    """The per-item results of both sides on the same documents, or why they cannot be paired. Group-sequential:
    the tuned model is scored on the items of the looks it needed, the base on all."""
    base_items = (base_scores or {}).get("items")
    tuned_items = (tuned_scores or {}).get("items")
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


def _paired_fields(pairs: stats.BinaryPairs, low: float, high: float) -> dict:
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
        **_paired_fields(pairs, *interval),
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
    tail, stopping at the first boundary crossed (tasks/lib/sequential.py)."""
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


MIN_PERPLEXITY_DOCUMENTS = 10  # below this a spread estimated from the documents themselves is not trusted


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


def _stopped(row: GateRow) -> str:
    """Why a group-sequential row stopped where it did; empty for a fixed-design row."""
    if row.looks is None:
        return ""
    unit = "documents" if row.kind == "perplexity" else "items"
    where = f"look {row.looks} of {row.max_looks}, {row.n} of {row.max_items} {unit}"
    if row.verdict in ("pass", "fail"):
        return f" [stopped at {where}: boundary crossed]"
    return f" [{where}: no boundary crossed]"


def _describe(row: GateRow, unit: str) -> str:
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


def _kind(metric: str, items: list) -> Literal["accuracy", "perplexity"] | None:
    """How a metric is compared: right/wrong per item, or [log-likelihood, weight] per document; None: neither."""
    if all(isinstance(item, list | tuple) and len(item) == 2 for item in items):
        return "perplexity" if not HIGHER_IS_BETTER.get(metric, True) else None
    if all(item in (0, 1, True, False) for item in items):
        return "accuracy"
    return None


def _chance_evidence(base: dict[str, Any], looks: sequential.Looks | None) -> tuple[int, int, float] | None:
    """(base items right, items, chance accuracy) the "above chance" test reads, for a multiple-choice row: the base
    alone, on all its items in the fixed design and on the first look's block in the group-sequential one (read
    before any look, so which rows form the family never changes between looks); None: no chance level."""
    items, choices = base["items"], base.get("choices")
    keys = list(looks.order[: looks.every]) if looks else list(items)
    keys = [key for key in keys if key in items]
    if choices:
        chance = sum(1.0 / choices[key] for key in keys) / len(keys) if keys else None
    else:
        chance = base.get("chance")
    if not chance or not keys:
        return None
    return int(sum(bool(items[key]) for key in keys)), len(keys), chance


def _uninformative(
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
        **_paired_fields(pairs, low, high),
        chance=100.0 * chance,
        p_value=p,
        p_above_chance=p,
        alpha=gate.alpha,
    )


def _group_counts(groups: dict[str, str] | None, base_items: dict, tuned_items: dict) -> list[GroupCounts]:
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


def _benchmark_rows(
    base: dict,
    tuned: dict,
    gate: GateConfig,
    margins: Mapping[str, float],
    looks: Mapping[str, sequential.Looks] | None = None,
) -> list[GateRow]:
    sequential_mode = looks is not None
    looks = looks or {}
    names = list(base) + [name for name in tuned if name not in base]
    rows: list[GateRow | None] = []
    built: list[tuple[int, str, Literal["accuracy", "perplexity"], str, list, list]] = []
    for name in names:
        scores = base.get(name) or tuned.get(name) or {}
        metric = scores.get("metric") or HEADLINE.get(name)
        if metric is None:
            rows.append(_unscorable(name, "?", "accuracy", f"unknown benchmark {name!r}"))
            continue
        paired = _paired_items(base.get(name), tuned.get(name), name in looks)
        if isinstance(paired, str):
            kind = "perplexity" if not HIGHER_IS_BETTER.get(metric, True) else "accuracy"
            rows.append(_unscorable(name, metric, kind, paired))
            continue
        kind = _kind(metric, paired[0] + paired[1])
        if kind is None:
            why = f"{metric} is neither right/wrong per item nor a perplexity: no paired test (set its metric)"
            rows.append(_unscorable(name, metric, "accuracy", why))
            continue
        built.append((len(rows), name, kind, metric, *paired))
        rows.append(None)
    # Rows the base cannot do leave the family before anything is compared (they depend on the base alone).
    informative, set_aside, chances = [], {}, {}
    for position, name, kind, metric, base_items, tuned_items in built:
        evidence = _chance_evidence(base.get(name) or {"items": {}}, looks.get(name)) if kind == "accuracy" else None
        if evidence:
            correct, n, chance = evidence
            p_chance = stats.p_above_chance(correct, n, chance)
            if p_chance >= gate.alpha:
                set_aside[position] = _uninformative(name, metric, base_items, tuned_items, evidence, p_chance, gate)
                continue
            chances[position] = (100.0 * chance, p_chance)
        informative.append((position, name, kind, metric, base_items, tuned_items))
    k = max(len(informative), 1)
    pending: list[tuple[int, _Pending]] = []
    for position, name, kind, metric, base_items, tuned_items in informative:
        if name in looks:
            if kind == "accuracy":
                margin, pending_row = margins.get(name, gate.max_accuracy_drop), _sequential_accuracy_pending
            else:
                margin, pending_row = margins.get(name, gate.max_perplexity_increase), _sequential_perplexity_pending
            item = pending_row(name, metric, base[name]["items"], tuned[name]["items"], looks[name], gate, k, margin)
            if isinstance(item, str):
                rows[position] = _unscorable(name, metric, kind, item)
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
                "passed": _passes(verdict, gate),
                "p_value": p_value,
                "p_noninferior": p_ni,
                "p_beyond_margin": p_beyond,
                "p_worse": p_worse,
                "alpha": gate.alpha,
            }
        )
        row.reason = _describe(row, " pts" if row.kind == "accuracy" else "%")
        if position in chances:
            row.chance, row.p_above_chance = chances[position]
        rows[position] = row
    rows = [set_aside.get(position, row) for position, row in enumerate(rows)]
    for position, name, kind, _metric, _base_items, _tuned_items in built:
        groups = (base.get(name) or {}).get("groups")
        if kind == "accuracy" and groups:
            counts = _group_counts(groups, base[name]["items"], tuned[name]["items"])
            rows[position] = rows[position].model_copy(update={"groups": counts})
    return [row for row in rows if row is not None]


def _task_verdict(change: str, delta: float, p_better: float, p_name: str, gate: GateConfig) -> tuple[Verdict, str]:
    """The task row's verdict and reason from its superiority test (either kind of per-item result)."""
    if p_better < gate.alpha:
        verdict, reason = "pass", f"{change}: better than base ({p_name}={p_better:.2g})"
    elif delta <= 0:
        verdict, reason = "fail", f"{change}: no gain over base"
    else:
        verdict, reason = "inconclusive", f"{change}: a gain the items cannot confirm ({p_name}={p_better:.2g})"
    if not gate.require_task_improvement:
        verdict, reason = "pass", f"{reason} (improvement not required)"
    return verdict, reason


def task_row(
    base_scores: Sequence[float] | None, tuned_scores: Sequence[float] | None, gate: GateConfig, metric: str = "correct"
) -> GateRow:
    """Tuned against base on the same test items: per-item right/wrong (exact McNemar), or graded per-item scores
    such as ROUGE-L (a test of the mean difference by betting, valid for any shape of the differences)."""
    if not base_scores or not tuned_scores:
        if not gate.require_task_improvement:
            return GateRow(name="task", metric=metric, kind="task", verdict="pass", passed=True, reason="not required")
        return _unscorable("task", metric, "task", "no per-item task results for base and tuned")
    if not (stats.is_binary(base_scores) and stats.is_binary(tuned_scores)):
        return _graded_task_row(base_scores, tuned_scores, gate, metric)
    pairs = stats.count_pairs(base_scores, tuned_scores)
    low, high = stats.difference_interval(pairs, 1.0 - 2.0 * gate.alpha)
    p_better = stats.p_better(pairs)
    sd = stats.per_item_sd(pairs)
    change = f"{100 * pairs.delta:+.1f} pts [{100 * low:+.1f}, {100 * high:+.1f}] ({pairs.gains} gained, "
    change += f"{pairs.losses} lost of {pairs.n})"
    verdict, reason = _task_verdict(change, pairs.delta, p_better, "p", gate)
    needed = stats.items_needed(sd, pairs.delta, gate.alpha) if pairs.delta > 0 else None
    return GateRow(
        name="task",
        metric=metric,
        kind="task",
        verdict=verdict,
        passed=_passes(verdict, gate),
        reason=reason,
        **_paired_fields(pairs, low, high),
        p_value=p_better,
        p_better=p_better,
        detectable_drop=100.0 * stats.detectable_margin(sd, pairs.n, gate.alpha),
        items_needed=needed,
    )


def _graded_task_row(base: Sequence[float], tuned: Sequence[float], gate: GateConfig, metric: str) -> GateRow:
    paired = stats.PairedScores(tuple(base), tuple(tuned))
    low, high = paired.interval(gate.alpha)
    p_better = paired.p_better(gate.alpha)
    change = f"{100 * paired.delta:+.1f} pts [{100 * low:+.1f}, {100 * high:+.1f}] mean {metric} ({paired.gains} items "
    change += f"better, {paired.losses} worse of {paired.n})"
    verdict, reason = _task_verdict(change, paired.delta, p_better, "betting p", gate)
    sd = max(paired.sd, 0.05)
    return GateRow(
        name="task",
        metric=metric,
        kind="task",
        verdict=verdict,
        passed=_passes(verdict, gate),
        reason=reason,
        n=paired.n,
        base=100.0 * float(np.mean(base)),
        tuned=100.0 * float(np.mean(tuned)),
        delta=100.0 * paired.delta,
        ci_low=100.0 * low,
        ci_high=100.0 * high,
        gains=paired.gains,
        losses=paired.losses,
        p_value=p_better,
        p_better=p_better,
        detectable_drop=100.0 * stats.detectable_margin(sd, paired.n, gate.alpha),
        items_needed=stats.items_needed(sd, paired.delta, gate.alpha) if paired.delta > 0 else None,
    )


def overall_verdict(rows: Sequence[GateRow]) -> Verdict:
    """The worst verdict among the rows that can decide (an uninformative row cannot)."""
    deciding = [row.verdict for row in rows if row.verdict != "uninformative"]
    return min(deciding, key=VERDICT_CODE.__getitem__, default="pass")


def decide(
    base: dict[str, dict[str, Any]],
    tuned: dict[str, dict[str, Any]],
    gate: GateConfig,
    task: GateRow | None = None,
    margins: Mapping[str, float] | None = None,
    looks: Mapping[str, sequential.Looks] | None = None,
) -> GateResult:
    """Compare base and tuned benchmark results ({name: {metric: value, "items": {doc: result}}}); with the task row
    (`task_row`, decided once by the evaluation; None: no task results) the overall verdict.

    `margins`: a benchmark's own margin (accuracy points, or a relative perplexity rise) instead of the gate's.
    `looks`: group-sequential (every row Bonferroni at alpha/k): the rows named there are looked at after every block
    of their items in the given order and stop at the first boundary crossed; other rows are judged once. None: the
    fixed design, Holm across the rows.
    """
    rows = _benchmark_rows(base, tuned, gate, margins or {}, looks)
    task = task or task_row(None, None, gate, "correct")
    verdict = overall_verdict([*rows, task])
    return GateResult(
        verdict=verdict,
        passed=all(row.passed for row in [*rows, task]),
        rows=rows,
        task=task,
        max_accuracy_drop=gate.max_accuracy_drop,
        max_perplexity_increase=gate.max_perplexity_increase,
        alpha=gate.alpha,
        on_inconclusive=gate.on_inconclusive,
        decided_by=[row.name for row in [*rows, task] if row.verdict == verdict],
        sequential=looks is not None,
    )
