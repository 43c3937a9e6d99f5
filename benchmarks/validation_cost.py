"""Validation cost: the Trainer's evaluation pass with plain packing vs the shared prompt prefix.

Builds the model as training does (4-bit base, LoRA adapter with its B matrices set to small random values so
the adapter changes the loss) and runs `Trainer.evaluate()` on the validation split (`train.eval_max_rows`
rows, `train.batch_size` per batch) with the pipeline's two packed collators: every row's tokens packed into one
row per batch, and the same with the prompt prefix the batch's rows share computed once. The variants alternate
for --repeats rounds after an untimed warm-up of each; the result is the ratio of median wall times, the tokens
each computes, and the two validation losses (early stopping compares these: equal losses mean equal
decisions).

    python -m benchmarks.validation_cost [--quick] [--repeats 5] [--config configs/demo.yaml] [--set k=v]
"""

from __future__ import annotations

import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks._common import load_run_config, parser, quiet_libraries, ratio, stopwatch, write_results

VARIANTS = {"plain packing": False, "shared prompt prefix": True}


class TokenCount:
    """Counts the tokens each forward computes (the packed row's length)."""

    def __init__(self, inner: Any):
        self.inner = inner
        self.tokens = 0

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        batch = self.inner(features)
        self.tokens += batch["input_ids"].numel()
        return batch


def adapted_model(config: Any) -> Any:
    import torch

    from tasks.io.models import load_base_model
    from tasks.lib.modeling.loading import pin_cpu_4bit_kernel
    from tasks.lib.modeling.packed_attention import set_attention
    from tasks.lib.training.trainer import attach_lora

    torch.manual_seed(config.seed)
    base = load_base_model(config.model, config.quantization)
    pin_cpu_4bit_kernel(base)
    set_attention(base, "packed_loop")
    model = attach_lora(base, config, gradient_checkpointing=False)
    for name, parameter in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(parameter, std=0.02)
    return model


def main() -> int:
    quiet_libraries()
    arguments = parser(__doc__.splitlines()[0])
    arguments.add_argument("--repeats", type=int, help="timed rounds per variant (default 5; quick: 1)")
    args = arguments.parse_args()
    repeats = args.repeats or (1 if args.quick else 5)
    overrides = [*args.overrides, *(["train.eval_max_rows=16"] if args.quick else [])]
    config = load_run_config(args.config, overrides)

    from transformers import Trainer

    from tasks.data import run_prepare
    from tasks.io.models import load_tokenizer
    from tasks.lib.training.collators import build_collator, supports_answer_logits_only
    from tasks.lib.training.trainer import read_token_split, training_arguments

    data_dir = Path(run_prepare(config).processed_dir)
    eval_set = read_token_split(data_dir / "validation.jsonl", config.train.eval_max_rows)
    tokenizer = load_tokenizer(config.model)
    model = adapted_model(config)
    answer_logits_only = supports_answer_logits_only(model, config)
    seconds: dict[str, list[float]] = {name: [] for name in VARIANTS}
    losses: dict[str, float] = {}
    tokens: dict[str, int] = {}
    with tempfile.TemporaryDirectory(prefix="qlora-bench-validation-") as work:
        trainers = {}
        for name, share in VARIANTS.items():
            collator = TokenCount(build_collator(tokenizer, True, answer_logits_only, share))
            trainers[name] = (
                Trainer(
                    model=model,
                    args=training_arguments(config, Path(work) / name, "adamw_torch", False),
                    eval_dataset=eval_set,
                    data_collator=collator,
                    processing_class=tokenizer,
                ),
                collator,
            )
            losses[name] = trainers[name][0].evaluate()["eval_loss"]  # warm-up, untimed
            tokens[name] = collator.tokens
        for _ in range(repeats):
            for name, (trainer, _) in trainers.items():
                with stopwatch() as elapsed:
                    loss = trainer.evaluate()["eval_loss"]
                seconds[name].append(elapsed())
                if loss != losses[name]:
                    raise RuntimeError(f"{name}: validation loss changed between passes ({losses[name]} -> {loss})")

    medians = {name: statistics.median(values) for name, values in seconds.items()}
    plain, shared = medians["plain packing"], medians["shared prompt prefix"]
    token_ratio = ratio(tokens["shared prompt prefix"], tokens["plain packing"])
    loss_difference = abs(losses["plain packing"] - losses["shared prompt prefix"])
    print(f"\nvalidation: {len(eval_set)} rows, batch {config.train.batch_size}, {repeats} timed rounds")
    for name in VARIANTS:
        print(f"  {name:22s} {medians[name]:6.2f} s  {tokens[name]:6d} tokens  eval_loss {losses[name]:.6f}")
    print(f"shared / plain: {ratio(shared, plain):.2f}x time, {token_ratio:.2f}x tokens")
    print(f"|eval_loss difference|: {loss_difference:.2e}")

    markdown = (
        f"**validation_cost** ({config.name}: {len(eval_set)} validation rows, batch {config.train.batch_size}, "
        f"median of {repeats}): shared prompt prefix {shared:.2f} s vs plain packing {plain:.2f} s = "
        f"{ratio(shared, plain):.2f}x time, {token_ratio:.2f}x tokens; validation loss "
        f"{losses['shared prompt prefix']:.6f} vs {losses['plain packing']:.6f} "
        f"(difference {loss_difference:.1e})"
    )
    write_results(
        "validation_cost",
        {
            "config": args.config,
            "overrides": overrides,
            "rows": len(eval_set),
            "batch_size": config.train.batch_size,
            "repeats": repeats,
            "seconds": seconds,
            "median_seconds": medians,
            "tokens_computed": tokens,
            "eval_loss": losses,
            "eval_loss_difference": loss_difference,
            "time_ratio": ratio(shared, plain),
            "token_ratio": token_ratio,
        },
        markdown,
        args.quick,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
