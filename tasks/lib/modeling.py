"""Builders for the quantization and LoRA configs: the only place those knobs become library objects."""

from __future__ import annotations

import torch
from peft import LoraConfig as PeftLoraConfig
from transformers import BitsAndBytesConfig

from tasks.lib.config import LoraConfig, QuantizationConfig


def resolve_compute_dtype(name: str) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else torch.float32
    return getattr(torch, name)


def bnb_config(quantization: QuantizationConfig) -> BitsAndBytesConfig:
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=quantization.quant_type,
        bnb_4bit_use_double_quant=quantization.double_quant,
        bnb_4bit_compute_dtype=resolve_compute_dtype(quantization.compute_dtype),
        bnb_4bit_quant_storage=torch.uint8,
    )


def peft_lora_config(lora: LoraConfig) -> PeftLoraConfig:
    return PeftLoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora.target_modules,
        use_rslora=lora.use_rslora,
        use_dora=lora.use_dora,
        bias="none",
        task_type="CAUSAL_LM",
    )
