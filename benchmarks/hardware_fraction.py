"""How far the forgetting check's scoring is from this machine's limit: the dense base's forward pass (what scoring
runs) in FLOP/s as a fraction of the matrix-multiply rate measured in the same run.

The rate is torch's fp32 GEMM at two shapes (square 2048, and the vocabulary projection: 2,048 tokens x hidden x
vocabulary); the model's FLOPs per token are 2 x its parameters (the input embedding, a lookup, left out; the
tied output projection counted) plus attention's 4 x layers x hidden x the mean context. Median of 5 passes each.

    python -m benchmarks.hardware_fraction [--quick] [--batch 16] [--tokens 128] [--config configs/demo.yaml]
"""

from __future__ import annotations

import statistics
import sys
import time

from benchmarks._common import load_run_config, machine, parser, quiet_libraries, write_results


def _median_seconds(work, repeats: int) -> float:
    work()  # warm-up: thread pools, allocator
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> int:
    quiet_libraries()
    arguments = parser(__doc__.splitlines()[0])
    arguments.add_argument("--batch", type=int, default=16, help="sequences per forward pass")
    arguments.add_argument("--tokens", type=int, default=128, help="tokens per sequence")
    args = arguments.parse_args()
    repeats, batch, tokens = (2, 4, 64) if args.quick else (5, args.batch, args.tokens)

    import torch

    from tasks.io.models import load_scored_model
    from tasks.lib.core import threads

    config = load_run_config(args.config, args.overrides)
    threads.hold_share(config.resources.configured_threads())
    model = load_scored_model(config, None).eval()
    hidden, vocabulary = model.config.hidden_size, model.config.vocab_size
    size = 1024 if args.quick else 2048
    shapes = {"square": (size, size, size), "vocabulary projection": (size, hidden, vocabulary)}
    gemm = {}
    for name, (m, k, n) in shapes.items():
        left, right = torch.randn(m, k), torch.randn(k, n)
        gemm[name] = 2 * m * k * n / _median_seconds(lambda left=left, right=right: left @ right, repeats) / 1e9

    parameters = sum(p.numel() for p in model.parameters()) - model.get_input_embeddings().weight.numel()
    if model.get_output_embeddings().weight is model.get_input_embeddings().weight:
        parameters += model.get_output_embeddings().weight.numel()  # tied: the projection still runs
    attention = 4 * model.config.num_hidden_layers * hidden * tokens / 2
    flops_per_token = 2 * parameters + attention
    ids = torch.randint(0, vocabulary, (batch, tokens))
    with torch.inference_mode():
        seconds = _median_seconds(lambda: model(input_ids=ids), repeats)
    tokens_per_second = batch * tokens / seconds
    achieved = tokens_per_second * flops_per_token / 1e9
    fractions = {name: achieved / rate for name, rate in gemm.items()}

    print("fp32 GEMM: " + ", ".join(f"{name} {rate:.0f} GFLOP/s" for name, rate in gemm.items()))
    print(f"forward, {batch} x {tokens} tokens: {tokens_per_second:.0f} tokens/s = {achieved:.0f} GFLOP/s")
    print("fraction of GEMM: " + ", ".join(f"{name} {value:.2f}" for name, value in fractions.items()))
    markdown = (
        f"**hardware_fraction** ({config.name}'s base, fp32, {torch.get_num_threads()} threads): GEMM "
        + ", ".join(f"{name} {rate:.0f} GFLOP/s" for name, rate in gemm.items())
        + f"; forward on {batch} x {tokens} tokens {tokens_per_second:.0f} tokens/s = {achieved:.0f} GFLOP/s, "
        + "**"
        + ", ".join(f"{value:.2f}x the {name} rate" for name, value in fractions.items())
        + "**"
    )
    write_results(
        "hardware_fraction",
        {
            "config": args.config,
            "machine": machine(),
            "batch": batch,
            "tokens": tokens,
            "gemm_gflops": gemm,
            "flops_per_token": flops_per_token,
            "forward_tokens_per_second": tokens_per_second,
            "forward_gflops": achieved,
            "fraction_of_gemm": fractions,
        },
        markdown,
        args.quick,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
