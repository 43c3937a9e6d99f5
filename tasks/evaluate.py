"""Prefect task: target-task evaluation of base and fine-tuned on the same held-out test items."""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task

from tasks.common import once, retry_only_transient, step_run
from tasks.io.models import load_adapter_model, load_tokenizer
from tasks.lib.config import RunConfig
from tasks.lib.gate import task_row
from tasks.lib.merge import adapter_reference, save_reference
from tasks.lib.promotion import items_fingerprint
from tasks.lib.refs import DataRef, RunContext, TaskEvalRef, TrainRef
from tasks.lib.run_layout import RunLayout
from tasks.lib.task_eval import compare, evaluate_task, load_split, task_markdown, write_predictions


def evaluated_items_fingerprint(rows: list[dict], config: RunConfig) -> str:
    """The fingerprint of the test items evaluate_task scores (the first evaluation.max_items)."""
    selected = rows[: config.evaluation.max_items] if config.evaluation.max_items else rows
    return items_fingerprint([(str(row.get("id")), row["messages"]) for row in selected])


def run_target_eval(config: RunConfig, context: RunContext, data: DataRef, trained: TrainRef) -> TaskEvalRef:
    with step_run(config, context, "evaluate") as tracker:
        tokenizer = load_tokenizer(config.model)
        rows = load_split(Path(data.processed_dir), "test")
        model = load_adapter_model(config, trained.adapter_dir)
        with model.disable_adapter():
            base = evaluate_task(model, tokenizer, rows, config.evaluation)
        tuned = evaluate_task(model, tokenizer, rows, config.evaluation)
        fidelity_rows = rows[: config.merge.num_fidelity_prompts]
        save_reference(
            adapter_reference(model, fidelity_rows), RunLayout.of(context.run_dir).merge_reference, len(fidelity_rows)
        )
        comparison = compare(base, tuned)
        tracker.log_metrics(
            {f"{side}.{metric}": values[side] for metric, values in comparison.items() for side in values}
        )
        predictions = write_predictions(base, tuned, Path(context.run_dir) / "task_predictions.jsonl")
        markdown = task_markdown(base, tuned, config.evaluation.primary_metric)
        report = Path(context.run_dir) / "task_eval.md"
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
