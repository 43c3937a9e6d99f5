"""The slow tier: the real SmolLM2-135M-Instruct, answering a chat prompt and running a shortened demo flow."""

from __future__ import annotations

import json
import os
from pathlib import Path

import httpx
import pytest
import torch

from tasks.lib.evaluation.task_eval import load_split
from tests.conftest import REPO_ROOT
from tests.integration.servers import model_server

pytestmark = pytest.mark.slow


def test_prepared_smollm2_answers_a_chat_prompt_sensibly(demo_model_dir: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(demo_model_dir)
    model = AutoModelForCausalLM.from_pretrained(demo_model_dir, use_safetensors=True)
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=16, do_sample=False)
    reply = tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in reply


def test_shortened_demo_flow_learns_the_task_keeps_general_ability_and_registers(
    tmp_path: Path, demo_model_dir: Path
) -> None:
    from mlflow.tracking import MlflowClient
    from prefect.testing.utilities import prefect_test_harness

    from flows.finetune import finetune

    overrides = [
        f"output_dir={tmp_path / 'runs'}",
        f"data.processed_dir={tmp_path / 'processed'}",
        "train.max_steps=40",
        "train.eval_steps=10",
        "train.save_steps=20",
        "evaluation.max_items=100",
        "forgetting.limit=40",
        f"forgetting.data_dir={REPO_ROOT / 'data' / 'benchmarks'}",
        f"forgetting.cache_dir={tmp_path / 'score_cache'}",
        "gate.max_accuracy_drop=10.0",
        # 40 items cannot show non-inferiority at any useful margin (the full demo uses 400): here the check is
        # that nothing is called forgetting, so inconclusive rows do not block.
        "gate.on_inconclusive=pass",
        f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
        f"tracking.artifact_location={(tmp_path / 'mlartifacts').as_uri()}",
    ]
    with prefect_test_harness(server_startup_timeout=120):
        result = finetune(config_path=str(REPO_ROOT / "configs" / "demo.yaml"), overrides=overrides)

    assert result.train.best_eval_loss < 0.5 * result.train.first_eval_loss
    evaluation = result.evaluation
    assert evaluation.tuned["accuracy"] >= evaluation.base["accuracy"] + 0.1, evaluation.markdown
    assert result.forgetting.passed and result.forgetting.gate.verdict != "fail", result.forgetting.markdown
    assert result.merge.fidelity.argmax_agreement >= 0.99
    assert result.registration.registered and "champion" in result.registration.aliases
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    version = client.get_model_version_by_alias("smollm2-135m-sst2", "champion")
    assert version.run_id == result.mlflow_run_id  # the pipeline's run lists its model
    parent = client.get_run(result.mlflow_run_id)
    step_filter = f"tags.mlflow.parentRunId = '{result.mlflow_run_id}' and tags.step = 'register'"
    register_run = client.search_runs([parent.info.experiment_id], filter_string=step_filter)[0]
    assert register_run.data.metrics["round_trip.max_abs_weight_diff"] == 0.0

    # Served by MLflow's own server, the champion labels a dev review as the evaluation did, and correctly.
    records = [json.loads(line) for line in Path(result.run_dir, "task_predictions.jsonl").read_text().splitlines()]
    correct = next(record for record in records if record["tuned_correct"])
    test_rows = {row["id"]: row for row in load_split(Path(result.data.processed_dir), "test")}
    env = dict(os.environ, MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlflow.db'}")
    with model_server("models:/smollm2-135m-sst2@champion", env, tmp_path / "model-server.log") as url:
        request = {"messages": test_rows[correct["id"]]["messages"][:-1], "max_tokens": 16}
        completion = httpx.post(f"{url}/invocations", json=request, timeout=120).raise_for_status().json()
    answer = completion["choices"][0]["message"]["content"]
    assert answer == correct["tuned_prediction"] and correct["reference"] in answer.lower(), (answer, correct)
