"""The cheap CPU LoRA dropout is Bernoulli dropout with the configured p: drop rate within binomial bounds in
every lane of its 64-bit draws, unbiased output, gradients through the same mask, seeded, and swapped into a
PEFT model only where PEFT put an nn.Dropout."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from tasks.lib.modeling.lora_dropout import CheapCpuDropout, use_cheap_lora_dropout


def _within_binomial(dropped: int, n: int, p: float, sigmas: float = 5.0) -> bool:
    return abs(dropped - n * p) <= sigmas * math.sqrt(n * p * (1 - p))


@pytest.mark.parametrize("p", [0.05, 0.1, 0.5])
def test_drop_rate_matches_p_in_every_lane(p: float) -> None:
    torch.manual_seed(0)
    out = CheapCpuDropout(p).train()(torch.ones(400, 1000))
    dropped = out == 0
    # One 64-bit draw feeds four consecutive elements: each position in the group of four is its own lane.
    for lane in range(4):
        lane_drops = dropped.flatten()[lane::4]
        assert _within_binomial(int(lane_drops.sum()), lane_drops.numel(), p), lane
    p_used = round(p * 2**15) / 2**15
    assert abs(p_used - p) <= 2**-16
    assert torch.allclose(out[~dropped], torch.tensor(1 / (1 - p_used)))


def test_output_is_unbiased_and_gradients_use_the_same_mask() -> None:
    torch.manual_seed(1)
    inputs = torch.randn(300, 500, requires_grad=True)
    out = CheapCpuDropout(0.2).train()(inputs)
    (out * 3).sum().backward()
    kept = out != 0
    scale = out[kept] / inputs.detach()[kept]
    assert torch.allclose(scale, scale[0]) and scale[0] > 1
    assert torch.equal(inputs.grad != 0, kept)
    assert torch.allclose(inputs.grad[kept], 3 * scale[0])
    assert abs(float((out.detach() / inputs.detach()).mean()) - 1) < 0.01


def test_same_seed_same_mask_and_eval_or_zero_p_is_identity() -> None:
    dropout = CheapCpuDropout(0.3).train()
    inputs = torch.randn(64, 64)
    torch.manual_seed(7)
    first = dropout(inputs)
    torch.manual_seed(7)
    assert torch.equal(first, dropout(inputs))
    assert not torch.equal(first, dropout(inputs))
    assert torch.equal(dropout.eval()(inputs), inputs)
    assert torch.equal(CheapCpuDropout(0.0).train()(inputs), inputs)


def test_only_lora_dropouts_are_swapped(tiny_model_dir: Path) -> None:
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], lora_dropout=0.1))
    before = model.state_dict()
    swapped = use_cheap_lora_dropout(model)
    assert swapped == 2 * base.config.num_hidden_layers
    dropouts = [module for module in model.modules() if isinstance(module, torch.nn.Dropout)]
    assert sum(isinstance(module, CheapCpuDropout) for module in dropouts) == swapped
    assert all(module.p == 0.1 for module in dropouts if isinstance(module, CheapCpuDropout))
    assert model.state_dict().keys() == before.keys()  # nothing new is saved with the adapter
    assert use_cheap_lora_dropout(model) == 0
