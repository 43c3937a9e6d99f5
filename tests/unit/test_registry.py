"""Registry round trip on the tiny merged model, in a throwaway local MLflow store."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest
import torch
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.tracking._tracking_service import utils as tracking_utils
from peft import get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from tasks.io.models import load_base_model
from tasks.io.registry import (
    PIPELINE_RUN_TAG,
    RoundTripError,
    load_registered,
    register_merged_model,
    verify_round_trip,
)
from tasks.lib.config import LoraConfig, ModelConfig, QuantizationConfig
from tasks.lib.gate.promotion import PromotionDecision, decide_promotion
from tasks.lib.modeling.loading import peft_lora_config
from tasks.lib.modeling.merging import merge_adapter
from tests.logits import fidelity_prompts

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


def _register(experiment_id: str, merged_dir: Path, decision: PromotionDecision, verify=None, run_tag: str = "r1"):
    with mlflow.start_run(experiment_id=experiment_id) as run:
        tags = {**TAGS, PIPELINE_RUN_TAG: run_tag}
        return register_merged_model(merged_dir, NAME, run.info.run_id, tags, decision, verify)


def _promote(challenger: list[bool], champion: list[bool] | None, gate_passed: bool = True) -> PromotionDecision:
    return decide_promotion(gate_passed, challenger, champion)


GOOD, WORSE = [True] * 40 + [False] * 10, [True] * 20 + [False] * 30


def test_champion_moves_only_on_evidence_and_round_trips(mlflow_store, merged_dir, tiny_tokenizer, tmp_path) -> None:
    first = _register(mlflow_store, merged_dir, _promote(WORSE, None), run_tag="r1")
    better = _register(mlflow_store, merged_dir, _promote(GOOD, WORSE), run_tag="r2")
    same = _register(mlflow_store, merged_dir, _promote(GOOD, GOOD), run_tag="r3")
    failed = _register(mlflow_store, merged_dir, _promote(GOOD, None, gate_passed=False), run_tag="r4")

    assert (first.version, first.promoted) == (1, True)
    assert (better.version, better.promoted) == (2, True)
    assert (same.version, same.promoted) == (3, False)
    assert failed.version is None and not failed.promoted and failed.aliases == []

    client = MlflowClient()
    assert str(client.get_model_version_by_alias(NAME, "champion").version) == "2"
    assert str(client.get_model_version_by_alias(NAME, "challenger").version) == "3"
    assert len(client.search_model_versions(f"name='{NAME}'")) == 3
    tags = client.get_model_version(NAME, "2").tags
    assert {key: tags[key] for key in TAGS} == TAGS
    assert float(tags["promotion.p_value"]) < 0.05 and tags["promoted"] == "true"
    # A finished run's summary reads the aliases as they are now: v1 was champion when registered, not any more.
    from flows.summaries import run_summary
    from tasks.lib.run.refs import PipelineResult, RegistrationRef

    stored = RegistrationRef(registered=True, model_name=NAME, version="1", aliases=first.aliases, reason="x")
    summary = run_summary(PipelineResult(run_id="r1", run_dir="d", mlflow_run_id="m", registration=stored))
    assert f"{NAME} v1 aliases now []" in summary and "champion" in first.aliases

    artifacts = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{NAME}@champion"))
    assert list((artifacts / "artifacts" / merged_dir.name).glob("*.safetensors"))
    assert not list(artifacts.rglob("*.bin")) and not list(artifacts.rglob("*.pkl"))  # no pickle anywhere

    model, tokenizer = load_registered(f"models:/{NAME}@champion")
    assert tokenizer.chat_template
    reference = AutoModelForCausalLM.from_pretrained(merged_dir)
    prompts = fidelity_prompts(ROWS, tiny_tokenizer, 2)
    batch = tiny_tokenizer(prompts[0], return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        assert torch.allclose(model(**batch).logits, reference(**batch).logits, atol=1e-6, rtol=0)
    report = verify_round_trip(f"models:/{NAME}@champion", merged_dir)
    assert report.max_abs_weight_diff == 0.0 and report.n_tensors == len(reference.state_dict()) - 1  # tied head

    with pytest.raises(RoundTripError, match="weights differ"):
        verify_round_trip(f"models:/{NAME}/2", _corrupted(merged_dir, tmp_path))


def _corrupted(merged_dir: Path, tmp_path: Path) -> Path:
    """A copy of the merged folder with one weight matrix changed."""
    model = AutoModelForCausalLM.from_pretrained(merged_dir)
    with torch.no_grad():
        model.model.layers[0].mlp.up_proj.weight.mul_(4.0)
    folder = tmp_path / "corrupted"
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(merged_dir).save_pretrained(folder)
    return folder


def test_failed_round_trip_moves_no_alias_and_a_retry_registers_no_second_version(
    mlflow_store, merged_dir, tmp_path
) -> None:
    def verify_against_wrong_model(uri: str) -> None:
        verify_round_trip(uri, _corrupted(merged_dir, tmp_path))

    with pytest.raises(RoundTripError):
        _register(mlflow_store, merged_dir, _promote(GOOD, None), verify_against_wrong_model, run_tag="r9")
    client = MlflowClient()
    assert client.get_registered_model(NAME).aliases == {}
    assert client.get_model_version(NAME, "1").tags["round_trip"] == "failed"

    retried = _register(
        mlflow_store,
        merged_dir,
        _promote(GOOD, None),
        lambda uri: verify_round_trip(uri, merged_dir),
        run_tag="r9",
    )
    assert retried.version == 1 and retried.promoted
    assert len(client.search_model_versions(f"name='{NAME}'")) == 1
    assert client.get_model_version(NAME, "1").tags["round_trip"] == "verified"


def test_the_registered_version_is_a_chat_model_answering_as_the_evaluation_does(
    mlflow_store, merged_dir, tiny_tokenizer
) -> None:
    from tasks.lib.modeling.generation import chat_reply

    assert _register(mlflow_store, merged_dir, _promote(GOOD, None)).version == 1
    info = mlflow.models.get_model_info(f"models:/{NAME}/1")
    assert "python_function" in info.flavors and "transformers" not in info.flavors
    params = {param.name: param.default for param in info.signature.params.params}
    assert params == {"max_tokens": 256, "temperature": 0.0, "top_p": 1.0}
    assert info.signature.inputs.input_names() == ["messages"]
    assert "choices" in info.signature.outputs.input_names()

    served = mlflow.pyfunc.load_model(f"models:/{NAME}@champion")
    reference = AutoModelForCausalLM.from_pretrained(merged_dir)
    for row in ROWS:
        messages = row["messages"][:-1]
        answer = served.predict({"messages": messages}, params={"max_tokens": 7})
        expected = chat_reply(reference, tiny_tokenizer, messages, 7)
        assert answer["object"] == "chat.completion"
        assert answer["choices"][0]["message"] == {"role": "assistant", "content": expected.text}
        assert answer["usage"]["completion_tokens"] == expected.completion_tokens <= 7
        assert answer["usage"]["prompt_tokens"] == len(tiny_tokenizer(expected_prompt(messages))["input_ids"])
    short = served.predict({"messages": ROWS[0]["messages"][:-1]}, params={"max_tokens": 1})
    assert short["usage"]["completion_tokens"] == 1  # max_tokens is honoured
    batch = served.predict([{"messages": row["messages"][:-1]} for row in ROWS], params={"max_tokens": 7})
    assert [item["choices"][0]["message"]["content"] for item in batch] == [
        chat_reply(reference, tiny_tokenizer, row["messages"][:-1], 7).text for row in ROWS
    ]
    with pytest.raises(Exception, match="role"):
        served.predict({"messages": [{"content": "no role"}]})
    with pytest.raises(MlflowException, match="temperature must be >= 0") as refused:
        served.predict({"messages": ROWS[0]["messages"][:-1]}, params={"temperature": -1.0})
    assert refused.value.error_code == "INVALID_PARAMETER_VALUE"  # served as HTTP 400
    long = [{"role": "user", "content": "word " * 600}]  # beyond the tiny model's 512-token window
    with pytest.raises(MlflowException, match="reads at most 512 tokens") as too_long:
        served.predict({"messages": long}, params={"max_tokens": 7})
    assert too_long.value.error_code == "INVALID_PARAMETER_VALUE"
    fits = [{"role": "user", "content": "word " * 20}]
    assert served.predict({"messages": fits}, params={"max_tokens": 7})["object"] == "chat.completion"


def expected_prompt(messages: list[dict]) -> str:
    from tasks.lib.modeling.generation import render_chat
    from tests.tiny_model import build_tiny_tokenizer

    return render_chat(build_tiny_tokenizer(), messages)


def test_a_version_logged_by_an_older_release_still_loads(tmp_path: Path) -> None:
    """Champions registered before serving (MLflow's transformers flavor: model/ + components/tokenizer/) are still
    found when a challenger is compared with them; chat models keep their merged folder under artifacts/."""
    from tasks.io.registry import _model_folders

    old = tmp_path / "old"
    (old / "model").mkdir(parents=True)
    (old / "model" / "config.json").write_text("{}")
    assert _model_folders(old) == (old / "model", old / "components" / "tokenizer")
    new = tmp_path / "new"
    (new / "artifacts" / "merged").mkdir(parents=True)
    (new / "artifacts" / "merged" / "config.json").write_text("{}")
    assert _model_folders(new) == (new / "artifacts" / "merged",) * 2
