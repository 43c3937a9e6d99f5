"""Merging a (Q)LoRA adapter into its base model, and measuring that the merge kept the trained behaviour.

A QLoRA adapter was trained against the 4-bit base, so the faithful merge target is that same 4-bit base
dequantized (`dequantize`), not the original full-precision weights (`original`): merging into the original
moved logits by up to 14.6 and changed 13% of argmax tokens on SmolLM2-135M. `merge_check` measures the merged
model against `adapter_reference` (the adapter model's answer log-probs on real test items); `check_merge` turns
it into a hard failure.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import torch
from peft import PeftModel
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from tasks.lib.config import MergeConfig
from tasks.lib.core.errors import UserError
from tasks.lib.core.publish import publish_dir
from tasks.lib.modeling.merge_check import MergeCheck

MergeStrategy = Literal["dequantize", "original"]


class MergeError(UserError, RuntimeError):
    """The merge could not be done as asked (wrong base, missing chat template, bad output folder)."""


class MergeFidelityError(UserError, RuntimeError):
    """The merged model does not reproduce the trained (base + adapter) model closely enough."""


def _is_quantized(model: PreTrainedModel) -> bool:
    return getattr(model, "hf_quantizer", None) is not None or bool(getattr(model, "is_quantized", False))


def _merge_dtype(model: PreTrainedModel) -> torch.dtype:
    # float32 on CPU; on an accelerator the compute dtype the adapter was trained with.
    if model.device.type == "cpu":
        return torch.float32
    return model.dtype


def dense_base(base: PreTrainedModel) -> PreTrainedModel:
    """A 4-bit base as plain dense weights (what the adapter is merged into); other bases unchanged."""
    if not _is_quantized(base):
        return base
    dtype = _merge_dtype(base)
    base = base.dequantize(dtype=dtype)
    return base.to(dtype)  # modules left unquantized (embeddings, norms, lm_head) too


def merge_adapter(
    base_loader: Callable[[], PreTrainedModel],
    adapter_dir: Path,
    strategy: MergeStrategy,
    out_dir: Path,
    tokenizer: PreTrainedTokenizerBase,
    verify: Callable[[Path], object] | None = None,
) -> Path:
    """Merge the adapter into the base from `base_loader` and write a plain safetensors HF folder to out_dir.

    `dequantize`: base_loader must return the 4-bit base used for training; it is dequantized, then merged.
    A base that is not quantized (plain LoRA) is merged as is: there is nothing to dequantize.
    `original`: base_loader must return the full-precision base (quantization disabled).
    The folder (weights, config, generation config, tokenizer with chat template) appears atomically, and only
    after `verify(folder)` (e.g. the fidelity check) returned: a refused merge leaves no folder behind.
    """
    if strategy not in ("dequantize", "original"):
        raise MergeError(f"merge.strategy must be 'dequantize' or 'original', got {strategy!r}")
    adapter_dir, out_dir = Path(adapter_dir), Path(out_dir)
    if not (adapter_dir / "adapter_config.json").is_file():
        raise MergeError(f"{adapter_dir} holds no adapter_config.json: not a saved PEFT adapter")
    if not tokenizer.chat_template:
        raise MergeError("the tokenizer has no chat template: the merged model would not render chats")

    base = base_loader()
    if _is_quantized(base) and strategy == "original":
        raise MergeError(
            "merge.strategy 'original' needs the full-precision base, but base_loader returned a quantized "
            "model: load it with quantization disabled"
        )
    base = dense_base(base)
    merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload(safe_merge=True)
    merged.eval()
    if hasattr(merged.config, "quantization_config"):
        del merged.config.quantization_config
    merged.config.dtype = merged.dtype
    if merged.generation_config is not None:
        if merged.generation_config.pad_token_id is None:
            merged.generation_config.pad_token_id = tokenizer.pad_token_id
        if merged.generation_config.eos_token_id is None:
            merged.generation_config.eos_token_id = tokenizer.eos_token_id

    def fill(folder: Path) -> None:
        merged.save_pretrained(folder, safe_serialization=True)
        tokenizer.save_pretrained(folder)
        _check_saved_folder(folder)
        if verify is not None:
            verify(folder)

    return publish_dir(out_dir, fill)


def _check_saved_folder(folder: Path) -> None:
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    if "quantization_config" in config:
        raise MergeError(f"{folder}/config.json still carries quantization_config after the merge")
    if not list(folder.glob("*.safetensors")):
        raise MergeError(f"{folder} holds no safetensors weights after save_pretrained")
    pickled = sorted(p.name for p in folder.glob("*.bin"))
    if pickled:
        raise MergeError(f"{folder} holds pickled weights {pickled}: only safetensors are allowed")


# Largest |log p(answer token)| difference a correct merge may show, per weight dtype: fp32 differs from the
# adapter model only by summation order (1e-5 seen on SmolLM2); bf16/fp16 round every merged weight to 8/11
# mantissa bits, which moves answer log-probabilities by up to a few hundredths through a deep model.
MAX_LOGPROB_DIFF = {torch.float32: 1e-2, torch.float16: 0.1, torch.bfloat16: 0.25}


@torch.inference_mode()
def _answer_logprobs(
    model: PreTrainedModel, encoded: list[dict[str, list[int]]]
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per row: log p of each answer token (positions whose label is not -100) and the argmax token there."""
    model.eval()
    device = next(model.parameters()).device
    out = []
    for row in encoded:
        ids = torch.tensor([row["input_ids"]], device=device)
        labels = torch.tensor(row["labels"][1:])
        logprobs = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float().cpu(), dim=-1)
        positions = (labels != -100).nonzero().squeeze(-1)
        out.append((logprobs[positions, labels[positions]], logprobs[positions].argmax(-1)))
    return out


def adapter_reference(adapter_model: PeftModel, encoded: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
    """What `merge_check` compares a merged model with: answer-token log-probs of the adapter model and of the
    base (the adapter disabled), and the adapter model's argmax tokens, over `encoded`.

    `encoded`: tokenised test rows (`input_ids`, `labels` with -100 outside the answer), as data prep writes.
    Computed where the adapter model is loaded anyway (the evaluation step), so the merge loads no second one.
    """
    if not encoded:
        raise ValueError("the merge check needs at least one encoded test row")
    adapter = _answer_logprobs(adapter_model, encoded)
    with adapter_model.disable_adapter():
        base = _answer_logprobs(adapter_model, encoded)
    reference = {
        "adapter_logprobs": torch.cat([lp for lp, _ in adapter]),
        "adapter_argmax": torch.cat([tokens for _, tokens in adapter]),
        "base_logprobs": torch.cat([lp for lp, _ in base]),
    }
    if reference["adapter_logprobs"].numel() == 0:
        raise ValueError("the encoded rows hold no answer tokens")
    return reference


def save_reference(reference: dict[str, torch.Tensor], path: Path, n_prompts: int) -> Path:
    partial = Path(path).with_name(Path(path).name + ".partial")
    save_file(reference, str(partial), metadata={"n_prompts": str(n_prompts)})
    partial.replace(path)  # a killed write leaves no reference that looks whole
    return Path(path)


def load_reference(path: Path, n_prompts: int) -> dict[str, torch.Tensor] | None:
    """The saved reference, or None when there is none for these `n_prompts` rows."""
    if not Path(path).is_file():
        return None
    with safe_open(str(path), framework="pt") as handle:
        if (handle.metadata() or {}).get("n_prompts") != str(n_prompts):
            return None
        return {key: handle.get_tensor(key) for key in handle.keys()}


def merge_check(
    reference: dict[str, torch.Tensor], merged_model: PreTrainedModel, encoded: list[dict[str, list[int]]]
) -> MergeCheck:
    """Compare the merged model's answer-token log-probabilities with the adapter model's and the base's
    (`reference`, from `adapter_reference` on the same `encoded` rows)."""
    merged = _answer_logprobs(merged_model, encoded)
    a, b = reference["adapter_logprobs"], reference["base_logprobs"]
    m = torch.cat([lp for lp, _ in merged])
    if m.shape != a.shape:
        raise ValueError(f"the reference holds {a.numel()} answer tokens, the encoded rows {m.numel()}")
    merged_gap, base_gap = (m - a).abs(), (b - a).abs()
    dtype = next(merged_model.parameters()).dtype
    bound = MAX_LOGPROB_DIFF.get(dtype, MAX_LOGPROB_DIFF[torch.bfloat16])
    agree = (reference["adapter_argmax"] == torch.cat([tokens for _, tokens in merged])).float().mean()
    base_mean = base_gap.mean().item()
    return MergeCheck(
        dtype=str(dtype).removeprefix("torch."),
        n_prompts=len(encoded),
        n_answer_tokens=a.numel(),
        merged_vs_adapter_max=merged_gap.max().item(),
        merged_vs_adapter_mean=merged_gap.mean().item(),
        base_vs_adapter_mean=base_mean,
        # Below a tenth of the dtype's bound the adapter changes nothing the check could tell from rounding.
        relative_distance=merged_gap.mean().item() / base_mean if base_mean > bound / 10 else None,
        argmax_agreement=agree.item(),
        max_logprob_diff=bound,
    )


def check_merge(report: MergeCheck, merge_cfg: MergeConfig) -> None:
    """Raise MergeFidelityError naming every bound the merge breaks.

    A correct merge is much closer to the adapter model than the base is (relative distance at most
    `merge.max_relative_distance`, 0.1: the merge keeps 90% of what the adapter changed, measured on answer
    log-probabilities) and within the absolute bound of its dtype (`MAX_LOGPROB_DIFF`). A merge that lost the
    adapter has relative distance ~1; one that scrambled weights breaks the absolute bound.
    """
    problems = []
    if report.relative_distance is not None and report.relative_distance > merge_cfg.max_relative_distance:
        problems.append(
            f"distance to the adapter model is {report.relative_distance:.3g} x the base's "
            f"(> merge.max_relative_distance {merge_cfg.max_relative_distance}): the adapter was not merged faithfully"
        )
    if report.merged_vs_adapter_max > report.max_logprob_diff:
        problems.append(
            f"max |delta log p| of an answer token {report.merged_vs_adapter_max:.3g} > {report.max_logprob_diff} "
            f"allowed for {report.dtype}"
        )
    if report.argmax_agreement < merge_cfg.min_argmax_agreement:
        problems.append(
            f"argmax agreement {report.argmax_agreement:.4f} < merge.min_argmax_agreement "
            f"{merge_cfg.min_argmax_agreement}"
        )
    if problems:
        raise MergeFidelityError(
            f"merged model differs from the trained model over {report.n_answer_tokens} answer tokens of "
            f"{report.n_prompts} test items: " + "; ".join(problems)
        )
