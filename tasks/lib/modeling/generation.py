"""Chat generation: one implementation for the evaluation, `qlora chat` and the served model.

It needs only torch and transformers, so a registered model ships it (MLflow `code_paths`) and its server answers
with exactly the evaluation's greedy decoding.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import torch
from tqdm import tqdm


@dataclass(frozen=True)
class Generation:
    text: str  # the new tokens, special tokens skipped, stripped
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop": an end-of-turn token was generated; "length": max_new_tokens was reached


def generation_config(model, tokenizer, max_new_tokens: int, temperature: float = 0.0, top_p: float | None = None):
    """Greedy decoding at temperature 0 (the evaluation's rule); sampling at the given temperature otherwise."""
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    config = copy.deepcopy(model.generation_config)
    config.num_beams = 1
    config.do_sample = temperature > 0
    config.temperature = temperature if temperature > 0 else None
    config.top_p = top_p if temperature > 0 else None
    config.top_k = None
    config.max_new_tokens = max_new_tokens
    config.max_length = None
    config.pad_token_id = tokenizer.pad_token_id
    eos = config.eos_token_id
    eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    if tokenizer.eos_token_id is not None:
        eos_ids.add(tokenizer.eos_token_id)
    config.eos_token_id = sorted(eos_ids) or None
    return config


def render_chat(tokenizer, messages: list[dict]) -> str:
    """The conversation through the model's chat template, ready for the assistant's turn."""
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def model_device(model) -> torch.device:
    return next(model.parameters()).device


def generate(
    model,
    tokenizer,
    prompts: list[str],
    max_new_tokens: int,
    batch_size: int,
    temperature: float = 0.0,
    top_p: float | None = None,
    before_batch: Callable[[], object] = lambda: None,
) -> list[Generation]:
    """One generation per rendered prompt, in prompt order (greedy unless temperature > 0); `before_batch` is
    called before each batch (the pipeline fits its CPU threads there)."""
    if tokenizer.pad_token_id is None:
        raise ValueError("the tokenizer has no pad token: set one (load_tokenizer uses the eos token)")
    # Longest prompts first: batches hold prompts of similar length, so little padding.
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]), reverse=True)
    results: list[Generation | None] = [None] * len(prompts)
    config = generation_config(model, tokenizer, max_new_tokens, temperature, top_p)
    stop_ids = set(config.eos_token_id or [])
    device = model_device(model)
    was_training = model.training
    padding_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    model.eval()
    try:
        with (
            torch.no_grad(),
            tqdm(total=len(order), desc="Generating answers", unit="prompt", disable=len(order) <= batch_size) as bar,
        ):
            for start in range(0, len(order), batch_size):
                batch = order[start : start + batch_size]
                before_batch()
                encoded = tokenizer(
                    [prompts[i] for i in batch], return_tensors="pt", padding=True, add_special_tokens=False
                ).to(device)
                output = model.generate(**encoded, generation_config=config)
                new_tokens = output[:, encoded["input_ids"].shape[1] :]
                texts = tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
                for row, (i, text) in enumerate(zip(batch, texts, strict=True)):
                    tokens = new_tokens[row].tolist()
                    stopped = next((k for k, token in enumerate(tokens) if token in stop_ids), None)
                    results[i] = Generation(
                        text=text.strip(),
                        prompt_tokens=int(encoded["attention_mask"][row].sum()),
                        completion_tokens=len(tokens) if stopped is None else stopped + 1,
                        finish_reason="length" if stopped is None else "stop",
                    )
                bar.update(len(batch))
    finally:
        tokenizer.padding_side = padding_side
        model.train(was_training)
    return results  # type: ignore[return-value]


class PromptTooLong(ValueError):
    """A conversation that does not fit the model's context with room for the reply: the caller's error."""


def context_window(model) -> int | None:
    """The most tokens (prompt + reply) the model reads: its config's `max_position_embeddings`, when it says."""
    return getattr(model.config, "max_position_embeddings", None)


def check_fits(prompt_tokens: int, max_new_tokens: int, window: int | None) -> None:
    """Refuse a prompt that leaves no room for `max_new_tokens` in the model's context window (beyond it a model
    answers with noise, not an error)."""
    if window is not None and prompt_tokens + max_new_tokens > window:
        raise PromptTooLong(
            f"the prompt is {prompt_tokens} tokens, but this model reads at most {window} tokens: with max_tokens "
            f"{max_new_tokens} the prompt may have at most {max(window - max_new_tokens, 0)}; shorten the messages "
            "or lower max_tokens"
        )


def chat_reply(
    model, tokenizer, messages: list[dict], max_new_tokens: int, temperature: float = 0.0, top_p: float | None = None
) -> Generation:
    """The assistant's next turn after `messages` (what `qlora chat` and the served model answer); PromptTooLong
    when the conversation and the reply do not fit the model's context window."""
    prompt = render_chat(tokenizer, messages)
    prompt_tokens = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    check_fits(prompt_tokens, max_new_tokens, context_window(model))
    return generate(model, tokenizer, [prompt], max_new_tokens, 1, temperature, top_p)[0]
