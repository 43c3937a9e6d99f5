"""Benchmark scoring speed: the pipeline's scorer (SharedContextLM) against lm-eval's HFLM on the same requests.

One process, one model (the dense base the forgetting check scores, as `qlora score-base` loads it), the demo's
benchmarks on the same drawn items: each scorer scores them twice, in the order HFLM, shared, shared, HFLM, so
drift in the machine's speed falls on both. Prints items per second of each and their ratio, and checks that the
per-item results are the same (the log-likelihoods themselves are compared request by request in
tests/unit/test_shared_context_lm.py).

    python -m benchmarks.scoring_speed [--quick] [--items 100] [--documents 4] [--config configs/demo.yaml]
"""

from __future__ import annotations

import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from benchmarks._common import load_run_config, parser, quiet_libraries, ratio, stopwatch, write_results


@contextmanager
def lm_eval_hflm(model: Any):
    """What `run_benchmarks` scores with, replaced by lm-eval's own HF model class."""
    from lm_eval.models.huggingface import HFLM

    yield HFLM


def main() -> int:
    quiet_libraries()
    arguments = parser(__doc__.splitlines()[0])
    arguments.add_argument("--items", type=int, default=100, help="items per accuracy benchmark")
    arguments.add_argument("--documents", type=int, default=4, help="WikiText documents")
    args = arguments.parse_args()
    items, documents = (8, 1) if args.quick else (args.items, args.documents)

    import tasks.lib.general_benchmarks.shared_context_lm as shared_context_lm
    from tasks.io.models import load_scored_model, load_tokenizer
    from tasks.lib.general_benchmarks.benchmark_scoring import configured_plans, run_benchmarks

    overrides = [*args.overrides, f"forgetting.limit={items}", f"forgetting.perplexity_limit={documents}"]
    config = load_run_config(args.config, overrides)
    bench = config.forgetting
    plans = configured_plans(config)
    model, tokenizer = load_scored_model(config, None), load_tokenizer(config.model)
    ours = shared_context_lm.shared_context_scoring

    def score(scorer: str) -> tuple[dict, float]:
        shared_context_lm.shared_context_scoring = ours if scorer == "shared" else lm_eval_hflm
        try:
            with stopwatch() as elapsed:
                scores = run_benchmarks(
                    model, tokenizer, plans, Path(bench.data_dir), None, bench.batch_size, bench.max_length
                )
            return scores, elapsed()
        finally:
            shared_context_lm.shared_context_scoring = ours

    seconds: dict[str, list[float]] = {"hflm": [], "shared": []}
    results: dict[str, dict] = {}
    for scorer in ("hflm", "shared", "shared", "hflm"):
        scores, took = score(scorer)
        seconds[scorer].append(took)
        results[scorer] = scores
    different = [name for name in results["hflm"] if results["hflm"][name].items != results["shared"][name].items]
    if different:
        print(f"per-item results differ on {different}")  # e.g. a float tie on another CPU; reported, not hidden
    scored = sum(int(values["n"]) for values in results["shared"].values())
    rate = {scorer: ratio(2 * scored, sum(times)) for scorer, times in seconds.items()}
    speedup = ratio(rate["shared"], rate["hflm"])
    print(f"\n{len(plans)} benchmarks, {items} items each ({documents} WikiText documents), batch {bench.batch_size}")
    for scorer, times in seconds.items():
        print(f"  {scorer:7s} {rate[scorer]:7.2f} items/s  ({', '.join(f'{t:.1f}' for t in times)} s)")
    print(f"shared-context / HFLM: {speedup:.2f}x; per-item results equal: {not different}")
    markdown = (
        f"**scoring_speed** ({config.name}'s {len(plans)} benchmarks, {items} drawn items each, {documents} WikiText "
        f"documents, batch {bench.batch_size}): SharedContextLM {rate['shared']:.2f} items/s, lm-eval HFLM "
        f"{rate['hflm']:.2f} items/s = **{speedup:.2f}x**, per-item results {'equal' if not different else 'DIFFER'}"
    )
    write_results(
        "scoring_speed",
        {
            "config": args.config,
            "overrides": overrides,
            "benchmarks": [plan.name for plan in plans],
            "items": items,
            "documents": documents,
            "batch_size": bench.batch_size,
            "seconds": seconds,
            "items_per_second": rate,
            "speedup": speedup,
            "per_item_results_differ": different,
        },
        markdown,
        args.quick,
    )
    return 0 if not different else 1


if __name__ == "__main__":
    sys.exit(main())
