"""Prefect task: general benchmarks for base (cached) and tuned, and the gate that guards promotion."""

from __future__ import annotations

import json
from pathlib import Path

from prefect import get_run_logger, task

from tasks.common import retry_only_transient, step_run
from tasks.evaluate import load_adapter_model
from tasks.io.models import load_tokenizer, model_version
from tasks.io.score_cache import benchmark_key_parts, get_or_compute
from tasks.lib.benchmarks import run_benchmarks
from tasks.lib.config import RunConfig
from tasks.lib.gate import decide
from tasks.lib.refs import ForgettingRef, RunContext, TaskEvalRef, TrainRef
from tasks.lib.report import forgetting_bar_chart, forgetting_markdown


def base_model_version(config: RunConfig) -> str:
    """The base weights plus how they are loaded: 4-bit and full-precision bases score differently."""
    return f"{model_version(config.model)}|{config.quantization.model_dump_json()}"


def run_forgetting_check(
    config: RunConfig, context: RunContext, trained: TrainRef, evaluation: TaskEvalRef
) -> ForgettingRef:
    bench = config.forgetting
    with step_run(config, context, "forgetting") as tracker:
        base_scores: dict = {}
        tuned_scores: dict = {}
        cached = False
        if bench.enabled and bench.benchmarks:
            tokenizer = load_tokenizer(config.model)
            model = load_adapter_model(config, trained.adapter_dir)
            names, data_dir = list(bench.benchmarks), Path(bench.data_dir)
            settings = {
                "limit": bench.limit,
                "max_length": bench.max_length,
                "perplexity_limit": bench.perplexity_limit,
            }

            def score(model) -> dict:
                return run_benchmarks(model, tokenizer, names, data_dir, batch_size=bench.batch_size, **settings)

            def score_base() -> dict:
                with model.disable_adapter():
                    return score(model)

            key = benchmark_key_parts(base_model_version(config), names, data_dir, **settings)
            base_scores, cached = get_or_compute(key, score_base, bench.cache_dir)
            tuned_scores = score(model)
        metric = evaluation.primary_metric
        gate = decide(base_scores, tuned_scores, config.gate, evaluation.base[metric], evaluation.tuned[metric], metric)
        for side, scores in (("base", base_scores), ("tuned", tuned_scores)):
            tracker.log_metrics(
                {f"{side}.{name}.{key}": value for name, values in scores.items() for key, value in values.items()}
            )
        tracker.log_metrics({f"delta.{row.name}": row.delta for row in gate.rows if row.delta is not None})
        tracker.log_metrics({"gate_passed": float(gate.passed), "base_scores_cached": float(cached)})
        tracker.set_tags({"gate": "passed" if gate.passed else "failed"})
        markdown = forgetting_markdown(gate, {"base": evaluation.base, "tuned": evaluation.tuned})
        run_dir = Path(context.run_dir)
        (run_dir / "forgetting.md").write_text(markdown)
        (run_dir / "gate.json").write_text(gate.model_dump_json(indent=2))
        tracker.log_artifact(run_dir / "forgetting.md", "forgetting")
        tracker.log_artifact(run_dir / "gate.json", "forgetting")
        if gate.rows:
            tracker.log_artifact(forgetting_bar_chart(gate, run_dir / "forgetting.png"), "forgetting")
        return ForgettingRef(
            gate=json.loads(gate.model_dump_json()),
            passed=gate.passed,
            markdown=markdown,
            base_scores_cached=cached,
            mlflow_run_id=tracker.run_id,
        )


@task(name="check-forgetting", retries=1, retry_condition_fn=retry_only_transient)
def check_forgetting(
    config: RunConfig, context: RunContext, trained: TrainRef, evaluation: TaskEvalRef
) -> ForgettingRef:
    """A failed gate is a result, not an error: the flow reads `passed` and does not promote."""
    ref = run_forgetting_check(config, context, trained, evaluation)
    get_run_logger().info(
        "forgetting gate %s (base scores %s)",
        "PASSED" if ref.passed else "FAILED",
        "from cache" if ref.base_scores_cached else "computed",
    )
    return ref
