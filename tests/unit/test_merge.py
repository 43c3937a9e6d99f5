"""Merging a QLoRA adapter: the dequantized merge reproduces the trained 4-bit model; corruption is caught."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from peft import PeftModel, get_peft_model
from transformers import AutoModelForCausalLM

from tasks.io.models import load_base_model
from tasks.lib.config import LoraConfig, MergeConfig, ModelConfig, QuantizationConfig
from tasks.lib.dataset.tokenization import tokenize_conversation
from tasks.lib.modeling.loading import peft_lora_config
from tasks.lib.modeling.merging import (
    MergeError,
    MergeFidelityError,
    adapter_reference,
    check_merge,
    load_reference,
    merge_adapter,
    merge_check,
    save_reference,
)
from tests.logits import fidelity, fidelity_prompts

ROWS = [
    {
        "id": "a",
        "messages": [
            {"role": "user", "content": "Classify the sentiment of the review. the film was great"},
            {"role": "assistant", "content": "positive"},
        ],
    },
    {
        "id": "b",
        "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "What is the capital of France?"},
            {"role": "assistant", "content": "Paris."},
        ],
    },
    {
        "id": "c",
        "messages": [
            {"role": "user", "content": "Answer positive or negative: this movie was awful, a bad film"},
            {"role": "assistant", "content": "negative"},
        ],
    },
]
QUANT = QuantizationConfig(compute_dtype="float32")
FULL = QuantizationConfig(enabled=False)


@pytest.fixture(scope="module")
def trained(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """The 4-bit tiny base with a LoRA adapter whose B weights are random (so it changes outputs), saved."""
    model_cfg = ModelConfig(name_or_path=str(tiny_model_dir))
    lora = peft_lora_config(LoraConfig(r=8, alpha=16, dropout=0.0))
    lora.init_lora_weights = False
    torch.manual_seed(1)
    model = get_peft_model(load_base_model(model_cfg, QUANT), lora).eval()
    adapter_dir = tmp_path_factory.mktemp("adapter")
    model.save_pretrained(adapter_dir)
    return model_cfg, model, adapter_dir


@pytest.fixture(scope="module")
def prompts(tiny_tokenizer) -> list[str]:
    return fidelity_prompts(ROWS, tiny_tokenizer, 8)


def _merge(trained, tokenizer, strategy: str, out_dir: Path) -> Path:
    model_cfg, _, adapter_dir = trained
    quant = QUANT if strategy == "dequantize" else FULL
    return merge_adapter(lambda: load_base_model(model_cfg, quant), adapter_dir, strategy, out_dir, tokenizer)


def test_fidelity_prompts_render_full_conversation(tiny_tokenizer) -> None:
    rendered = fidelity_prompts(ROWS, tiny_tokenizer, 2)
    assert len(rendered) == 2
    assert rendered[0].rstrip().endswith("positive<|im_end|>")
    assert "<|im_start|>system" in rendered[1] and "Paris." in rendered[1]
    with pytest.raises(ValueError, match="row 0"):
        fidelity_prompts([{"id": "x", "messages": []}], tiny_tokenizer, 1)


def test_fidelity_compares_only_real_tokens(trained, tiny_tokenizer, prompts) -> None:
    _, model, _ = trained
    report = fidelity(model, model, tiny_tokenizer, prompts, batch_size=2)
    expected = sum(len(tiny_tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prompts)
    assert report.n_tokens == expected
    assert report.max_abs_logit_diff < 1e-5 and report.argmax_agreement == 1.0


def _encoded(tokenizer) -> list[dict]:
    return [tokenize_conversation(row["messages"], tokenizer, 256, "truncate") for row in ROWS]


def test_dequantize_merge_reproduces_trained_model(trained, tiny_tokenizer, prompts, tmp_path) -> None:
    _, model, _ = trained
    out = _merge(trained, tiny_tokenizer, "dequantize", tmp_path / "merged")

    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config
    assert list(out.glob("*.safetensors")) and not list(out.glob("*.bin"))
    assert (out / "generation_config.json").is_file()
    merged = AutoModelForCausalLM.from_pretrained(out)
    assert merged.dtype == torch.float32
    assert all(type(m).__name__ != "Linear4bit" for m in merged.modules())

    report = fidelity(model, merged, tiny_tokenizer, prompts)
    assert report.argmax_agreement >= 0.99 and report.max_abs_logit_diff < 1e-4

    check = merge_check(adapter_reference(model, _encoded(tiny_tokenizer)), merged, _encoded(tiny_tokenizer))
    print(f"dequantize merge vs 4-bit+adapter: {check}")
    check_merge(check, MergeConfig())
    assert check.relative_distance is not None and check.relative_distance < 1e-3  # the adapter really moved things


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_check_passes_a_correct_merge_and_refuses_one_that_dropped_the_adapter(
    trained, tiny_tokenizer, tmp_path, dtype
) -> None:
    model_cfg, model, _ = trained
    merged = AutoModelForCausalLM.from_pretrained(_merge(trained, tiny_tokenizer, "dequantize", tmp_path / "m")).to(
        dtype
    )
    check = merge_check(adapter_reference(model, _encoded(tiny_tokenizer)), merged, _encoded(tiny_tokenizer))
    assert check.dtype == str(dtype).removeprefix("torch.")
    check_merge(check, MergeConfig())

    base_only = load_base_model(model_cfg, QUANT).dequantize(dtype=torch.float32).to(dtype)  # the adapter lost
    dropped = merge_check(adapter_reference(model, _encoded(tiny_tokenizer)), base_only, _encoded(tiny_tokenizer))
    assert dropped.relative_distance == pytest.approx(1.0, abs=0.05 if dtype == torch.float32 else 0.3)
    with pytest.raises(MergeFidelityError, match="not merged faithfully"):
        check_merge(dropped, MergeConfig())


def test_original_merge_is_measurably_worse(trained, tiny_tokenizer, prompts, tmp_path) -> None:
    _, model, _ = trained
    reference = adapter_reference(model, _encoded(tiny_tokenizer))
    dequantized = merge_check(
        reference,
        AutoModelForCausalLM.from_pretrained(_merge(trained, tiny_tokenizer, "dequantize", tmp_path / "d")),
        _encoded(tiny_tokenizer),
    )
    original = merge_check(
        reference,
        AutoModelForCausalLM.from_pretrained(_merge(trained, tiny_tokenizer, "original", tmp_path / "o")),
        _encoded(tiny_tokenizer),
    )
    print(f"original merge vs 4-bit+adapter: {original}")
    assert original.merged_vs_adapter_mean > 100 * dequantized.merged_vs_adapter_mean


def test_corrupted_merge_is_detected(trained, tiny_tokenizer, tmp_path) -> None:
    _, model, _ = trained
    merged = AutoModelForCausalLM.from_pretrained(_merge(trained, tiny_tokenizer, "dequantize", tmp_path / "m"))
    with torch.no_grad():
        merged.model.layers[1].mlp.down_proj.weight.mul_(8.0)
    encoded = _encoded(tiny_tokenizer)
    with pytest.raises(MergeFidelityError, match="allowed for float32"):
        check_merge(merge_check(adapter_reference(model, encoded), merged, encoded), MergeConfig())


def test_original_strategy_refuses_quantized_base(trained, tiny_tokenizer, tmp_path) -> None:
    model_cfg, _, adapter_dir = trained
    with pytest.raises(MergeError, match="full-precision"):
        merge_adapter(
            lambda: load_base_model(model_cfg, QUANT), adapter_dir, "original", tmp_path / "x", tiny_tokenizer
        )
    assert not (tmp_path / "x").exists()


def test_merge_refuses_non_adapter_folder(tiny_model_dir, tiny_tokenizer, tmp_path) -> None:
    with pytest.raises(MergeError, match="adapter_config.json"):
        merge_adapter(lambda: None, tiny_model_dir, "dequantize", tmp_path / "x", tiny_tokenizer)


def test_peft_reload_matches_trained_adapter(trained, tiny_tokenizer, prompts) -> None:
    """The saved adapter is the trained one: reloading onto a fresh 4-bit base gives identical logits."""
    model_cfg, model, adapter_dir = trained
    reloaded = PeftModel.from_pretrained(load_base_model(model_cfg, QUANT), str(adapter_dir))
    assert fidelity(model, reloaded, tiny_tokenizer, prompts).max_abs_logit_diff < 1e-6


def test_a_merge_refused_by_its_check_publishes_no_folder(trained, tiny_tokenizer, tmp_path) -> None:
    model_cfg, _, adapter_dir = trained

    def refuse(folder: Path) -> None:
        assert (folder / "config.json").is_file()  # the check sees the whole saved folder
        raise MergeFidelityError("merged model differs from the adapter model")

    with pytest.raises(MergeFidelityError):
        merge_adapter(
            lambda: load_base_model(model_cfg, QUANT),
            adapter_dir,
            "dequantize",
            tmp_path / "merged",
            tiny_tokenizer,
            refuse,
        )
    assert list(tmp_path.iterdir()) == []  # neither merged/ nor a temporary that looks like one


def test_saved_reference_is_what_the_check_compares_and_is_refused_for_other_rows(trained, tiny_tokenizer, tmp_path):
    _, model, _ = trained
    encoded = _encoded(tiny_tokenizer)
    reference = adapter_reference(model, encoded)
    path = save_reference(reference, tmp_path / "reference.safetensors", len(encoded))
    loaded = load_reference(path, len(encoded))
    assert loaded is not None and all(torch.equal(loaded[key], reference[key]) for key in reference)
    assert load_reference(path, len(encoded) + 1) is None
    assert load_reference(tmp_path / "missing.safetensors", len(encoded)) is None
    assert not list(tmp_path.glob("*.partial"))
