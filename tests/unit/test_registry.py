"""Registry round trip on the tiny merged model, in a throwaway local MLflow store."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest
import torch
from mlflow.tracking import MlflowClient
from mlflow.tracking._tracking_service import utils as tracking_utils
from peft import get_peft_model
from transformers import AutoModelForCausalLM

from tasks.io.models import load_base_model
from tasks.io.registry import (
    RegistryError,
    RoundTripError,
    load_by_alias,
    register_merged_model,
    verify_round_trip,
)
from tasks.lib.config import LoraConfig, ModelConfig, QuantizationConfig
from tasks.lib.merge import fidelity_prompts, merge_adapter
from tasks.lib.modeling import peft_lora_config

NAME = "tiny-sst2"
TAGS = {"data_version": "md5-abc123", "config_hash": "0123456789abcdef", "git_commit": "deadbeef"}
ROWS = [
    {
        "id": "a",
        "messages": [{"role": "user", "content": "the film was great"}, {"role": "assistant", "content": "positive"}],
    },
    {
        "id": "b",
        "messages": [
            {"role": "user", "content": "What is the capital of France?"},
            {"role": "assistant", "content": "Paris."},
        ],
    },
]


@pytest.fixture
def mlflow_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A private sqlite store with artifacts under tmp_path; global MLflow state is restored afterwards."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    previous = tracking_utils._tracking_uri
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    experiment_id = mlflow.create_experiment("registry-test", artifact_location=(tmp_path / "artifacts").as_uri())
    try:
        yield experiment_id
    finally:
        while mlflow.active_run() is not None:
            mlflow.end_run()
        mlflow.set_tracking_uri(previous)


@pytest.fixture(scope="module")
def merged_dir(tiny_model_dir: Path, tiny_tokenizer, tmp_path_factory: pytest.TempPathFactory) -> Path:
    model_cfg, quant = ModelConfig(name_or_path=str(tiny_model_dir)), QuantizationConfig(compute_dtype="float32")
    lora = peft_lora_config(LoraConfig(r=4, alpha=8, dropout=0.0))
    lora.init_lora_weights = False
    torch.manual_seed(2)
    adapter_dir = tmp_path_factory.mktemp("adapter")
    get_peft_model(load_base_model(model_cfg, quant), lora).save_pretrained(adapter_dir)
    return merge_adapter(
        lambda: load_base_model(model_cfg, quant),
        adapter_dir,
        "dequantize",
        tmp_path_factory.mktemp("merged") / "merged",
        tiny_tokenizer,
    )


def _register(experiment_id: str, merged_dir: Path, score: float, gate_passed: bool = True):
    with mlflow.start_run(experiment_id=experiment_id) as run:
        return register_merged_model(merged_dir, NAME, run.info.run_id, score, "accuracy", TAGS, gate_passed)


def test_champion_stays_on_better_version_and_round_trips(mlflow_store, merged_dir, tiny_tokenizer) -> None:
    first = _register(mlflow_store, merged_dir, 0.8)
    second = _register(mlflow_store, merged_dir, 0.7)
    failed = _register(mlflow_store, merged_dir, 0.99, gate_passed=False)

    assert (first.version, first.promoted) == (1, True)
    assert (second.version, second.promoted) == (2, False)
    assert failed.version is None and not failed.promoted and failed.aliases == []

    client = MlflowClient()
    assert str(client.get_model_version_by_alias(NAME, "champion").version) == "1"
    assert str(client.get_model_version_by_alias(NAME, "challenger").version) == "2"
    assert len(client.search_model_versions(f"name='{NAME}'")) == 2
    tags = client.get_model_version(NAME, "1").tags
    assert float(tags["score"]) == 0.8 and tags["metric"] == "accuracy"
    assert {key: tags[key] for key in TAGS} == TAGS

    artifacts = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{NAME}@champion"))
    assert list((artifacts / "model").glob("*.safetensors")) and not list(artifacts.rglob("*.bin"))

    model, tokenizer = load_by_alias(NAME, "champion")
    assert tokenizer.chat_template
    reference = AutoModelForCausalLM.from_pretrained(merged_dir)
    prompts = fidelity_prompts(ROWS, tiny_tokenizer, 2)
    batch = tiny_tokenizer(prompts[0], return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        assert torch.allclose(model(**batch).logits, reference(**batch).logits, atol=1e-6, rtol=0)
    report = verify_round_trip(NAME, "champion", reference, tiny_tokenizer, prompts)
    assert report.argmax_agreement == 1.0

    with pytest.raises(RoundTripError, match="differs"):
        verify_round_trip(NAME, "champion", _corrupted(merged_dir), tiny_tokenizer, prompts)


def _corrupted(merged_dir: Path) -> AutoModelForCausalLM:
    model = AutoModelForCausalLM.from_pretrained(merged_dir)
    with torch.no_grad():
        model.model.layers[0].mlp.up_proj.weight.mul_(4.0)
    return model


def test_better_version_takes_champion_and_metric_mismatch_is_refused(mlflow_store, merged_dir) -> None:
    _register(mlflow_store, merged_dir, 0.5)
    better = _register(mlflow_store, merged_dir, 0.6)
    assert better.version == 2 and better.promoted
    client = MlflowClient()
    assert str(client.get_model_version_by_alias(NAME, "champion").version) == "2"
    assert client.get_model_version(NAME, "1").tags["score"] == "0.5"  # the old champion keeps its version

    with mlflow.start_run(experiment_id=mlflow_store) as run, pytest.raises(RegistryError, match="not comparable"):
        register_merged_model(merged_dir, NAME, run.info.run_id, 0.9, "f1", TAGS, True)
    assert len(client.search_model_versions(f"name='{NAME}'")) == 2
