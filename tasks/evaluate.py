"""Prefect task: target-task evaluation of base and fine-tuned on the same held-out test items."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from prefect import get_run_logger, task

from tasks.common import once, retry_only_transient, step_run
from tasks.io.models import load_adapter_model, load_base_model, load_tokenizer, scoring_identity, tokenizer_version
from tasks.io.score_cache import get_or_compute
from tasks.lib.config import RunConfig
from tasks.lib.core.run_layout import RunLayout
from tasks.lib.evaluation.task_eval import (
    TaskEvalResult,
    compare,
    evaluate_task,
    load_split,
    task_markdown,
    write_predictions,
)
from tasks.lib.gate.decision import task_row
from tasks.lib.gate.promotion import items_fingerprint
from tasks.lib.modeling.merging import adapter_reference, save_reference
from tasks.lib.run.refs import DataRef, RunContext, TaskEvalRef, TrainRef


def evaluated_items_fingerprint(rows: list[dict], config: RunConfig) -> str:
    """The fingerprint of the test items evaluate_task scores (the first evaluation.max_items)."""
    selected = rows[: config.evaluation.max_items] if config.evaluation.max_items else rows
    return items_fingerprint([(str(row.get("id")), row["messages"]) for row in selected])


def base_task_key_parts(config: RunConfig, rows: list[dict]) -> dict:
    """What the base's answers on the test items depend on: the 4-bit base, its tokenizer and chat template, the
    evaluation settings and the items themselves."""
    return {
        **scoring_identity(config),
        "scored_as": "target task: the 4-bit base, adapter disabled",
        "tokenizer": tokenizer_version(config.model),
        "evaluation": config.evaluation.model_dump(mode="json"),
        "items": evaluated_items_fingerprint(rows, config),
    }


def base_task_eval(
    config: RunConfig, rows: list[dict], evaluate_base: Callable[[], TaskEvalResult]
) -> tuple[TaskEvalResult, bool]:
    """The base's answers on the test items from the base-score cache, else `evaluate_base()` cached; returns
    (result, was cached). The base never changes between retrains, so only the first run pays for it."""
    stored, cached = get_or_compute(
        base_task_key_parts(config, rows), lambda: evaluate_base().model_dump(mode="json"), config.forgetting.cache_dir
    )
    return TaskEvalResult.model_validate(stored), cached


def score_base_task(config: RunConfig, data: DataRef) -> tuple[TaskEvalResult, bool]:
    """Fill the base-score cache with the base's answers on the test items (`qlora score-base`)."""
    rows = load_split(Path(data.processed_dir), "test")

    def evaluate_base() -> TaskEvalResult:
        model = load_base_model(config.model, config.quantization, for_training=False)
        return evaluate_task(model, load_tokenizer(config.model), rows, config.evaluation)

    return base_task_eval(config, rows, evaluate_base)


def run_target_eval(config: RunConfig, context: RunContext, data: DataRef, trained: TrainRef) -> TaskEvalRef:
    with step_run(config, context, "evaluate") as tracker:
        tokenizer = load_tokenizer(config.model)
        rows = load_split(Path(data.processed_dir), "test")
        model = load_adapter_model(config, trained.adapter_dir)

        def evaluate_base() -> TaskEvalResult:
            with model.disable_adapter():
                return evaluate_task(model, tokenizer, rows, config.evaluation)

        base, base_cached = base_task_eval(config, rows, evaluate_base)
        tuned = evaluate_task(model, tokenizer, rows, config.evaluation)
        tracker.log_metrics({"base_task_cached": float(base_cached)})
        fidelity_rows = rows[: config.merge.num_fidelity_prompts]
        save_reference(
            adapter_reference(model, fidelity_rows), RunLayout.of(context.run_dir).merge_reference, len(fidelity_rows)
        )
        comparison = compare(base, tuned)
        tracker.log_metrics(
            {f"{side}.{metric}": values[side] for metric, values in comparison.items() for side in values}
        )
        predictions = write_predictions(base, tuned, RunLayout.of(context.run_dir).task_predictions)
        markdown = task_markdown(base, tuned, config.evaluation.primary_metric)
        report = RunLayout.of(context.run_dir).task_report
        report.write_text(markdown)
        tracker.log_artifact(predictions, "evaluation")
        tracker.log_artifact(report, "evaluation")
        base_scores = [record.score for record in base.predictions]
        tuned_scores = [record.score for record in tuned.predictions]
        return TaskEvalRef(
            base=base.metrics,
            tuned=tuned.metrics,
            primary_metric=config.evaluation.primary_metric,
            n_items=tuned.n_items,
            markdown=markdown,
            mlflow_run_id=tracker.run_id,
            item_ids=[record.id for record in tuned.predictions],
            test_fingerprint=evaluated_items_fingerprint(rows, config),
            base_correct=[record.correct for record in base.predictions],
            tuned_correct=[record.correct for record in tuned.predictions],
            base_scores=base_scores,
            tuned_scores=tuned_scores,
            task=task_row(base_scores, tuned_scores, config.gate, config.evaluation.primary_metric),
            base_cached=base_cached,
        )


@task(name="evaluate-target-task", retries=1, retry_condition_fn=retry_only_transient)
def evaluate_target_task(config: RunConfig, context: RunContext, data: DataRef, trained: TrainRef) -> TaskEvalRef:
    ref = once(
        "evaluate", TaskEvalRef, context, lambda: run_target_eval(config, context, data, trained), get_run_logger()
    )
    metric = ref.primary_metric
    get_run_logger().info(
        "%s on %d test items: base %.3f -> tuned %.3f", metric, ref.n_items, ref.base[metric], ref.tuned[metric]
    )
    return ref
