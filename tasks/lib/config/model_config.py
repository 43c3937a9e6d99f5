"""Config sections for the base model, its 4-bit quantization and the LoRA adapter."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from tasks.lib.config.section import Section


class ModelConfig(Section):
    name_or_path: str = Field(
        description="Hub id (e.g. HuggingFaceTB/SmolLM2-135M-Instruct), a local HF folder, "
        "or a folder holding `gguf_file`."
    )
    gguf_file: str | None = Field(
        None, description="GGUF file name inside name_or_path; converted once to a safetensors folder."
    )
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit).")
    trust_remote_code: bool = Field(False, description="Run model code from the hub. Off unless you trust it.")
    chat_template: str | None = Field(
        None,
        description="null: the tokenizer's own; 'chatml': the documented default for base models without one; "
        "or a Jinja chat template overriding the tokenizer's.",
    )


class QuantizationConfig(Section):
    enabled: bool = Field(True, description="Load the base in 4-bit (QLoRA). False trains plain LoRA.")
    quant_type: Literal["nf4", "fp4"] = Field(
        "nf4", description="4-bit data type: nf4 (NormalFloat, the QLoRA paper's) or fp4."
    )
    double_quant: bool = Field(True, description="Quantize the quantization constants too (QLoRA's, ~0.4 bit/param).")
    compute_dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        "auto", description="auto: bfloat16 where the GPU supports it, else float32."
    )
    quant_storage: Literal["uint8", "bfloat16", "float16", "float32"] = Field(
        "uint8",
        description="The dtype the packed 4-bit weights are stored in; FSDP-QLoRA needs it equal to the compute "
        "dtype (bfloat16) so FSDP can shard them with the other weights.",
    )


class LoraConfig(Section):
    r: int = Field(16, gt=0, description="LoRA rank.")
    alpha: int = Field(32, gt=0, description="LoRA scaling numerator (scale = alpha / r).")
    dropout: float = Field(0.05, ge=0.0, lt=1.0, description="Dropout on the LoRA input during training.")
    target_modules: str | list[str] = Field("all-linear", description="'all-linear' or module names.")
    use_rslora: bool = Field(False, description="Rank-stabilised scaling (alpha / sqrt(r) instead of alpha / r).")
    use_dora: bool = Field(False, description="Weight-decomposed LoRA (DoRA): a learned magnitude per output.")

    @field_validator("target_modules")
    @classmethod
    def _non_empty(cls, value: str | list[str]) -> str | list[str]:
        if not value:
            raise ValueError("must name at least one module, or be 'all-linear'")
        return value
