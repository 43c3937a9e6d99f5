"""Prefect task: merge the adapter (into the dequantized 4-bit base by default) and prove fidelity."""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task
from transformers import AutoModelForCausalLM

from tasks.common import retry_only_transient, step_run
from tasks.evaluate import load_adapter_model
from tasks.io.models import load_base_model, load_tokenizer
from tasks.lib.config import RunConfig
from tasks.lib.merge import check_fidelity, fidelity, fidelity_prompts, merge_adapter
from tasks.lib.refs import DataRef, MergeRef, RunContext, TrainRef
from tasks.lib.task_eval import load_split


def merge_base_loader(config: RunConfig):
    """dequantize: the same 4-bit base the adapter was trained on; original: the full-precision base."""
    if config.merge.strategy == "original":
        full_precision = config.quantization.model_copy(update={"enabled": False})
        return lambda: load_base_model(config.model, full_precision)
    return lambda: load_base_model(config.model, config.quantization)


def run_merge(config: RunConfig, context: RunContext, data: DataRef, trained: TrainRef) -> MergeRef:
    with step_run(config, context, "merge") as tracker:
        tokenizer = load_tokenizer(config.model)
        merged_dir = merge_adapter(
            merge_base_loader(config),
            Path(trained.adapter_dir),
            config.merge.strategy,
            Path(context.run_dir) / "merged",
            tokenizer,
        )
        prompts = fidelity_prompts(
            load_split(Path(data.processed_dir), "test"), tokenizer, config.merge.num_fidelity_prompts
        )
        reference = load_adapter_model(config, trained.adapter_dir)
        merged = AutoModelForCausalLM.from_pretrained(merged_dir, use_safetensors=True)
        report = fidelity(reference, merged, tokenizer, prompts)
        tracker.log_params({"merge.strategy": config.merge.strategy})
        tracker.log_metrics({f"fidelity.{key}": value for key, value in report.model_dump().items()})
        check_fidelity(report, config.merge)
        return MergeRef(
            merged_dir=str(merged_dir),
            strategy=config.merge.strategy,
            fidelity=report.model_dump(),
            mlflow_run_id=tracker.run_id,
        )


@task(name="merge-adapter", retries=1, retry_condition_fn=retry_only_transient)
def merge_adapter_task(config: RunConfig, context: RunContext, data: DataRef, trained: TrainRef) -> MergeRef:
    ref = run_merge(config, context, data, trained)
    get_run_logger().info(
        "merged (%s): argmax agreement %.4f, max |logit diff| %.4g",
        ref.strategy,
        ref.fidelity["argmax_agreement"],
        ref.fidelity["max_abs_logit_diff"],
    )
    return ref
