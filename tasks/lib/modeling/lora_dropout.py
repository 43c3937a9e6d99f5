"""LoRA dropout whose CPU masks cost a quarter of torch's.

PEFT drops out the input of every LoRA layer (`lora_dropout`, an `nn.Dropout`). On the CPU, torch draws each
mask element with its own 32-bit Mersenne Twister draw (`bernoulli_`): on the demo that is about a fifth of a
QLoRA training step, more than every 4-bit dequantization together (benchmarks/train_throughput.py). Here one
64-bit draw gives four independent, uniform 15-bit numbers, and an element is dropped when its number is below
round(p * 2**15): Bernoulli dropout with probability p_q = round(p * 2**15) / 2**15 (|p_q - p| <= 2**-16),
kept elements scaled by 1 / (1 - p_q) so the expected output is the input, as with torch's. The draws come
from torch's seeded CPU generator, so runs repeat and resume exactly. GPU tensors, evaluation mode and a p
that rounds to 0 or 1 use torch's own dropout.
"""

from __future__ import annotations

import torch

_LEVELS = 2**15


class CheapCpuDropout(torch.nn.Dropout):
    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        threshold = round(self.p * _LEVELS)
        if not self.training or inputs.device.type != "cpu" or threshold in (0, _LEVELS):
            return super().forward(inputs)
        count = inputs.numel()
        words = torch.empty((count + 3) // 4, dtype=torch.int64).random_()  # [0, 2**63): 4 x 15 random bits
        numbers = words.view(torch.int16)[:count].view(inputs.shape).bitwise_and_(_LEVELS - 1)
        keep = (numbers >= threshold).to(inputs.dtype).mul_(_LEVELS / (_LEVELS - threshold))
        return inputs * keep


def use_cheap_lora_dropout(model: torch.nn.Module) -> int:
    """Swap every LoRA dropout of a PEFT model for `CheapCpuDropout` with the same p; returns how many."""
    swapped = 0
    for module in model.modules():
        dropouts = getattr(module, "lora_dropout", None)
        if not isinstance(dropouts, torch.nn.ModuleDict):
            continue
        for name, dropout in dropouts.items():
            if type(dropout) is torch.nn.Dropout:
                dropouts[name] = CheapCpuDropout(dropout.p)
                swapped += 1
    return swapped
