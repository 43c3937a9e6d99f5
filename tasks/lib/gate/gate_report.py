"""The forgetting report: a markdown table of the paired verdicts and a plot of each delta with its interval."""

from __future__ import annotations

from pathlib import Path

from tasks.lib.core.plots import pyplot, save_png
from tasks.lib.gate.gate_result import GateResult, GateRow


def _num(value: float | None, digits: int = 2) -> str:
    if value is None:
        return "n/a"
    if abs(value) >= 1e5:
        return f"{value:.3g}"
    return f"{value:.{digits}f}"


_MARK = {
    "pass": "✅ pass",
    "fail": "❌ fail",
    "drop": "⚠️ drop",
    "inconclusive": "❔ inconclusive",
    "uninformative": "➖ uninformative",
}


def _p(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2g}"


def _line(row: GateRow, label: str) -> str:
    unit = "%" if row.kind == "perplexity" else " pts"
    interval = "n/a" if row.ci_low is None else f"[{row.ci_low:+.2f}, {row.ci_high:+.2f}]"
    discordant = "n/a" if row.gains is None else f"+{row.gains} / -{row.losses}"
    counts_as_pass = row.passed and row.verdict not in ("pass", "uninformative")
    verdict = _MARK[row.verdict] + (" (counts as pass)" if counts_as_pass else "")
    cells = [
        label,
        row.metric,
        str(row.n),
        _num(row.base),
        _num(row.tuned),
        "n/a" if row.delta is None else f"{row.delta:+.2f}{unit}",
        interval,
        _p(row.p_value),
        discordant,
        "n/a" if row.detectable_drop is None else f"{row.detectable_drop:.2f}{unit}",
        f"{verdict}: {row.reason}",
    ]
    return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"


def _task_metrics_table(task_metrics: dict) -> list[str]:
    lines = ["", "### Target task metrics", ""]
    if isinstance(task_metrics.get("base"), dict) or isinstance(task_metrics.get("tuned"), dict):
        base, tuned = task_metrics.get("base") or {}, task_metrics.get("tuned") or {}
        lines += ["| metric | base | tuned | delta |", "|---|---|---|---|"]
        for metric in list(base) + [m for m in tuned if m not in base]:
            b, t = base.get(metric), tuned.get(metric)
            numeric = isinstance(b, int | float) and isinstance(t, int | float)
            lines.append(  # 4 decimals, as the evaluation's own table: 0.845 read 0.84 here and 0.8450 there
                f"| {metric} | {_num(b, 4) if isinstance(b, int | float) else b} | "
                f"{_num(t, 4) if isinstance(t, int | float) else t} | {f'{t - b:+.4f}' if numeric else 'n/a'} |"
            )
    else:
        lines += ["| metric | value |", "|---|---|"]
        lines += [
            f"| {metric} | {_num(value) if isinstance(value, int | float) else value} |"
            for metric, value in task_metrics.items()
        ]
    return lines


def forgetting_markdown(result: GateResult, task_metrics: dict | None = None) -> str:
    """Markdown: one row per benchmark and the task row, then the overall verdict.

    task_metrics, optional: {"base": {metric: v}, "tuned": {metric: v}} or a flat {metric: v}.
    Accuracies are in points (0-100); perplexities as measured, their change in percent.
    """
    k = max(len([row for row in result.rows if row.verdict != "uninformative"]), 1)
    if not result.sequential:
        design = (
            f"Family-wise alpha {result.alpha:g} across {k} benchmarks (Holm); each interval is "
            f"{100 * (1 - 2 * result.alpha / k):.1f}% (jointly at least {100 * (1 - 2 * result.alpha):.0f}%, "
            "Bonferroni)"
        )
    else:
        design = (
            "Group-sequential: each benchmark drawn at random is looked at after every block of items (documents) "
            "and stops at the first boundary crossed (O'Brien-Fleming-type alpha spending, alpha "
            f"{result.alpha / k:.2g} a row: Bonferroni, family-wise {result.alpha:g} across {k} benchmarks); n is "
            "what was scored, the verdict says at which look and why; each interval is the repeated confidence "
            f"interval at the look it stopped at (each at least {100 * (1 - 2 * result.alpha / k):.1f}%)"
        )
    lines = [
        "## Catastrophic-forgetting check",
        "",
        f"Paired on the same items. Margins: accuracy may drop at most {result.max_accuracy_drop:g} points, "
        f"perplexity may rise at most {result.max_perplexity_increase * 100:g}%. {design}; the task interval is "
        f"{100 * (1 - 2 * result.alpha):.0f}%. p: non-inferiority for a pass or an inconclusive row, forgetting "
        f"beyond the margin for a fail, a drop against no change for a drop, superiority for the task. "
        f"Detectable: the smallest margin these items can show with 80% power. Uninformative: the base is not "
        f"shown above chance, so the row cannot show forgetting; it neither passes nor fails. A benchmark's own "
        f"margin (`forgetting.settings`) is in its row. "
        f"Inconclusive counts as **{result.on_inconclusive}** (`gate.on_inconclusive`).",
        "",
        "| benchmark | metric | n | base | tuned | delta | interval | p | gained / lost | detectable | verdict |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    lines += [_line(row, row.name) for row in result.rows]
    lines.append(_line(result.task, "**target task**"))
    if task_metrics:
        lines += _task_metrics_table(task_metrics)
    failed, unsure = result.failures(), result.inconclusive()
    if result.passed:
        summary = f"**Overall: {result.verdict.upper()}** — the tuned model may be promoted."
        if unsure:
            summary += f" Inconclusive (counted as pass): {', '.join(row.name for row in unsure)}."
    else:
        summary = (
            f"**Overall: {result.verdict.upper()}** — not promotable: "
            + ", ".join(f"{row.name} ({row.verdict})" for row in failed)
            + "."
        )
    if result.decided_by:
        summary += f" Decided by: {', '.join(result.decided_by)}."
    aside = [row.name for row in result.rows if row.verdict == "uninformative"]
    if aside:
        summary += f" Uninformative (not counted): {', '.join(aside)}."
    lines += ["", summary, ""]
    lines += _group_tables(result.rows)
    if result.note:
        lines += [result.note, ""]
    return "\n".join(lines)


def _group_tables(rows: list[GateRow]) -> list[str]:
    """Per-subject paired counts of the rows made of subjects (MMLU); they sum to the row's."""
    lines = []
    for row in rows:
        if not row.groups:
            continue
        lines += [
            f"### {row.name} by subject ({len(row.groups)} subjects, {row.n} items)",
            "",
            "| subject | n | base | tuned | gained / lost |",
            "|---|---|---|---|---|",
        ]
        lines += [
            f"| {group.name} | {group.n} | {group.base:.1f} | {group.tuned:.1f} | +{group.gains} / -{group.losses} |"
            for group in row.groups
        ]
        lines.append("")
    return lines


def forgetting_delta_chart(result: GateResult, path: Path) -> Path:
    """PNG: each row's delta with its interval and the margin (accuracy in points, perplexity in percent)."""
    plt = pyplot()
    rows = [row for row in [*result.rows, result.task] if row.delta is not None]
    colours = {
        "pass": "#1e8449",
        "fail": "#c0392b",
        "drop": "#ca6f1e",
        "inconclusive": "#d68910",
        "uninformative": "#7f8c8d",
    }
    figure, axis = plt.subplots(figsize=(7, 1.2 + 0.55 * max(len(rows), 1)))
    for index, row in enumerate(rows):
        # Perplexity rises are forgetting: plotted as a negative change so "left is worse" for every row.
        sign = -1.0 if row.kind == "perplexity" else 1.0
        low, high = sorted((sign * (row.ci_low or 0.0), sign * (row.ci_high or 0.0)))
        axis.plot([low, high], [index, index], color=colours[row.verdict], linewidth=3)
        axis.plot(sign * row.delta, index, "o", color="black", markersize=4)
        if row.margin is not None:
            axis.plot(-row.margin, index, "|", color="black", markersize=14)
    axis.axvline(0.0, color="grey", linewidth=0.8)
    axis.set_yticks(
        range(len(rows)),
        [f"{row.name} ({'% ppl, sign flipped' if row.kind == 'perplexity' else 'pts'})" for row in rows],
        fontsize=8,
    )
    axis.invert_yaxis()
    axis.set_xlabel("tuned - base (left is worse); | marks the margin; colour = verdict")
    axis.set_title(f"Gate: {result.verdict}", color=colours[result.verdict])
    return save_png(figure, path, dpi=110)
