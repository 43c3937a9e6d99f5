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


def pin_cpu_4bit_kernel(model: torch.nn.Module, allow_bf16: bool = False) -> int:
    """Keep bitsandbytes' 4-bit CPU layers on the kernel that has gradients; returns the layers changed.

    On CPUs with AVX512-BF16, bitsandbytes 0.50 repacks a `Linear4bit` weight on its first eval-mode forward
    without gradients and from then on runs a fused bf16 kernel (`gemv_4bit`) that has no autograd, for every
    later forward, training included: input gradients become None and outputs move by ~1e-2. The switch is the
    layer's `support_avx512bf16_for_cpu` flag (set at init from the CPU). We turn it off unless the caller
    allows bf16 (evaluation with a bf16 compute dtype), and undo a repacking that already happened, so results
    do not depend on the CPU they ran on.
    """
    from bitsandbytes.functional import _convert_weight_packed_for_cpu_inverse
    from bitsandbytes.nn import Linear4bit

    changed = 0
    for module in model.modules():
        if not isinstance(module, Linear4bit):
            continue
        allowed = allow_bf16 and module.compute_dtype == torch.bfloat16
        if module.support_avx512bf16_for_cpu and not allowed:
            module.support_avx512bf16_for_cpu = False
            changed += 1
        state = getattr(module.weight, "quant_state", None)
        if not allowed and state is not None and getattr(state, "packing_format_for_cpu", False):
            module.weight.data, module.weight.quant_state = _convert_weight_packed_for_cpu_inverse(
                module.weight.data, state
            )
    return changed


def bnb_config(quantization: QuantizationConfig) -> BitsAndBytesConfig:
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=quantization.quant_type,
        bnb_4bit_use_double_quant=quantization.double_quant,
        bnb_4bit_compute_dtype=resolve_compute_dtype(quantization.compute_dtype),
        bnb_4bit_quant_storage=getattr(torch, quantization.quant_storage),
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
