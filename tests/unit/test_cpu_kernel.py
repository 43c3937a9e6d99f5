"""4-bit layers give the same gradients after an evaluation pass as before it, on any CPU.

bitsandbytes 0.50 switches a `Linear4bit` to a gradient-less bf16 kernel after its first eval-mode forward
without gradients, but only on CPUs with AVX512-BF16. The first test bites only there; the second repacks the
layers itself, so it runs on every CPU.
"""

from __future__ import annotations

from pathlib import Path

import bitsandbytes as bnb
import pytest
import torch
from bitsandbytes.functional import _convert_weight_packed_for_cpu
from transformers import AutoModelForCausalLM

from tasks.io.models import load_base_model, resolve_model_path
from tasks.lib.config import load_config
from tasks.lib.modeling.loading import bnb_config, pin_cpu_4bit_kernel
from tests.conftest import write_tiny_config


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path):
    root = tmp_path_factory.mktemp("kernel")
    return load_config(write_tiny_config(root, tiny_model_dir, root / "unused"))


def _input_gradient(model) -> torch.Tensor:
    """Gradient of the loss with respect to the input embeddings, in training mode."""
    model.train()
    ids = torch.arange(3, 19).reshape(2, 8) % model.config.vocab_size
    embeds = model.get_input_embeddings()(ids).detach().requires_grad_(True)
    loss = model(inputs_embeds=embeds, labels=ids).loss
    loss.backward()
    assert embeds.grad is not None
    return embeds.grad


def _evaluation_pass(model) -> None:
    model.eval()
    with torch.no_grad():
        model(input_ids=torch.arange(2, 10).reshape(1, 8))


def _layers(model) -> list[bnb.nn.Linear4bit]:
    return [module for module in model.modules() if isinstance(module, bnb.nn.Linear4bit)]


def test_gradients_after_an_evaluation_pass_equal_a_fresh_models(config) -> None:
    fresh = _input_gradient(load_base_model(config.model, config.quantization))
    model = load_base_model(config.model, config.quantization)
    assert _layers(model), "the tiny model should load with 4-bit layers"
    _evaluation_pass(model)
    assert not any(getattr(layer.weight.quant_state, "packing_format_for_cpu", False) for layer in _layers(model))
    assert torch.equal(_input_gradient(model), fresh)


def test_pinning_undoes_a_repacking_that_already_happened(config) -> None:
    """The repacking an AVX512-BF16 CPU does on the first eval pass, done explicitly so it runs on any CPU."""
    path = resolve_model_path(config.model)
    expected = _input_gradient(load_base_model(config.model, config.quantization))
    raw = AutoModelForCausalLM.from_pretrained(
        path, quantization_config=bnb_config(config.quantization), device_map="cpu", dtype=torch.float32
    )
    for layer in _layers(raw):
        layer.support_avx512bf16_for_cpu = True  # what bitsandbytes sets on such a CPU
        layer.weight.data, layer.weight.quant_state = _convert_weight_packed_for_cpu(
            layer.weight.data, layer.weight.quant_state
        )
    assert all(layer.weight.quant_state.packing_format_for_cpu for layer in _layers(raw))
    assert pin_cpu_4bit_kernel(raw) == len(_layers(raw))
    assert not any(getattr(layer.weight.quant_state, "packing_format_for_cpu", False) for layer in _layers(raw))
    # Repacking rounded the quantization scales to bf16 (bitsandbytes' inverse is best effort), so the
    # gradients flow again but only match to bf16 precision: pinning at load time is the exact fix.
    torch.testing.assert_close(_input_gradient(raw), expected, rtol=2e-2, atol=2e-3)
