"""A conversation rendered with the chat template into token ids, the prompt masked; the length summaries of the
tokenized splits."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from tasks.lib.core.plots import pyplot, save_png
from tasks.lib.dataset.data_formats import (
    DataError,
    read_jsonl,
)

SPLITS = ("train", "validation", "test")
IGNORE_INDEX = -100

# ---------------------------------------------------------------- tokenising + masking


def _render_ids(tokenizer, messages: list[dict[str, str]], add_generation_prompt: bool) -> list[int]:
    ids = tokenizer.apply_chat_template(
        messages, tokenize=True, add_generation_prompt=add_generation_prompt, return_dict=False
    )
    if isinstance(ids, dict) or hasattr(ids, "input_ids"):
        ids = ids["input_ids"]
    return list(ids)


def tokenize_conversation(
    messages: list[dict[str, str]], tokenizer, max_length: int, overlong: str = "drop"
) -> dict[str, Any] | None:
    """input_ids + labels (-100 except on assistant answers and their end-of-turn token).

    Returns None when the row is over max_length and `overlong` is "drop", or when truncation (which cuts
    the end) leaves no answer token. The dict's "truncated" flag says whether it was cut.
    """
    if not getattr(tokenizer, "chat_template", None):
        raise DataError("the tokenizer has no chat template; set model.chat_template in the config")
    full = _render_ids(tokenizer, messages, add_generation_prompt=False)
    labels = [IGNORE_INDEX] * len(full)
    special = set(tokenizer.all_special_ids)
    for index, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt = _render_ids(tokenizer, messages[:index], add_generation_prompt=True)
        last = index + 1 == len(messages)
        upto = full if last else _render_ids(tokenizer, messages[: index + 1], add_generation_prompt=False)
        if upto[: len(prompt)] != prompt or full[: len(upto)] != upto:
            raise DataError(
                "the chat template does not render conversations prefix-consistently (the prompt of "
                f"assistant turn {index + 1} is not a prefix of the full rendering), so answer tokens "
                "cannot be located; set model.chat_template to a template that does"
            )
        # Stop after the last special token (the end-of-turn marker), leaving the template's separator masked.
        marks = [j for j in range(len(prompt), len(upto)) if upto[j] in special]
        end = marks[-1] + 1 if marks else len(upto)
        labels[len(prompt) : end] = upto[len(prompt) : end]
    truncated = len(full) > max_length
    if truncated:
        if overlong == "drop":
            return None
        full, labels = full[:max_length], labels[:max_length]
        if all(label == IGNORE_INDEX for label in labels):
            return None
    return {"input_ids": full, "labels": labels, "truncated": truncated}


# ---------------------------------------------------------------- fingerprint


def tokenizer_fingerprint(tokenizer) -> str:
    """Hash of what decides the token ids: the vocabulary, special tokens and the chat template."""
    payload = json.dumps(
        {
            "vocab": sorted(tokenizer.get_vocab().items()),
            "special": sorted(tokenizer.all_special_tokens),
            "chat_template": tokenizer.chat_template,
            "class": type(tokenizer).__name__,
        },
        sort_keys=True,
        ensure_ascii=False,
    )
    return hashlib.sha256(payload.encode()).hexdigest()


def length_summary(lengths: list[int]) -> dict[str, int]:
    """Token lengths of a split's rows (prompt + answer): min, median, 95th percentile, max."""
    if not lengths:
        return {"min": 0, "p50": 0, "p95": 0, "max": 0}
    ordered = sorted(lengths)
    at = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]  # noqa: E731
    return {"min": ordered[0], "p50": at(0.5), "p95": at(0.95), "max": ordered[-1]}


def split_lengths(processed_dir: Path) -> dict[str, list[int]]:
    """Token length of every prepared row, per split (what the data report's histogram shows)."""
    return {
        split: [len(row["input_ids"]) for _, row in read_jsonl(Path(processed_dir) / f"{split}.jsonl")]
        for split in SPLITS
    }


def data_length_histogram(lengths: dict[str, list[int]], max_length: int, path: Path) -> Path:
    """PNG: the token-length distribution of each prepared split, with the data.max_length limit."""
    plt = pyplot()
    figure, axis = plt.subplots(figsize=(7, 3.2))
    bins = range(0, max_length + 9, max(1, (max_length + 8) // 40))
    for split, values in lengths.items():
        axis.hist(values, bins=bins, histtype="step", density=True, linewidth=1.5, label=f"{split} ({len(values)})")
    axis.axvline(max_length, color="grey", linestyle="--", linewidth=0.8, label="data.max_length")
    axis.set_xlabel("tokens per row (prompt + answer)")
    axis.set_ylabel("share of rows")
    axis.legend(fontsize=8)
    return save_png(figure, path)
