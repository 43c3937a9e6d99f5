"""The forgetting report: markdown table and bar chart built from a gate result."""

from __future__ import annotations

from pathlib import Path

import pytest

from tasks.lib.config import GateConfig
from tasks.lib.gate import GateResult, decide
from tasks.lib.report import forgetting_bar_chart, forgetting_markdown

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
BASE = {
    "hellaswag": {"acc_norm": 0.41, "acc_norm_stderr": 0.02},
    "arc_easy": {"acc_norm": 0.60},
    "wikitext": {"word_perplexity": 20.0},
}


def _result(tuned: dict, task: tuple[float | None, float | None] = (0.5, 0.8)) -> GateResult:
    return decide(BASE, tuned, GateConfig(), task_base=task[0], task_tuned=task[1], task_metric="accuracy")


@pytest.fixture
def failing() -> GateResult:
    tuned = {
        "hellaswag": {"acc_norm": 0.30, "acc_norm_stderr": 0.02},
        "arc_easy": {"acc_norm": 0.61},
        "wikitext": {"word_perplexity": 21.0},
    }
    return _result(tuned)


def _table_rows(markdown: str) -> dict[str, list[str]]:
    """{first cell: cells} for the forgetting table's body rows."""
    rows = {}
    for line in markdown.splitlines():
        if line.startswith("| ") and not line.startswith("| benchmark"):
            cells = [cell.strip() for cell in line.strip("|").split(" | ")]
            rows[cells[0]] = cells
    return rows


def test_table_lists_each_benchmark_with_scores_delta_and_verdict(failing: GateResult) -> None:
    rows = _table_rows(forgetting_markdown(failing))
    assert set(rows) >= {"hellaswag", "arc_easy", "wikitext", "**target task**"}
    _, metric, base, tuned, delta, allowed, verdict = rows["hellaswag"]
    assert metric == "acc_norm"
    assert base == "41.00 ± 2.00"
    assert tuned == "30.00 ± 2.00"
    assert delta == "-11.00 pts"
    assert allowed == "≥ 38.00"
    assert verdict.startswith("❌ FAIL")
    assert rows["arc_easy"][4] == "+1.00 pts"
    assert rows["arc_easy"][6].startswith("✅ pass")
    assert rows["wikitext"][2:5] == ["20.00", "21.00", "+1.00 (+5.0%)"]
    assert rows["wikitext"][5] == "≤ 22.00"
    assert rows["wikitext"][6].startswith("✅ pass")
    assert rows["**target task**"][2:4] == ["50.00", "80.00"]


def test_overall_verdict_names_the_failures(failing: GateResult) -> None:
    markdown = forgetting_markdown(failing)
    assert "**Overall: FAIL**" in markdown
    assert "1 check(s) failed: hellaswag." in markdown
    assert "PASS" not in markdown.split("**Overall")[1]


def test_passing_result_says_pass() -> None:
    markdown = forgetting_markdown(_result(BASE))
    assert "**Overall: PASS**" in markdown
    assert "❌" not in markdown


def test_limits_are_stated() -> None:
    markdown = forgetting_markdown(_result(BASE))
    assert "at most 3 points" in markdown
    assert "at most 10%" in markdown


def test_missing_score_shows_na() -> None:
    result = _result({"hellaswag": {"acc_norm": 0.4}, "arc_easy": {"acc_norm": 0.6}})
    rows = _table_rows(forgetting_markdown(result))
    assert rows["wikitext"][3] == "n/a"
    assert rows["wikitext"][4] == "n/a"
    assert rows["wikitext"][6].startswith("❌ FAIL")


def test_task_metrics_table(failing: GateResult) -> None:
    markdown = forgetting_markdown(
        failing, task_metrics={"base": {"accuracy": 0.5, "f1": 0.4}, "tuned": {"accuracy": 0.8, "f1": 0.7}}
    )
    assert "### Target task metrics" in markdown
    assert "| accuracy | 0.50 | 0.80 | 0.30 |" in markdown
    assert "| f1 | 0.40 | 0.70 | 0.30 |" in markdown


def test_pipes_in_reasons_are_escaped(failing: GateResult) -> None:
    failing.rows[0].reason = "a | b"
    line = next(line for line in forgetting_markdown(failing).splitlines() if line.startswith("| hellaswag"))
    assert "a \\| b" in line
    assert line.count(" | ") == 6


@pytest.mark.parametrize("which", ["failing", "accuracy only", "no task scores"])
def test_bar_chart_is_a_png(tmp_path: Path, failing: GateResult, which: str) -> None:
    if which == "failing":
        result = failing
    elif which == "accuracy only":
        result = decide({"piqa": {"acc_norm": 0.6}}, {"piqa": {"acc_norm": 0.7}}, GateConfig(), 0.5, 0.6)
    else:
        result = _result(BASE, task=(None, None))
    path = forgetting_bar_chart(result, tmp_path / "nested" / "forgetting.png")
    assert path == tmp_path / "nested" / "forgetting.png"
    data = path.read_bytes()
    assert data.startswith(PNG_MAGIC)
    assert len(data) > 1000
