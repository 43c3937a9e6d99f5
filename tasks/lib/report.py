"""The forgetting report: a markdown table of the gate's verdicts and a base-vs-tuned bar chart."""

from __future__ import annotations

from pathlib import Path

from tasks.lib.gate import GateResult, GateRow


def _num(value: float | None, digits: int = 2) -> str:
    if value is None:
        return "n/a"
    if abs(value) >= 1e5:
        return f"{value:.3g}"
    return f"{value:.{digits}f}"


def _score(value: float | None, stderr: float | None) -> str:
    return _num(value) if stderr is None or value is None else f"{_num(value)} ± {_num(stderr)}"


def _allowed(row: GateRow) -> str:
    if row.allowed is None:
        return "—"
    if row.kind == "perplexity":
        return f"≤ {_num(row.allowed)}"
    return f"> {_num(row.allowed)}" if row.kind == "task" else f"≥ {_num(row.allowed)}"


def _delta(row: GateRow) -> str:
    if row.delta is None:
        return "n/a"
    if row.kind == "perplexity" and row.base:
        return f"{row.delta:+.2f} ({row.delta / row.base * 100:+.1f}%)"
    return f"{row.delta:+.2f}" + (" pts" if row.kind == "accuracy" else "")


def _line(row: GateRow, label: str) -> str:
    verdict = "✅ pass" if row.passed else "❌ FAIL"
    cells = [
        label,
        row.metric,
        _score(row.base, row.base_stderr),
        _score(row.tuned, row.tuned_stderr),
        _delta(row),
        _allowed(row),
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
            lines.append(
                f"| {metric} | {_num(b) if isinstance(b, int | float) else b} | "
                f"{_num(t) if isinstance(t, int | float) else t} | {_num(t - b) if numeric else 'n/a'} |"
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
    Accuracies are in points (0-100); perplexities as measured.
    """
    lines = [
        "## Catastrophic-forgetting check",
        "",
        f"Limits: accuracy may drop at most {result.max_accuracy_drop:g} points; "
        f"perplexity may rise at most {result.max_perplexity_increase * 100:g}%.",
        "",
        "| benchmark | metric | base | tuned | delta | allowed | verdict |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [_line(row, row.name) for row in result.rows]
    lines.append(_line(result.task, "**target task**"))
    if task_metrics:
        lines += _task_metrics_table(task_metrics)
    failed = result.failures()
    lines += [
        "",
        "**Overall: PASS** — the tuned model may be promoted."
        if result.passed
        else f"**Overall: FAIL** — {len(failed)} check(s) failed: " + ", ".join(row.name for row in failed) + ".",
        "",
    ]
    return "\n".join(lines)


def _bars(axis, rows: list[GateRow], ylabel: str, log: bool = False) -> None:
    import numpy as np

    x = np.arange(len(rows))
    width = 0.38
    base = [row.base if row.base is not None else 0.0 for row in rows]
    tuned = [row.tuned if row.tuned is not None else 0.0 for row in rows]
    base_err = [row.base_stderr or 0.0 for row in rows]
    tuned_err = [row.tuned_stderr or 0.0 for row in rows]
    axis.bar(x - width / 2, base, width, yerr=base_err, label="base", color="#8c8c8c", capsize=3)
    bars = axis.bar(x + width / 2, tuned, width, yerr=tuned_err, label="tuned", color="#3b75af", capsize=3)
    for bar, row in zip(bars, rows, strict=True):
        if not row.passed:
            bar.set_color("#c0392b")
    for index, row in enumerate(rows):
        if row.allowed is not None:
            axis.hlines(row.allowed, index - 0.45, index + 0.45, colors="black", linestyles="dashed", linewidth=1)
    axis.set_xticks(x, [f"{row.name}\n{row.metric}" for row in rows], fontsize=8)
    axis.set_ylabel(ylabel)
    if log:
        axis.set_yscale("log")
    axis.legend(fontsize=8)


def forgetting_bar_chart(result: GateResult, path: Path) -> Path:
    """PNG: base vs tuned per benchmark (accuracies in points; perplexities on their own log axis).

    Dashed lines mark the gate's bound; failing bars are red.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    accuracy = [row for row in result.rows if row.kind == "accuracy"]
    if result.task.base is not None and result.task.tuned is not None:
        accuracy.append(result.task)
    perplexity = [row for row in result.rows if row.kind == "perplexity"]
    panels = [
        (rows, label, log)
        for rows, label, log in (
            (accuracy, "score (points)", False),
            (perplexity, "perplexity (lower is better, log)", True),
        )
        if rows
    ]
    figure, axes = plt.subplots(
        1,
        max(len(panels), 1),
        figsize=(4 + 1.6 * max(len(accuracy), 1) + 1.8 * len(perplexity), 4.5),
        squeeze=False,
        gridspec_kw={"width_ratios": [max(len(rows), 1) for rows, _, _ in panels] or [1]},
    )
    for axis, (rows, label, log) in zip(axes[0], panels, strict=False):
        _bars(axis, rows, label, log)
    figure.suptitle(
        f"Forgetting check: {'PASS' if result.passed else 'FAIL'}", color="#1e8449" if result.passed else "#c0392b"
    )
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png", dpi=110)
    plt.close(figure)
    return path
