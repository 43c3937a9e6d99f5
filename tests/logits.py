"""Full next-token logit comparison of two models on rendered conversations: what the merge and registry tests
use to show that a merged or reloaded model reproduces another beyond the pipeline's own checks."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from pydantic import BaseModel, Field
from transformers import PreTrainedModel, PreTrainedTokenizerBase


class FidelityReport(BaseModel):
    max_abs_logit_diff: float = Field(description="Largest |reference - candidate| over all logits compared.")
    mean_abs_logit_diff: float = Field(description="Mean |reference - candidate| over all logits compared.")
    argmax_agreement: float = Field(description="Fraction of positions whose next-token argmax agrees.")
    n_tokens: int = Field(description="Non-pad positions compared.")


def fidelity_prompts(test_rows: Sequence[dict[str, Any]], tokenizer: PreTrainedTokenizerBase, n: int) -> list[str]:
    """The first n rows' full conversations (prompt + answer) rendered with the chat template."""
    if n <= 0:
        raise ValueError(f"n must be positive, got {n}")
    prompts = []
    for index, row in enumerate(test_rows[:n]):
        messages = row.get("messages") if isinstance(row, dict) else None
        if not messages:
            raise ValueError(f"test row {index} (id {row.get('id') if isinstance(row, dict) else '?'}) has no messages")
        prompts.append(tokenizer.apply_chat_template(messages, tokenize=False))
    if not prompts:
        raise ValueError("no test rows to build fidelity prompts from")
    return prompts


@torch.inference_mode()
def _logits(model: PreTrainedModel, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    model.eval()
    device = next(model.parameters()).device
    inputs = {key: value.to(device) for key, value in batch.items()}
    return model(**inputs).logits.float().cpu()


def fidelity(
    reference_model: PreTrainedModel,
    candidate_model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    batch_size: int = 4,
) -> FidelityReport:
    """Compare next-token logits of two models at every non-pad position of the (fully rendered) prompts."""
    if not prompts:
        raise ValueError("fidelity needs at least one prompt")
    max_diff, abs_sum, n_logits, agree, n_tokens = 0.0, 0.0, 0, 0, 0
    for start in range(0, len(prompts), batch_size):
        batch = tokenizer(
            prompts[start : start + batch_size],
            return_tensors="pt",
            padding=True,
            padding_side="right",  # causal attention: right padding leaves real positions untouched
            add_special_tokens=False,
        )
        batch = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        mask = batch["attention_mask"].bool()
        ref = _logits(reference_model, batch)[mask]
        cand = _logits(candidate_model, batch)[mask]
        if ref.shape != cand.shape:
            raise AssertionError(f"logit shapes differ: reference {tuple(ref.shape)}, candidate {tuple(cand.shape)}")
        diff = (ref - cand).abs()
        max_diff = max(max_diff, diff.max().item())
        abs_sum += diff.sum().item()
        n_logits += diff.numel()
        agree += (ref.argmax(-1) == cand.argmax(-1)).sum().item()
        n_tokens += ref.shape[0]
    return FidelityReport(
        max_abs_logit_diff=max_diff,
        mean_abs_logit_diff=abs_sum / n_logits,
        argmax_agreement=agree / n_tokens,
        n_tokens=n_tokens,
    )
