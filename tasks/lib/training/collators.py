"""How training batches are built: token counting, answer-only logits and shared-prefix flattening."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

import torch
from transformers import (
    DataCollatorForSeq2Seq,
    DataCollatorWithFlattening,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from tasks.lib.config import RunConfig
from tasks.lib.dataset.tokenization import IGNORE_INDEX


class TokenCountingCollator:
    """Wraps a collator and counts the real (non-padding) tokens it hands to the model."""

    def __init__(self, inner: Callable, pad_token_id: int):
        self.inner = inner
        self.pad_token_id = pad_token_id
        self.real_tokens = 0

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        self.real_tokens += sum(len(feature["input_ids"]) for feature in features)
        return self.inner(features)


class AnswerLogitsOnly:
    """Wraps the packing collator so the LM head runs only where a label is predicted.

    Prompt tokens carry no labels, yet the model would project every position onto the vocabulary
    (49k entries for SmolLM2: about a fifth of a training step's compute) only for the loss to ignore
    them. `logits_to_keep` (the positions that predict a label) and `shift_labels` (those labels) give
    the same loss and the same gradients without that work. Packed batches hold a single row.
    """

    def __init__(self, inner: Callable):
        self.inner = inner

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch = self.inner(features)
        shifted = torch.nn.functional.pad(batch["labels"], (0, 1), value=-100)[..., 1:]
        positions = (shifted[0] != -100).nonzero().squeeze(-1)
        batch["logits_to_keep"] = positions
        batch["shift_labels"] = shifted[:, positions]
        return batch


def shared_prompt_prefix(rows_ids: Sequence[Sequence[int]], rows_labels: Sequence[Sequence[int]]) -> int:
    """How many leading tokens every row shares while nothing is learned from them: position j's prediction
    (token j + 1) is unlabelled in every row, so computing positions < the result once serves all rows."""
    if len(rows_ids) < 2:
        return 0
    first, limit, shared = rows_ids[0], min(len(ids) for ids in rows_ids) - 1, 0
    while (
        shared < limit
        and all(ids[shared] == first[shared] for ids in rows_ids)
        and all(labels[shared + 1] == IGNORE_INDEX for labels in rows_labels)
    ):
        shared += 1
    return shared


class SharedPrefixFlattening:
    """Packs a batch into one row that holds the prompt prefix its rows share once, then each row's remainder.

    A remainder's position ids continue from the prefix length, and packed_sdpa (tasks/lib/modeling/packed_attention.py)
    lets it attend to the prefix and to itself: every row's logits, loss and gradients are those of the row
    alone, for fewer tokens. On the SST-2 demo the system turn and the instruction, 39 of a row's 59 tokens, are
    computed once per batch of 8 instead of 8 times. Needs packed_sdpa: other attention kernels would not let a
    remainder see the prefix.
    """

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        rows_ids = [list(feature["input_ids"]) for feature in features]
        rows_labels = [list(feature["labels"]) for feature in features]
        shared = shared_prompt_prefix(rows_ids, rows_labels)
        input_ids, labels, positions = rows_ids[0][:shared], [IGNORE_INDEX] * shared, list(range(shared))
        for ids, row_labels in zip(rows_ids, rows_labels, strict=True):
            input_ids += ids[shared:]
            labels += [IGNORE_INDEX, *row_labels[shared + 1 :]]  # a row's first token is never predicted here
            positions += range(shared, len(ids))
        return {
            "input_ids": torch.tensor([input_ids]),
            "labels": torch.tensor([labels]),
            "position_ids": torch.tensor([positions]),
        }


def build_collator(
    tokenizer: PreTrainedTokenizerBase, packing: bool, answer_logits_only: bool = False, share_prefix: bool = False
) -> Callable:
    if packing:
        # One row per batch with position_ids restarting per example: transformers derives a
        # block-diagonal mask from them, so attention never crosses examples and nothing is padded.
        flattening = (
            SharedPrefixFlattening()
            if share_prefix
            else DataCollatorWithFlattening(return_position_ids=True, separator_id=IGNORE_INDEX)
        )
        return AnswerLogitsOnly(flattening) if answer_logits_only else flattening
    return DataCollatorForSeq2Seq(tokenizer, padding="longest", label_pad_token_id=-100, pad_to_multiple_of=None)


def supports_answer_logits_only(model: PreTrainedModel, config: RunConfig) -> bool:
    """Built-in transformers causal LMs take `logits_to_keep` and a `shift_labels` loss argument."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return not config.model.trust_remote_code and "logits_to_keep" in inspect.signature(base.forward).parameters
