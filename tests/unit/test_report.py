"""The forgetting report: markdown table and delta plot built from a gate result."""

from __future__ import annotations

from pathlib import Path

import pytest

from tasks.lib.config import GateConfig
from tasks.lib.gate.decision import decide, task_row
from tasks.lib.gate.gate_report import forgetting_delta_chart, forgetting_markdown
from tasks.lib.gate.gate_result import GateResult

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _items(correct: list[int]) -> dict:
    return {"acc_norm": sum(correct) / len(correct), "items": {str(i): c for i, c in enumerate(correct)}}


def _docs(scale: float) -> dict:
    return {"word_perplexity": 1.0, "items": {str(i): [-1000.0 * scale - i, 250.0] for i in range(12)}}


BASE = {"hellaswag": _items([1] * 300 + [0] * 300), "arc_easy": _items([1, 0] * 20), "wikitext": _docs(1.0)}
TASK = ([0] * 60 + [1] * 40, [1] * 100)


@pytest.fixture
def failing() -> GateResult:
    tuned = {
        "hellaswag": _items([0] * 100 + [1] * 200 + [0] * 300),  # -16.7 points
        "arc_easy": _items([0, 1] * 20),  # every answer changed, net zero
        "wikitext": _docs(1.0),
    }
    return decide(BASE, tuned, GateConfig(), task_row(*TASK, GateConfig()))


def _table_rows(markdown: str) -> dict[str, list[str]]:
    """{first cell: cells} for the forgetting table's body rows."""
    rows = {}
    for line in markdown.splitlines():
        if line.startswith("| ") and not line.startswith("| benchmark"):
            cells = [cell.strip() for cell in line.strip("|").split(" | ")]
            rows[cells[0]] = cells
    return rows


def test_table_lists_n_delta_interval_p_discordance_and_verdict(failing: GateResult) -> None:
    rows = _table_rows(forgetting_markdown(failing))
    assert set(rows) == {"hellaswag", "arc_easy", "wikitext", "**target task**"}
    hellaswag = rows["hellaswag"]
    assert hellaswag[2] == "600" and hellaswag[5].startswith("-16.67")
    assert hellaswag[6].startswith("[") and hellaswag[8] == "+0 / -100"
    assert "fail" in hellaswag[-1]
    assert "inconclusive" in rows["arc_easy"][-1]  # 40 items cannot show a 5-point margin
    assert "pass" in rows["wikitext"][-1]


def test_overall_verdict_names_what_blocks_promotion(failing: GateResult) -> None:
    markdown = forgetting_markdown(failing)
    assert "**Overall: FAIL**" in markdown
    assert "hellaswag (fail)" in markdown and "arc_easy (inconclusive)" in markdown


def test_margins_alpha_and_inconclusive_policy_are_stated(failing: GateResult) -> None:
    markdown = forgetting_markdown(failing)
    assert "at most 5 points" in markdown and "at most 10%" in markdown
    assert "Holm" in markdown and "Inconclusive counts as **fail**" in markdown


def test_pipes_in_reasons_are_escaped(failing: GateResult) -> None:
    failing.rows[0].reason = "a | b"
    line = next(line for line in forgetting_markdown(failing).splitlines() if line.startswith("| hellaswag"))
    assert "a \\| b" in line


def test_delta_chart_is_a_png(tmp_path: Path, failing: GateResult) -> None:
    path = forgetting_delta_chart(failing, tmp_path / "nested" / "forgetting.png")
    data = path.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 1000


def test_the_resume_hint_is_a_command_that_resumes_the_run_as_it_was_started() -> None:
    """The overrides a run was started with travel in the hint (run without them, the resume is refused: "config
    keys changed"); the CLI parses it back to the same config, overrides and run id."""
    import shlex

    from flows.cli import build_parser
    from flows.summaries import resume_command

    overrides = ["train.max_steps=6", "data.path=my data/rows.jsonl"]
    command = resume_command("configs/tiny.yaml", overrides, "20261207-abc")
    parsed = vars(build_parser().parse_args(shlex.split(command)[1:]))
    assert (parsed["config"], parsed["overrides"], parsed["run_id"]) == ("configs/tiny.yaml", overrides, "20261207-abc")


def test_the_resume_hint_names_a_program_that_exists_from_any_directory(tmp_path, monkeypatch):
    """Printed in the project, the hint reads `.venv/bin/qlora ...`; from another directory the same program by its
    absolute path (a relative one would not be found there)."""
    import shlex
    import sys
    from pathlib import Path

    from flows.summaries import resume_command

    program = Path(sys.executable).with_name("qlora")
    if not program.is_file():
        pytest.skip("no qlora script beside this interpreter")
    monkeypatch.chdir(tmp_path)
    printed = shlex.split(resume_command("/x/configs/tiny.yaml", [], "20261207-abc"))[0]
    assert Path(printed).is_absolute() and Path(printed).is_file()


def test_descriptions_show_paths_relative_to_the_project_not_this_checkout():
    """The registered model's description and the reports read the same on any checkout: a path under the project
    root is shown relative to it; one elsewhere is shown whole."""
    from tasks.lib.config import load_config
    from tasks.lib.run.run_report import registered_model_description
    from tests.conftest import REPO_ROOT

    config = load_config(REPO_ROOT / "configs" / "demo.yaml")
    assert Path(config.data.path).is_absolute()  # resolved when the config loaded
    assert config.shown_path(config.data.path) == "data/raw/sst2/train.tsv"
    assert config.shown_path("/elsewhere/rows.jsonl") == "/elsewhere/rows.jsonl"
    description = registered_model_description(config, "sqlite:///mlruns.db")
    assert str(REPO_ROOT) not in description and "data/raw/sst2/train.tsv" in description
