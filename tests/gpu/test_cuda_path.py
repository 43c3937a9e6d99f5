"""The CUDA path (`-m gpu`): QLoRA training in bf16 with paged 8-bit AdamW, and the merge check on bf16 weights.

Skipped, with the reason, where CUDA is absent (every CI machine of this project); the two-process NCCL launch
needs two GPUs. Run on one NVIDIA H200 on 2026-12-04 (tests/gpu/carry_wheels.sh says how): 2 passed, 1 skipped.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is not available on this machine"),
]


def test_qlora_trains_in_bf16_with_paged_adamw_on_the_gpu(tmp_path: Path, tiny_model_dir: Path) -> None:
    from tasks.io.models import load_base_model, load_tokenizer
    from tasks.lib.config import load_config
    from tasks.lib.dataset.prepare import prepare_dataset
    from tasks.lib.training.trainer import train_adapter
    from tests.conftest import write_tiny_config

    config = load_config(write_tiny_config(tmp_path, tiny_model_dir, tmp_path / "unused"))
    tokenizer = load_tokenizer(config.model)
    prepare_dataset(config, tokenizer, Path(config.data.processed_dir), tmp_path / "stats.json")
    loaded = {}

    def load():
        loaded["model"] = load_base_model(config.model, config.quantization)
        return loaded["model"]

    result = train_adapter(config, load, tokenizer, Path(config.data.processed_dir), tmp_path / "run")
    model = loaded["model"]
    assert next(model.parameters()).device.type == "cuda"
    assert result.best_eval_loss < result.first_eval_loss


def test_merge_check_on_bf16_weights_on_the_gpu(tmp_path: Path, tiny_model_dir: Path, tiny_tokenizer) -> None:
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    from tasks.io.models import load_base_model
    from tasks.lib.config import LoraConfig, MergeConfig, ModelConfig, QuantizationConfig
    from tasks.lib.dataset.tokenization import tokenize_conversation
    from tasks.lib.modeling.loading import peft_lora_config
    from tasks.lib.modeling.merging import (
        MergeFidelityError,
        adapter_reference,
        check_merge,
        merge_adapter,
        merge_check,
    )

    model_cfg, quant = ModelConfig(name_or_path=str(tiny_model_dir)), QuantizationConfig(compute_dtype="bfloat16")
    lora = peft_lora_config(LoraConfig(r=8, alpha=16, dropout=0.0))
    lora.init_lora_weights = False
    adapter = get_peft_model(load_base_model(model_cfg, quant), lora).eval()
    adapter.save_pretrained(tmp_path / "adapter")
    out = merge_adapter(
        lambda: load_base_model(model_cfg, quant), tmp_path / "adapter", "dequantize", tmp_path / "m", tiny_tokenizer
    )
    merged = AutoModelForCausalLM.from_pretrained(out, dtype=torch.bfloat16).to("cuda")
    rows = [
        {"messages": [{"role": "user", "content": "the film was great"}, {"role": "assistant", "content": "positive"}]}
    ]
    encoded = [tokenize_conversation(row["messages"], tiny_tokenizer, 128, "truncate") for row in rows]
    check_merge(merge_check(adapter_reference(adapter, encoded), merged, encoded), MergeConfig())
    base_only = load_base_model(model_cfg, quant).dequantize(dtype=torch.bfloat16)
    with pytest.raises(MergeFidelityError, match="not merged faithfully"):
        check_merge(merge_check(adapter_reference(adapter, encoded), base_only, encoded), MergeConfig())


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="the two-process NCCL launch needs two GPUs")
def test_two_gpu_processes_train_qlora_with_nccl(tmp_path: Path, tiny_model_dir: Path) -> None:
    from tasks.io.launch import launch_training
    from tasks.io.models import load_tokenizer
    from tasks.lib.config import load_config
    from tasks.lib.dataset.prepare import prepare_dataset
    from tests.conftest import write_tiny_config

    overrides = {"train.num_processes": 2, "train.batch_size": 4}
    config = load_config(write_tiny_config(tmp_path, tiny_model_dir, tmp_path / "unused", overrides))
    prepare_dataset(config, load_tokenizer(config.model), tmp_path / "prepared")
    result = launch_training(config, tmp_path / "prepared", tmp_path / "run", [], 600)
    assert result.best_eval_loss < result.first_eval_loss
    assert (tmp_path / "run" / "adapter" / "adapter_model.safetensors").is_file()
