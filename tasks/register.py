"""Prefect task: register the merged model, move aliases by the promotion policy, verify the round trip."""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task
from transformers import AutoModelForCausalLM

from tasks.common import retry_only_transient, step_run
from tasks.io.models import load_tokenizer
from tasks.io.registry import register_merged_model, verify_round_trip
from tasks.io.versioning import git_commit
from tasks.lib.config import RunConfig
from tasks.lib.merge import fidelity_prompts
from tasks.lib.refs import DataRef, PipelineResult, RegistrationRef, RunContext
from tasks.lib.task_eval import load_split


def run_registration(config: RunConfig, context: RunContext, data: DataRef, result: PipelineResult) -> RegistrationRef:
    name = config.registry.model_name
    if not config.registry.enabled:
        return RegistrationRef(registered=False, model_name=name, version=None, aliases=[], reason="registry disabled")
    if result.forgetting is None or not result.forgetting.passed or result.merge is None:
        return RegistrationRef(
            registered=False, model_name=name, version=None, aliases=[], reason="a gate failed: nothing registered"
        )
    metric = result.evaluation.primary_metric
    with step_run(config, context, "register") as tracker:
        registered = register_merged_model(
            Path(result.merge.merged_dir),
            name,
            run_id=tracker.run_id,
            score=result.evaluation.tuned[metric],
            metric_name=metric,
            tags={
                "data_version": data.raw_version,
                "processed_data_fingerprint": data.fingerprint,
                "config_hash": config.fingerprint(),
                "git_commit": git_commit(),
                "pipeline_run_id": context.run_id,
                "mlflow_parent_run_id": context.parent_run_id,
                "merge_strategy": result.merge.strategy,
                "gate": "passed",
                **{f"base.{key}": value for key, value in result.evaluation.base.items()},
                **{f"tuned.{key}": value for key, value in result.evaluation.tuned.items()},
            },
            gate_passed=True,
        )
        if registered.version is not None and registered.aliases:
            tokenizer = load_tokenizer(config.model)
            merged = AutoModelForCausalLM.from_pretrained(result.merge.merged_dir, use_safetensors=True)
            prompts = fidelity_prompts(
                load_split(Path(data.processed_dir), "test"), tokenizer, config.merge.num_fidelity_prompts
            )
            report = verify_round_trip(name, registered.aliases[-1], merged, tokenizer, prompts)
            tracker.log_metrics({f"round_trip.{key}": value for key, value in report.model_dump().items()})
        return RegistrationRef(
            registered=registered.version is not None,
            model_name=name,
            version=str(registered.version) if registered.version is not None else None,
            aliases=registered.aliases,
            reason=registered.reason,
        )


@task(name="register-model", retries=2, retry_delay_seconds=5, retry_condition_fn=retry_only_transient)
def register_model(config: RunConfig, context: RunContext, data: DataRef, result: PipelineResult) -> RegistrationRef:
    ref = run_registration(config, context, data, result)
    get_run_logger().info(
        "registry: %s", f"{ref.model_name} v{ref.version} {ref.aliases}" if ref.registered else ref.reason
    )
    return ref
