"""Prefect task: general benchmarks for base (cached) and tuned, and the gate that guards promotion."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from prefect import get_run_logger, task

from tasks.common import once, retry_only_transient, step_run
from tasks.io.models import load_scored_model, load_tokenizer, scoring_identity
from tasks.io.ray_cluster import score_on_ray
from tasks.io.score_cache import benchmark_key_parts, get_or_compute
from tasks.lib.benchmarks import block_size, configured_plans, look_order, score_benchmarks, score_in_looks
from tasks.lib.config import RunConfig
from tasks.lib.gate import decide
from tasks.lib.gate_report import forgetting_delta_chart, forgetting_markdown
from tasks.lib.gate_result import VERDICT_CODE, GateResult
from tasks.lib.refs import ForgettingRef, MergeRef, RunContext, TaskEvalRef
from tasks.lib.run_layout import RunLayout
from tasks.lib.sequential import Looks


def base_model_version(config: RunConfig) -> str:
    """What the base benchmark scores depend on: the base as the adapter is merged into it (merge.strategy: the
    dequantized 4-bit base, or the original) and the scorer."""
    identity = {
        **scoring_identity(config),
        "scored_as": f"dense merge base ({config.merge.strategy})",
        "scorer": "lm-eval requests in packed rows, each context once (SharedContextLM)",
    }
    return json.dumps(identity, sort_keys=True)


def scores_of(config: RunConfig, merged_dir: str | None) -> dict:
    """The merged model's benchmark results, or (None) the base's: here, or split over Ray workers."""
    if config.forgetting.engine == "ray":
        return score_on_ray(config, merged_dir)
    return score_benchmarks(config, load_scored_model(config, merged_dir), load_tokenizer(config.model))


def gate_looks(config: RunConfig) -> dict[str, Looks] | None:
    """The group-sequential gate's looks per benchmark scored in blocks; None for the fixed design."""
    bench = config.forgetting
    if bench.look_every is None:
        return None
    looks = {}
    for plan in configured_plans(config):
        every = block_size(plan, bench.look_every, bench.perplexity_look_every)
        if every is not None:
            looks[plan.name] = Looks(tuple(look_order(plan, bench.sample_seed)), every)
    return looks


def tuned_scores_in_looks(
    config: RunConfig, merged_dir: str, decide_now: Callable[[dict], GateResult], looks: dict[str, Looks] | None
) -> dict:
    """The merged model scored a block of items at a time until the gate decides each row (locally), or on every
    item (on Ray: the gate's verdicts are the same, read from the same items in the same order)."""
    if config.forgetting.engine == "ray" or not looks:
        return scores_of(config, merged_dir)
    model, tokenizer = load_scored_model(config, merged_dir), load_tokenizer(config.model)

    def still_open(scores: dict) -> set[str]:
        return {row.name for row in decide_now(scores).rows if row.looks and row.verdict not in ("pass", "fail")}

    return score_in_looks(
        configured_plans(config),
        looks,
        lambda plans: score_benchmarks(config, model, tokenizer, plans=plans),
        still_open,
    )


def base_scores_for(config: RunConfig, compute: Callable[[], dict]) -> tuple[dict, bool]:
    """The base model's per-item benchmark results from the cache, else `compute()`d and cached."""
    key = benchmark_key_parts(base_model_version(config), configured_plans(config), config.forgetting.max_length)
    return get_or_compute(key, compute, config.forgetting.cache_dir)


def score_base_model(config: RunConfig) -> tuple[dict, bool]:
    """Fill the base-score cache for `config` (the `qlora score-base` verb); returns (scores, was cached)."""
    return base_scores_for(config, lambda: scores_of(config, None))


def gate_metrics(gate: GateResult) -> dict[str, float]:
    """Per row: delta, interval, p-value, verdict (1 pass, 0.5 inconclusive, 0 fail); plus the overall verdict."""
    metrics = {"gate_passed": float(gate.passed), "gate_verdict": VERDICT_CODE[gate.verdict]}
    for row in [*gate.rows, gate.task]:
        values = {
            "delta": row.delta,
            "ci_low": row.ci_low,
            "ci_high": row.ci_high,
            "p_value": row.p_value,
            "p_noninferior": row.p_noninferior,
            "p_beyond_margin": row.p_beyond_margin,
            "detectable": row.detectable_drop,
            "n": float(row.n),
            "verdict": VERDICT_CODE[row.verdict],
        }
        metrics.update({f"gate.{row.name}.{key}": value for key, value in values.items() if value is not None})
    return metrics


def gate_tags(gate: GateResult) -> dict[str, str]:
    """The verdicts and each row's one-line reason, for runs and registered versions."""
    tags = {"gate": "passed" if gate.passed else "failed", "gate.verdict": gate.verdict}
    for row in [*gate.rows, gate.task]:
        tags[f"gate.{row.name}"] = f"{row.verdict}: {row.reason}"[:4000]
    return tags


def run_forgetting_check(
    config: RunConfig, context: RunContext, merge: MergeRef | None, evaluation: TaskEvalRef
) -> ForgettingRef:
    bench = config.forgetting
    with step_run(config, context, "forgetting") as tracker:
        base_scores: dict = {}
        tuned_scores: dict = {}
        cached = False
        note = ""
        if not (bench.enabled and bench.benchmarks):
            note = "Forgetting benchmarks disabled (forgetting.enabled / forgetting.benchmarks)."
        elif merge is None:
            note = (
                "Forgetting benchmarks not run: the target-task row already failed, so nothing can be promoted "
                "(set forgetting.run_when_task_fails for the full report)."
            )
        else:
            # The base is what the adapter was merged into, as dense weights; loaded only when not cached.
            base_scores, cached = base_scores_for(config, lambda: scores_of(config, None))
        margins = {name: setting.margin for name, setting in bench.settings.items() if setting.margin is not None}
        looks = gate_looks(config) if base_scores else None

        def decide_now(tuned: dict) -> GateResult:
            return decide(base_scores, tuned, config.gate, evaluation.task, margins, looks)

        if base_scores:
            tuned_scores = tuned_scores_in_looks(config, merge.merged_dir, decide_now, looks)
        gate = decide_now(tuned_scores)
        gate.note = note
        for side, scores in (("base", base_scores), ("tuned", tuned_scores)):
            tracker.log_metrics(
                {
                    f"{side}.{name}.{key}": value
                    for name, values in scores.items()
                    for key, value in values.items()
                    if isinstance(value, int | float)
                }
            )
        tracker.log_metrics(gate_metrics(gate))
        tracker.log_metrics({"base_scores_cached": float(cached)})
        tracker.set_tags(gate_tags(gate))
        markdown = forgetting_markdown(gate, {"base": evaluation.base, "tuned": evaluation.tuned})
        run_dir = Path(context.run_dir)
        RunLayout.of(run_dir).forgetting_report.write_text(markdown)
        RunLayout.of(run_dir).gate_file.write_text(gate.model_dump_json(indent=2))
        tracker.log_artifact(RunLayout.of(run_dir).forgetting_report, "forgetting")
        tracker.log_artifact(RunLayout.of(run_dir).gate_file, "forgetting")
        tracker.log_artifact(forgetting_delta_chart(gate, RunLayout.of(run_dir).forgetting_chart), "forgetting")
        return ForgettingRef(
            gate=gate,
            passed=gate.passed,
            markdown=markdown,
            base_scores_cached=cached,
            mlflow_run_id=tracker.run_id,
            tags=gate_tags(gate),
        )


@task(name="check-forgetting", retries=1, retry_condition_fn=retry_only_transient)
def check_forgetting(
    config: RunConfig, context: RunContext, merge: MergeRef | None, evaluation: TaskEvalRef
) -> ForgettingRef:
    """Scores the merged model (what ships) against its base. A failed gate is a result, not an error: the
    flow reads `passed` and does not promote."""
    ref = once(
        "forgetting",
        ForgettingRef,
        context,
        lambda: run_forgetting_check(config, context, merge, evaluation),
        get_run_logger(),
    )
    get_run_logger().info(
        "forgetting gate %s (base scores %s)",
        "PASSED" if ref.passed else "FAILED",
        "from cache" if ref.base_scores_cached else "computed",
    )
    return ref
