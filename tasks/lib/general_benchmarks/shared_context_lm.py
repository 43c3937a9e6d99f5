"""lm-eval's HF model, scoring the answer choices of a question in one packed row that holds their context once.

lm-eval scores a multiple-choice question as one (context, continuation) request per choice: each is computed
separately, the context included, in padded batches, and every position is projected onto the vocabulary. Here
requests are packed into rows without padding, those that share a context together: the context once, then each
continuation, whose positions continue from the context so that packed_sdpa (tasks/lib/modeling/packed_attention.py)
lets it attend to the context and itself. The LM head runs only where a continuation token is predicted (for LAMBADA,
one or two positions of a hundred). Each request gets the log-likelihood and greedy flag lm-eval's own computation gives
(tested request by request against `HFLM`). Requests lm-eval would truncate go to `HFLM` unchanged.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from lm_eval.models.huggingface import HFLM
from tqdm import tqdm

from tasks.lib.core import threads
from tasks.lib.modeling.packed_attention import NAME as PACKED_ATTENTION
from tasks.lib.modeling.packed_attention import use_packed_attention

ROW_TOKENS_PER_BATCH_ITEM = 128  # a packed row holds up to batch_size x this many tokens
Request = tuple[Any, Sequence[int], Sequence[int]]  # (strings, context tokens, continuation tokens)


@dataclass
class PackedRow:
    input_ids: list[int] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)
    predicting: dict[int, list[int]] = field(default_factory=dict)  # request -> row indices predicting its tokens

    def add_group(self, context: Sequence[int], continuations: dict[int, Sequence[int]]) -> None:
        """The context once, then each continuation but its last token (no position predicts past it)."""
        anchor = len(self.input_ids)
        self.input_ids += context
        self.positions += range(len(context))
        for request, continuation in continuations.items():
            start = len(self.input_ids)
            self.input_ids += continuation[:-1]
            self.positions += range(len(context), len(context) + len(continuation) - 1)
            self.predicting[request] = [anchor + len(context) - 1, *range(start, start + len(continuation) - 1)]


def pack_groups(groups: list[tuple[Sequence[int], dict[int, Sequence[int]]]], row_tokens: int) -> list[PackedRow]:
    """Groups (a context and its requests' continuations) into rows of about `row_tokens` tokens; a group is never
    split, so one longer than that is a row of its own."""
    rows: list[PackedRow] = []
    for context, continuations in groups:
        size = len(context) + sum(len(continuation) - 1 for continuation in continuations.values())
        if not rows or len(rows[-1].input_ids) + size > row_tokens:
            rows.append(PackedRow())
        rows[-1].add_group(context, continuations)
    return rows


def shared_context_groups(
    requests: Sequence[Request], max_length: int
) -> tuple[list[tuple[Sequence[int], dict[int, Sequence[int]]]], list[int]]:
    """Requests grouped by context (a group may hold one), and those lm-eval would truncate (left for HFLM)."""
    by_context: dict[tuple[int, ...], dict[int, Sequence[int]]] = {}
    truncated = []
    for index, (_, context, continuation) in enumerate(requests):
        if context and len(context) + len(continuation) <= max_length + 1:
            by_context.setdefault(tuple(context), {})[index] = continuation
        else:
            truncated.append(index)
    return [(list(context), members) for context, members in by_context.items()], truncated


class SharedContextLM(HFLM):
    """`HFLM` whose log-likelihood requests are scored in packed rows, each context once (see the module)."""

    def _loglikelihood_tokens(
        self, requests: list[Request], disable_tqdm: bool = False, override_bs: int | None = None
    ) -> list[tuple[float, bool]]:
        if self.backend != "causal" or self.model.config._attn_implementation != PACKED_ATTENTION:
            return super()._loglikelihood_tokens(requests, disable_tqdm, override_bs)
        groups, truncated = shared_context_groups(requests, self.max_length)
        results: list[tuple[float, bool] | None] = [None] * len(requests)
        if truncated:
            answers = super()._loglikelihood_tokens([requests[i] for i in truncated], disable_tqdm, override_bs)
            for index, answer in zip(truncated, answers, strict=True):
                results[index] = answer
        batch = self.batch_size if isinstance(self.batch_size, int) else 16
        # lm-eval's own bar, for the packed rows: requests done of all, rate and time left (a line every
        # TQDM_MININTERVAL seconds, 20 from the command line), so a long scoring never looks stuck.
        with tqdm(
            total=len(requests) - len(truncated), desc="Scoring requests (packed)", unit="req", disable=disable_tqdm
        ) as bar:
            for row in pack_groups(groups, batch * ROW_TOKENS_PER_BATCH_ITEM):
                answers = self._score_row(row, requests)
                for index, answer in answers.items():
                    results[index] = answer
                bar.update(len(answers))
        return results  # type: ignore[return-value]

    def _score_row(self, row: PackedRow, requests: Sequence[Request]) -> dict[int, tuple[float, bool]]:
        threads.fit()
        order = list(row.predicting)
        keep = torch.tensor([i for request in order for i in row.predicting[request]], device=self.device)
        with (
            torch.no_grad(),
            torch.autocast(
                device_type=self.device.type,
                dtype=self.mixed_precision_dtype,
                enabled=self.mixed_precision_dtype is not None,
            ),
        ):
            logits = self.model(
                input_ids=torch.tensor([row.input_ids], device=self.device),
                position_ids=torch.tensor([row.positions], device=self.device),
                logits_to_keep=keep,
                use_cache=False,  # with a cache, transformers would not read the row as packed examples
            ).logits[0]
        log_probs = torch.log_softmax(logits, dim=-1, dtype=self.softmax_dtype)
        answers, offset = {}, 0
        for request in order:
            continuation = torch.tensor(requests[request][2], device=self.device)
            scored = log_probs[offset : offset + len(continuation)]
            offset += len(continuation)
            greedy = bool((scored.argmax(dim=-1) == continuation).all())
            answers[request] = (float(scored.gather(1, continuation[:, None]).sum()), greedy)
        return answers


@contextmanager
def shared_context_scoring(model: Any) -> Iterator[type[HFLM]]:
    """The lm-eval model class to score `model` with: `SharedContextLM` while the model runs packed_sdpa (switched
    on for the duration when it uses SDPA and takes `logits_to_keep`), else plain `HFLM`."""
    config = getattr(model, "config", None)
    previous = getattr(config, "_attn_implementation", None)
    takes_kept_logits = "logits_to_keep" in inspect.signature(model.forward).parameters
    if takes_kept_logits and (previous == PACKED_ATTENTION or use_packed_attention(model)):
        try:
            yield SharedContextLM
        finally:
            if previous != PACKED_ATTENTION:
                model.set_attn_implementation(previous)
    else:
        yield HFLM
