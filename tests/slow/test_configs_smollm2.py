"""The slow tier: the two shipped task configs (GSM8K math, Alpaca instruction following) end to end on SmolLM2,
with small budgets. Their full-budget numbers are in the README."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("name", ["gsm8k", "alpaca"])
def test_shipped_config_runs_end_to_end(name: str, tmp_path: Path, demo_model_dir: Path) -> None:
    from prefect.testing.utilities import prefect_test_harness

    from flows.finetune import finetune

    overrides = [
        f"output_dir={tmp_path / 'runs'}",
        f"data.processed_dir={tmp_path / 'processed'}",
        "data.max_rows=400",
        "train.max_steps=20",
        "train.eval_steps=10",
        "train.save_steps=10",
        "evaluation.max_items=16",
        "forgetting.benchmarks=[arc_easy]",
        "forgetting.limit=20",
        "forgetting.run_when_task_fails=true",
        f"forgetting.data_dir={REPO_ROOT / 'data' / 'benchmarks'}",
        f"forgetting.cache_dir={tmp_path / 'score_cache'}",
        f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
        f"tracking.artifact_location={(tmp_path / 'mlartifacts').as_uri()}",
    ]
    with prefect_test_harness(server_startup_timeout=120):
        result = finetune(config_path=str(REPO_ROOT / "configs" / f"{name}.yaml"), overrides=overrides)

    assert result.train.best_eval_loss < result.train.first_eval_loss  # it learned something of the task
    evaluation = result.evaluation
    assert evaluation.n_items == 16 and evaluation.primary_metric in evaluation.tuned
    predictions = [json.loads(line) for line in (Path(result.run_dir) / "task_predictions.jsonl").open()]
    assert len(predictions) == 16
    if name == "gsm8k":
        # The tuned model writes its solution the way the training answers do: ending in '#### <number>'.
        marked = sum("####" in row["tuned_prediction"] for row in predictions)
        assert marked > sum("####" in row["base_prediction"] for row in predictions)
    else:
        # Free text is scored whole: a multi-sentence answer reaches the scorer uncut.
        assert max(len(row["tuned_prediction"].split()) for row in predictions) > 20
    assert result.forgetting.gate.verdict in {"pass", "fail", "inconclusive"}
