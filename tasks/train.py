"""Prefect task: train the QLoRA adapter, tracked in a nested MLflow run."""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task

from tasks.common import once, retry_only_transient, step_run
from tasks.io.launch import launch_training
from tasks.io.models import load_base_model, load_tokenizer
from tasks.io.ray_cluster import ray_training
from tasks.io.tracking import flatten
from tasks.io.versioning import provenance
from tasks.lib.config import RunConfig
from tasks.lib.config.benchmark_names import OUTPUT_FILES
from tasks.lib.core.run_layout import RunLayout
from tasks.lib.dataset.data_formats import read_jsonl
from tasks.lib.general_benchmarks.benchmark_scoring import configured_plans
from tasks.lib.run.refs import DataRef, RunContext, TrainRef
from tasks.lib.training.trainer import loss_curve_png, train_adapter

UNPREFIXED = ("eval_loss", "forgetting_proxy.")


def general_text_pages(config: RunConfig) -> list[str]:
    """WikiText pages for the in-training forgetting proxy, from documents the forgetting gate never scores: the
    proxy can stop training, and what selects a model must not be what confirms it. [] when there are none (the
    gate scores every document) or no data."""
    path = Path(config.forgetting.data_dir) / OUTPUT_FILES["wikitext"]
    if not config.train.forgetting_proxy.enabled or not path.is_file():
        return []
    pages = [row["page"] for _, row in read_jsonl(path)]
    if "wikitext" not in config.forgetting.benchmarks:
        return pages
    (gate,) = configured_plans(config, ["wikitext"])
    scored = set(gate.drawn) if gate.drawn is not None else set(range(gate.limit or len(pages)))
    return [page for index, page in enumerate(pages) if index not in scored]


def run_training(config: RunConfig, context: RunContext, data: DataRef) -> TrainRef:
    with step_run(config, context, "train") as tracker:
        tracker.log_params(flatten(config.model_dump(mode="json")))
        tracker.set_tags(provenance(config, data))

        def sink(metrics: dict[str, float], step: int) -> None:
            tracker.log_metrics(
                {key if key.startswith(UNPREFIXED) else f"train.{key}": value for key, value in metrics.items()}, step
            )

        if config.train.engine == "ray" or config.train.num_processes > 1:
            launch = ray_training if config.train.engine == "ray" else launch_training
            result = launch(config, Path(data.processed_dir), Path(context.run_dir), general_text_pages(config))
            # The processes log nothing themselves: their history goes to MLflow once, after training.
            for entry in [*result.log_history, *result.proxy_history]:
                sink({k: v for k, v in entry.items() if isinstance(v, int | float) and k != "step"}, entry["step"])
        else:
            result = train_adapter(
                config,
                lambda: load_base_model(config.model, config.quantization),
                load_tokenizer(config.model),
                Path(data.processed_dir),
                Path(context.run_dir),
                metrics_sink=sink,
                general_text=general_text_pages(config),
            )
        summary = {
            "trainable_params": result.trainable_params,
            "total_params": result.total_params,
            "trainable_percent": 100.0 * result.trainable_params / max(result.total_params, 1),
            "tokens_per_second": result.tokens_per_second,
            "global_step": result.global_step,
        }
        if result.first_eval_loss is not None:
            summary["first_eval_loss"] = result.first_eval_loss
        if result.best_eval_loss is not None:
            summary["best_eval_loss"] = result.best_eval_loss
        tracker.set_tags(
            {
                "resumed_from_step": str(result.resumed_from_step),
                "stopped_by_forgetting_proxy": str(result.stopped_by_forgetting_proxy),
                "attention": result.attention,
                "num_processes": str(config.train.num_processes),
                "engine": config.train.engine,
            }
        )
        # The adapter as an MLflow logged model (lineage: data inputs -> this run -> adapter -> registered
        # version), carrying the run's training metrics; the gate's results are added to it later.
        adapter_model_id = tracker.log_model_folder(
            "adapter",
            Path(result.adapter_dir),
            model_type="peft-lora-adapter",
            params={f"lora.{key}": value for key, value in config.lora.model_dump(mode="json").items()},
            tags={**provenance(config, data), "base_model": config.model.name_or_path},
        )
        tracker.log_metrics(summary, model_id=adapter_model_id)
        curve = loss_curve_png(result.log_history, RunLayout.of(context.run_dir).loss_curve)
        tracker.log_artifact(curve, "plots")
        return TrainRef(
            adapter_dir=str(result.adapter_dir),
            mlflow_run_id=tracker.run_id,
            global_step=result.global_step,
            resumed_from_step=result.resumed_from_step,
            first_eval_loss=result.first_eval_loss,
            best_eval_loss=result.best_eval_loss,
            trainable_params=result.trainable_params,
            tokens_per_second=result.tokens_per_second,
            adapter_model_id=adapter_model_id,
        )


@task(name="train-adapter", retries=1, retry_delay_seconds=10, retry_condition_fn=retry_only_transient)
def train(config: RunConfig, context: RunContext, data: DataRef) -> TrainRef:
    """A retry (or a re-run with the same run id) resumes from the latest checkpoint."""
    ref = once("train", TrainRef, context, lambda: run_training(config, context, data), get_run_logger())
    get_run_logger().info(
        "trained %d steps (resumed from %s): validation loss %.4f -> %.4f; %d trainable parameters",
        ref.global_step,
        ref.resumed_from_step,
        ref.first_eval_loss or float("nan"),
        ref.best_eval_loss or float("nan"),
        ref.trainable_params,
    )
    return ref
