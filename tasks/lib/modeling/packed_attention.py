"""Attention for packed batches that only computes what the block-diagonal mask keeps.

Packing puts several examples in one row with `position_ids` restarting at 0 for each. transformers' SDPA
path then builds a block-diagonal causal mask over the whole row and computes every query against every key,
so attention costs grow with the square of the packed length although each example only attends to itself
(on the SST-2 demo: about a seventh of a CPU training step, for a row of 8 examples). `packed_sdpa` runs
causal SDPA on each example's slice instead: the same outputs without the masked-out work. Anything that is
not a single packed row (padded batches, generation with a cache, sliding-window layers) goes to transformers'
own SDPA unchanged.

A packed row may also hold shared prefixes: tokens several examples start with, stored once (the prompt a training batch
shares, `SharedPrefixFlattening` in tasks/lib/training/; a question's context shared by its answer choices,
tasks/lib/general_benchmarks/shared_context_lm.py). An example whose first position is p > 0 continues the nearest
example before it that starts at position 0: it attends to that example's first p tokens and, causally, to itself,
exactly as it would with its own copy of them.
"""

from __future__ import annotations

import torch
from transformers import AttentionInterface, PreTrainedModel
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

NAME = "packed_sdpa"


def example_bounds(position_ids: torch.Tensor) -> list[tuple[int, int]]:
    """(start, end) of each example in a (1, length) `position_ids` row, split where transformers' packed-mask
    detection splits it: wherever the position does not follow on from the previous one."""
    positions = position_ids[0]
    starts = [0, *((positions[1:] - positions[:-1] != 1).nonzero().squeeze(-1) + 1).tolist()]
    return list(zip(starts, [*starts[1:], positions.shape[0]], strict=True))


def packed_sdpa(module, query, key, value, attention_mask, position_ids=None, **kwargs):
    # transformers gives a packed row (no padding mask, restarting positions) a block-diagonal mask, and a row
    # whose caller passed an attention mask a plain causal one (None here): only the former is split.
    packed_row = (
        attention_mask is not None
        and position_ids is not None
        and query.shape[0] == 1
        and query.shape[2] == key.shape[2] == position_ids.shape[-1]
        and not getattr(module, "sliding_window", None)
        and not kwargs.get("sliding_window")
    )
    bounds = example_bounds(position_ids) if packed_row else []
    if len(bounds) <= 1:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    firsts = position_ids[0, [start for start, _ in bounds]].tolist()
    outputs, anchor, anchor_end = [], 0, 0
    for (start, end), prefix in zip(bounds, firsts, strict=True):
        if prefix == 0:
            anchor, anchor_end = start, end
            keys, values, mask = key[:, :, start:end], value[:, :, start:end], None
        else:
            if anchor + prefix > anchor_end:
                raise ValueError(
                    f"the example at {start} continues a {prefix}-token prefix, but the example it continues "
                    f"(at {anchor}) has {anchor_end - anchor} tokens"
                )
            keys = torch.cat([key[:, :, anchor : anchor + prefix], key[:, :, start:end]], dim=2)
            values = torch.cat([value[:, :, anchor : anchor + prefix], value[:, :, start:end]], dim=2)
            mask = prefix_causal_mask(prefix, end - start, query.device)
        outputs.append(sdpa_attention_forward(module, query[:, :, start:end], keys, values, mask, **kwargs)[0])
    return torch.cat(outputs, dim=1), None


def prefix_causal_mask(prefix: int, length: int, device: torch.device) -> torch.Tensor:
    """(1, 1, length, prefix + length) boolean mask: every query sees the whole prefix, then itself causally."""
    own = torch.ones(length, length, dtype=torch.bool, device=device).tril()
    seen = torch.cat([torch.ones(length, prefix, dtype=torch.bool, device=device), own], dim=1)
    return seen[None, None]


def register_packed_attention() -> None:
    """Make `packed_sdpa` known to transformers (idempotent); done when a model is switched, not at import."""
    AttentionInterface.register(NAME, packed_sdpa)
    AttentionMaskInterface.register(NAME, ALL_MASK_ATTENTION_FUNCTIONS["sdpa"])


def use_packed_attention(model: PreTrainedModel) -> bool:
    """Switches a model that uses SDPA to `packed_sdpa`; returns whether it did."""
    if getattr(model.config, "_attn_implementation", None) != "sdpa":
        return False
    register_packed_attention()
    model.set_attn_implementation(NAME)
    return model.config._attn_implementation == NAME


def resolve_attention(choice: str, packing: bool, cuda: bool, flash_attn_installed: bool) -> str:
    """The attention kernel `train.attention` stands for on this machine."""
    if choice == "auto":
        if cuda:
            return "flash_attention_2" if flash_attn_installed else "sdpa"
        return "packed_loop" if packing else "sdpa"
    if choice == "flash_attention_2" and not (cuda and flash_attn_installed):
        raise ValueError("train.attention=flash_attention_2 needs a CUDA GPU and the flash-attn package")
    return choice


def set_attention(model: PreTrainedModel, attention: str) -> str:
    """Apply a resolved attention choice to a loaded model; returns what the model now uses."""
    if attention == "packed_loop":
        use_packed_attention(model)
    elif attention != model.config._attn_implementation:
        model.set_attn_implementation(attention)
    return model.config._attn_implementation
