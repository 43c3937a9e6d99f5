"""The pipeline as one Prefect flow: prepare -> train -> evaluate -> merge -> forgetting + gate -> register.

The merge comes before the forgetting check so that the benchmarks score the merged model, the artifact that
will be registered, at base speed; a run whose task row already failed is neither merged nor benchmarked.

Run it with `qlora run configs/demo.yaml`, from the Prefect UI (deployments in flows/serve.py),
or call `finetune(...)` from Python.
"""

from __future__ import annotations

import prefect.runtime as prefect_runtime
from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.states import Failed

from flows.summaries import resume_command
from tasks.data import prepare_data
from tasks.evaluate import evaluate_target_task
from tasks.forgetting import check_forgetting
from tasks.io.tracking import shown_tracking_uri
from tasks.lib.config import load_config
from tasks.lib.core import threads
from tasks.lib.core.errors import UserError
from tasks.lib.run.preflight import check_inputs
from tasks.lib.run.refs import PipelineResult
from tasks.lib.run.run_report import pipeline_markdown
from tasks.merge import merge_adapter_task
from tasks.pipeline_run import artifact_key, finish_pipeline_run, start_pipeline_run, unchanged_since_last_attempt
from tasks.register import register_model
from tasks.train import train


@flow(name="qlora-finetune", persist_result=True)
def finetune(
    config_path: str = "configs/demo.yaml",
    overrides: list[str] | None = None,
    run_id: str | None = None,
    skip_if_unchanged: bool = False,
    mlflow_parent_run_id: str | None = None,
) -> PipelineResult:
    """Fine-tune, evaluate against the base, check forgetting, and merge + register if the gates pass.

    Args:
        config_path: YAML run config (see configs/demo.yaml; every key is validated before any work).
        overrides: `section.key=value` strings applied on top, e.g. `train.max_steps=50`.
        run_id: re-use a run id to resume an interrupted run from its last checkpoint.
        skip_if_unchanged: skip when the data content and the outcome-relevant config equal those of the last
            attempted run, whatever its outcome (what scheduled retraining uses).
        mlflow_parent_run_id: nest this run's MLflow run under another (a sweep's trials sit under the sweep).
    """
    try:
        return run_pipeline(config_path, overrides or [], run_id, skip_if_unchanged, mlflow_parent_run_id)
    except UserError as error:
        # A bad config, override or data file: the flow run's state says what to change, in one line, instead
        # of a traceback. The exception stays the state's result, so callers still get it raised.
        message = f"{type(error).__name__}: {error}"
        get_run_logger().error(message)
        return Failed(message=message, data=error)


def run_pipeline(
    config_path: str,
    overrides: list[str],
    run_id: str | None,
    skip_if_unchanged: bool,
    mlflow_parent_run_id: str | None = None,
):
    logger = get_run_logger()
    config = load_config(config_path, overrides)
    check_inputs(config)
    share = threads.hold_share(config.resources.configured_threads())
    logger.info("torch uses %d CPU threads (resources.cpu_threads=%s)", share.fit(), config.resources.cpu_threads)
    data = prepare_data(config)

    if skip_if_unchanged:
        reason = unchanged_since_last_attempt(config, data)
        if reason:
            logger.info("skipping training: %s", reason)
            create_markdown_artifact(f"# Retraining skipped\n\n{reason}.", key=artifact_key(config.name))
            return PipelineResult(run_id="", run_dir="", mlflow_run_id="", skipped=True, reason=reason, data=data)

    context = start_pipeline_run(config, run_id, data, mlflow_parent_run_id, overrides)
    resume = resume_command(config_path, overrides, context.run_id)
    logger.info("run %s in %s; if it dies, resume it with: %s", context.run_id, context.run_dir, resume)
    result = PipelineResult(
        run_id=context.run_id,
        run_dir=context.run_dir,
        mlflow_run_id=context.parent_run_id,
        mlflow_experiment_id=context.experiment_id,
        prefect_flow_run_id=str(prefect_runtime.flow_run.id or ""),
        data=data,
    )
    try:
        result.train = train(config, context, data)
        result.evaluation = evaluate_target_task(config, context, data, result.train)
        if result.evaluation.task.passed or config.forgetting.run_when_task_fails:
            result.merge = merge_adapter_task(config, context, data, result.train)
        else:
            logger.info("the target-task row failed: no merge, forgetting benchmarks skipped, nothing registered")
        result.forgetting = check_forgetting(config, context, result.merge, result.evaluation)
        result.registration = register_model(config, context, data, result)
    except BaseException:
        finish_pipeline_run(context, result, failed=True)
        raise
    finish_pipeline_run(context, result, failed=False)
    create_markdown_artifact(
        pipeline_markdown(config, result, shown_tracking_uri(config.tracking.uri)),
        key=artifact_key(config.name),
        description="QLoRA pipeline report",
    )
    return result
