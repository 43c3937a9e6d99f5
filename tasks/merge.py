"""Prefect task: merge the adapter (into the dequantized 4-bit base by default) and prove fidelity."""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task

from tasks.common import once, retry_only_transient, step_run
from tasks.io.models import load_adapter_model, load_merged, load_tokenizer, merge_base_loader
from tasks.lib.config import RunConfig
from tasks.lib.core.run_layout import RunLayout
from tasks.lib.evaluation.task_eval import load_split
from tasks.lib.modeling.merging import adapter_reference, check_merge, load_reference, merge_adapter, merge_check
from tasks.lib.run.refs import DataRef, MergeRef, RunContext, TrainRef


def run_merge(config: RunConfig, context: RunContext, data: DataRef, trained: TrainRef) -> MergeRef:
    with step_run(config, context, "merge") as tracker:
        tokenizer = load_tokenizer(config.model)
        layout = RunLayout.of(context.run_dir)
        merged_dir = layout.merged_dir
        checked: dict = {}

        def verify(folder: Path) -> None:
            rows = load_split(Path(data.processed_dir), "test")[: config.merge.num_fidelity_prompts]
            reference = load_reference(layout.merge_reference, len(rows))
            if reference is None:  # a run evaluated before the evaluation saved it
                reference = adapter_reference(load_adapter_model(config, trained.adapter_dir), rows)
            merged = load_merged(folder, for_scoring=False)
            report = merge_check(reference, merged, rows)
            tracker.log_params({"merge.strategy": config.merge.strategy})
            tracker.log_metrics(
                {f"fidelity.{key}": value for key, value in report.model_dump().items() if isinstance(value, float)}
            )
            check_merge(report, config.merge)  # raises: the folder is never published
            checked["report"] = report

        merge_adapter(
            merge_base_loader(config), Path(trained.adapter_dir), config.merge.strategy, merged_dir, tokenizer, verify
        )
        report = checked["report"]
        return MergeRef(
            merged_dir=str(merged_dir),
            strategy=config.merge.strategy,
            fidelity=report,
            mlflow_run_id=tracker.run_id,
        )


@task(name="merge-adapter", retries=1, retry_condition_fn=retry_only_transient)
def merge_adapter_task(config: RunConfig, context: RunContext, data: DataRef, trained: TrainRef) -> MergeRef:
    ref = once("merge", MergeRef, context, lambda: run_merge(config, context, data, trained), get_run_logger())
    get_run_logger().info(
        "merged (%s): answer log-probs within %.3g of the adapter model (%.3g x the base's distance)",
        ref.strategy,
        ref.fidelity.merged_vs_adapter_max,
        ref.fidelity.relative_distance or 0.0,
    )
    return ref
