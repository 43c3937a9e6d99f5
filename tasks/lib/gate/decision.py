"""The promotion gate: is the tuned model shown better on its task, and shown not to have forgotten?

Base and tuned are scored on the same items, so every comparison is paired (tasks/lib/gate/stats.py):

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

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from tasks.lib.config import GateConfig
from tasks.lib.gate import sequential, stats
from tasks.lib.gate.benchmark_rows import benchmark_rows
from tasks.lib.gate.benchmark_scores import BenchmarkScores, as_benchmark_scores
from tasks.lib.gate.gate_result import VERDICT_CODE, GateResult, GateRow, Verdict
from tasks.lib.gate.row_findings import paired_fields, passes, unscorable


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
        return unscorable("task", metric, "task", "no per-item task results for base and tuned")
    if not (stats.is_binary(base_scores) and stats.is_binary(tuned_scores)):
        return _graded_task_row(base_scores, tuned_scores, gate, metric)
    pairs = stats.count_pairs(base_scores, tuned_scores)
    low, high = stats.difference_interval(pairs, 1.0 - 2.0 * gate.alpha)
    p_better = stats.p_better(pairs)
    sd = stats.per_item_sd(pairs)
    change = f"{100 * pairs.delta:+.1f} pts [{100 * low:+.1f}, {100 * high:+.1f}] ({pairs.gains} gained, "
    change += f"{pairs.losses} lost of {pairs.n})"
    return _decided_task_row(
        change, pairs.delta, p_better, "p", sd, pairs.n, gate, metric, paired_fields(pairs, low, high)
    )


def _graded_task_row(base: Sequence[float], tuned: Sequence[float], gate: GateConfig, metric: str) -> GateRow:
    paired = stats.PairedScores(tuple(base), tuple(tuned))
    low, high = paired.interval(gate.alpha)
    p_better = paired.p_better(gate.alpha)
    change = f"{100 * paired.delta:+.1f} pts [{100 * low:+.1f}, {100 * high:+.1f}] mean {metric} ({paired.gains} items "
    change += f"better, {paired.losses} worse of {paired.n})"
    fields = {
        "n": paired.n,
        "base": 100.0 * float(np.mean(base)),
        "tuned": 100.0 * float(np.mean(tuned)),
        "delta": 100.0 * paired.delta,
        "ci_low": 100.0 * low,
        "ci_high": 100.0 * high,
        "gains": paired.gains,
        "losses": paired.losses,
    }
    return _decided_task_row(
        change, paired.delta, p_better, "betting p", max(paired.sd, 0.05), paired.n, gate, metric, fields
    )


def _decided_task_row(
    change: str,
    delta: float,
    p_better: float,
    p_name: str,
    sd: float,
    n: int,
    gate: GateConfig,
    metric: str,
    paired: dict,
) -> GateRow:
    """The task row from its test: `delta` as a fraction, `sd` the per-item spread, `paired` the row's counts."""
    verdict, reason = _task_verdict(change, delta, p_better, p_name, gate)
    return GateRow(
        name="task",
        metric=metric,
        kind="task",
        verdict=verdict,
        passed=passes(verdict, gate),
        reason=reason,
        **paired,
        p_value=p_better,
        p_better=p_better,
        detectable_drop=100.0 * stats.detectable_margin(sd, n, gate.alpha),
        items_needed=stats.items_needed(sd, delta, gate.alpha) if delta > 0 else None,
    )


def overall_verdict(rows: Sequence[GateRow]) -> Verdict:
    """The worst verdict among the rows that can decide (an uninformative row cannot)."""
    deciding = [row.verdict for row in rows if row.verdict != "uninformative"]
    return min(deciding, key=VERDICT_CODE.__getitem__, default="pass")


def decide(
    base: Mapping[str, BenchmarkScores | Mapping[str, Any]],
    tuned: Mapping[str, BenchmarkScores | Mapping[str, Any]],
    gate: GateConfig,
    task: GateRow | None = None,
    margins: Mapping[str, float] | None = None,
    looks: Mapping[str, sequential.Looks] | None = None,
) -> GateResult:
    """Compare base and tuned benchmark results ({name: BenchmarkScores}, or the same as plain data); with the task row
    (`task_row`, decided once by the evaluation; None: no task results) the overall verdict.

    `margins`: a benchmark's own margin (accuracy points, or a relative perplexity rise) instead of the gate's.
    `looks`: group-sequential (every row Bonferroni at alpha/k): the rows named there are looked at after every block
    of their items in the given order and stop at the first boundary crossed; other rows are judged once. None: the
    fixed design, Holm across the rows.
    """
    rows = benchmark_rows(as_benchmark_scores(base), as_benchmark_scores(tuned), gate, margins or {}, looks)
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
