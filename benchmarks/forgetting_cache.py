"""Forgetting checks with and without cached base scores, and lm-eval scoring throughput.

Runs the pipeline's own step function, tasks.forgetting.run_forgetting_check, twice on the same config and
merged model, starting from an empty score cache: the first check computes the base model's benchmark scores
(and caches them) and scores the merged model; the second reads the base scores from the cache and scores only
the merged model. Prints both wall times (each includes loading the models) and their ratio.

Scoring throughput, in benchmark items per second at `forgetting.batch_size` (an item is a question for the
multiple-choice tasks and LAMBADA, a document for WikiText), comes from timing every lm-eval pass
(tasks.lib.general_benchmarks.benchmark_scoring.evaluate_lm) inside those checks.

The adapter is --adapter DIR, else a freshly initialised LoRA adapter (scoring costs the same whatever its
weights). MLflow logging and the score cache go to a temporary folder: the shared ones are not touched.
Both checks score every item in one look (`forgetting.look_every=null`): the cache's effect is read on whole
scoring passes; a group-sequential gate reads the same cached base scores and scores the tuned model in blocks.

    python -m benchmarks.forgetting_cache [--quick] [--adapter DIR] [--config configs/demo.yaml] [--set k=v]
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks._common import (
    Calls,
    isolated_overrides,
    load_run_config,
    parser,
    patch_timer,
    quiet_libraries,
    ratio,
    stopwatch,
    write_results,
)


def fresh_adapter(config: Any, out_dir: Path) -> Path:
    """An untrained LoRA adapter, built exactly as training builds it."""
    from tasks.io.models import load_base_model
    from tasks.lib.training.trainer import attach_lora

    model = attach_lora(load_base_model(config.model, config.quantization), config, gradient_checkpointing=False)
    model.save_pretrained(out_dir, safe_serialization=True)
    return out_dir


def merged_model(config: Any, adapter: Path, out_dir: Path) -> Path:
    """The adapter merged as the pipeline's merge step does (without its check: only scoring is timed)."""
    from tasks.io.models import load_tokenizer, merge_base_loader
    from tasks.lib.modeling.merging import merge_adapter

    return merge_adapter(
        merge_base_loader(config), adapter, config.merge.strategy, out_dir, load_tokenizer(config.model)
    )


def scoring_passes(calls: Calls, phases: list[str]) -> list[dict[str, Any]]:
    """One row per lm-eval pass: which check and model it belonged to, its benchmarks, items, seconds."""
    rows = []
    for (_, seconds, scores), phase in zip(calls.records, phases, strict=True):
        items = int(sum(values.get("n", 0) for values in scores.values()))
        rows.append(
            {
                "phase": phase,
                "benchmarks": sorted(scores),
                "items": items,
                "seconds": seconds,
                "items_per_second": ratio(items, seconds),
            }
        )
    return rows


FIXED_DESIGN = ["forgetting.look_every=null", "forgetting.perplexity_look_every=null"]


def main() -> int:
    quiet_libraries()
    arguments = parser(__doc__.splitlines()[0])
    arguments.add_argument("--adapter", help="adapter folder (default: a fresh, untrained LoRA adapter)")
    args = arguments.parse_args()

    import tasks.forgetting
    import tasks.lib.general_benchmarks.benchmark_scoring
    from tasks.data import run_prepare
    from tasks.lib.gate.decision import task_row
    from tasks.lib.modeling.merge_check import MergeCheck
    from tasks.lib.run.refs import MergeRef, TaskEvalRef
    from tasks.pipeline_run import start_pipeline_run

    with tempfile.TemporaryDirectory(prefix="qlora-bench-forgetting-") as work:
        root = Path(work)
        overrides = [
            *FIXED_DESIGN,
            *args.overrides,
            *(["forgetting.limit=1"] if args.quick else []),
            *isolated_overrides(root),
        ]
        config = load_run_config(args.config, overrides)
        bench = config.forgetting
        if not (bench.enabled and bench.benchmarks):
            arguments.error("forgetting is disabled or lists no benchmarks in this config")
        context = start_pipeline_run(config, None, run_prepare(config))
        adapter = Path(args.adapter) if args.adapter else fresh_adapter(config, root / "adapter")
        merged = MergeRef(
            merged_dir=str(merged_model(config, adapter, root / "merged")),
            strategy=config.merge.strategy,
            fidelity=MergeCheck.model_construct(dtype="not checked: a benchmark of the forgetting step"),
            mlflow_run_id="",
        )
        metric = config.evaluation.primary_metric
        evaluation = TaskEvalRef(
            base={metric: 0.0},
            tuned={metric: 1.0},
            primary_metric=metric,
            n_items=0,
            markdown="",
            mlflow_run_id="",
            task=task_row(None, None, config.gate, metric),
        )

        passes, lm_eval_calls = Calls(), Calls()
        undo = [
            patch_timer(passes, tasks.forgetting, "score_benchmarks"),
            patch_timer(lm_eval_calls, tasks.lib.general_benchmarks.benchmark_scoring, "evaluate_lm"),
        ]
        try:
            checks = []
            for expect_cached in (False, True):
                with stopwatch() as elapsed:
                    ref = tasks.forgetting.run_forgetting_check(config, context, merged, evaluation)
                if ref.base_scores_cached != expect_cached:
                    raise RuntimeError(f"expected base_scores_cached={expect_cached}, got {ref.base_scores_cached}")
                checks.append({"seconds": elapsed(), "base_scores_cached": ref.base_scores_cached})
        finally:
            for restore in undo:
                restore()

    phases = ["first check, base", "first check, tuned", "second check, tuned"]
    if len(passes.records) != len(phases):
        raise RuntimeError(f"expected {len(phases)} scoring passes, timed {len(passes.records)}")
    per_pass = scoring_passes(passes, phases)
    groups_per_pass = len(lm_eval_calls.records) // len(phases)
    per_group = scoring_passes(lm_eval_calls, [phase for phase in phases for _ in range(groups_per_pass)])
    first, second = checks[0]["seconds"], checks[1]["seconds"]
    cached_ratio = ratio(second, first)

    print(f"\nbenchmarks {bench.benchmarks}, limit {bench.limit}, batch size {bench.batch_size}")
    for row in per_group:
        print(
            f"  {row['phase']:20s} {','.join(row['benchmarks']):40s} {row['items']:5d} items "
            f"{row['seconds']:8.1f} s {row['items_per_second']:7.2f} items/s"
        )
    print(f"first forgetting check (base scores computed): {first:.1f} s")
    print(f"second forgetting check (base scores cached):  {second:.1f} s")
    print(f"second / first: {cached_ratio:.2f}")

    scoring = ratio(sum(row["items"] for row in per_pass), sum(row["seconds"] for row in per_pass))
    markdown = (
        f"**forgetting_cache** ({config.name}: {len(bench.benchmarks)} benchmarks x {bench.limit} items, batch "
        f"{bench.batch_size}): scoring {scoring:.2f} items/s; forgetting check {first:.0f} s with base scoring, "
        f"{second:.0f} s with cached base scores = {cached_ratio:.2f}x"
    )
    write_results(
        "forgetting_cache",
        {
            "config": args.config,
            "overrides": FIXED_DESIGN + args.overrides + (["forgetting.limit=1"] if args.quick else []),
            "benchmarks": list(bench.benchmarks),
            "limit": bench.limit,
            "batch_size": bench.batch_size,
            "adapter": str(args.adapter) if args.adapter else "fresh untrained LoRA adapter",
            "checks": checks,
            "second_over_first": cached_ratio,
            "scoring_items_per_second": scoring,
            "scoring_passes": per_pass,
            "scoring_groups": per_group,
        },
        markdown,
        args.quick,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
