"""packed_sdpa computes each packed example's attention on its own slice: the same logits and gradients as
transformers' block-diagonal SDPA mask, and plain SDPA for anything that is not a packed row."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from tasks.lib.modeling.packed_attention import NAME, example_bounds, use_packed_attention

LENGTHS = (7, 12, 1, 9)


@pytest.fixture()
def models(tiny_model_dir):
    reference = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="sdpa")
    packed = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="sdpa")
    assert use_packed_attention(packed) and packed.config._attn_implementation == NAME
    return reference, packed


def packed_row(vocab_size: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(3, vocab_size, (1, sum(LENGTHS)), generator=generator)
    position_ids = torch.cat([torch.arange(length) for length in LENGTHS]).unsqueeze(0)
    # No cache, as in training: with one, transformers does not look for packed examples at all.
    return {"input_ids": input_ids, "position_ids": position_ids, "labels": input_ids.clone(), "use_cache": False}


def test_example_bounds_split_where_positions_restart() -> None:
    positions = torch.tensor([[0, 1, 2, 0, 0, 1, 5, 6]])
    assert example_bounds(positions) == [(0, 3), (3, 4), (4, 6), (6, 8)]
    assert example_bounds(torch.arange(5).unsqueeze(0)) == [(0, 5)]


def test_packed_row_matches_the_block_diagonal_mask(models) -> None:
    reference, packed = models
    batch = packed_row(reference.config.vocab_size)
    expected, actual = reference(**batch), packed(**batch)
    assert (expected.logits - actual.logits).abs().max() < 1e-5
    expected.loss.backward()
    actual.loss.backward()
    for (name, want), (_, got) in zip(reference.named_parameters(), packed.named_parameters(), strict=True):
        assert torch.allclose(want.grad, got.grad, atol=1e-6), name

    # Control: the comparison notices attention across examples (the same row with an all-ones mask).
    crossing = reference(**batch, attention_mask=torch.ones_like(batch["input_ids"]))
    assert (crossing.logits - actual.logits).abs().max() > 1e-3


def test_an_example_continuing_a_prefix_sees_it_as_its_own(models) -> None:
    """Two prefixes in one row, each continued by a later example: every continuation gets the logits of the
    prefix + itself alone; a continuation longer than its anchor's prefix is refused."""
    reference, packed = models
    generator = torch.Generator().manual_seed(1)
    tokens = torch.randint(3, reference.config.vocab_size, (30,), generator=generator).tolist()
    prefix_a, tail_a, prefix_b, tail_b = tokens[:6], tokens[6:10], tokens[10:15], tokens[15:20]
    row = [*prefix_a, *tokens[20:23], *tail_a, *prefix_b, *tail_b]
    positions = [*range(9), *range(6, 10), *range(5), *range(5, 10)]
    with torch.no_grad():
        got = packed(input_ids=torch.tensor([row]), position_ids=torch.tensor([positions]), use_cache=False).logits[0]
        for prefix, tail, start in ((prefix_a, tail_a, 9), (prefix_b, tail_b, 18)):
            want = reference(input_ids=torch.tensor([[*prefix, *tail]])).logits[0, len(prefix) :]
            assert (got[start : start + len(tail)] - want).abs().max() < 1e-5
        with pytest.raises(ValueError, match="continues a 12-token prefix"):
            packed(
                input_ids=torch.tensor([row]),
                position_ids=torch.tensor([[*range(9), *range(12, 16), *range(10)]]),
                use_cache=False,
            )


def test_anything_else_is_plain_sdpa(models) -> None:
    reference, packed = models
    input_ids = packed_row(reference.config.vocab_size)["input_ids"][:, :28].view(2, -1)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, :5] = 0  # left padding
    with torch.no_grad():
        for kwargs in ({"input_ids": input_ids, "attention_mask": attention_mask}, {"input_ids": input_ids[:1]}):
            assert torch.equal(reference(**kwargs).logits, packed(**kwargs).logits)
        prompt = {"input_ids": input_ids, "attention_mask": attention_mask, "max_new_tokens": 4, "do_sample": False}
        assert torch.equal(reference.generate(**prompt), packed.generate(**prompt))


def test_only_sdpa_models_are_switched(tiny_model_dir) -> None:
    eager = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="eager")
    assert not use_packed_attention(eager) and eager.config._attn_implementation == "eager"


def test_the_attention_choice_resolves_per_machine_and_refuses_what_cannot_run() -> None:
    from tasks.lib.modeling.packed_attention import resolve_attention

    assert resolve_attention("auto", packing=True, cuda=False, flash_attn_installed=False) == "packed_loop"
    assert resolve_attention("auto", packing=False, cuda=False, flash_attn_installed=False) == "sdpa"
    assert resolve_attention("auto", packing=True, cuda=True, flash_attn_installed=True) == "flash_attention_2"
    assert resolve_attention("auto", packing=True, cuda=True, flash_attn_installed=False) == "sdpa"
    assert resolve_attention("sdpa", packing=True, cuda=False, flash_attn_installed=False) == "sdpa"
    with pytest.raises(ValueError, match="flash-attn"):
        resolve_attention("flash_attention_2", packing=True, cuda=False, flash_attn_installed=True)
