"""The pipeline run itself: its run directory and the parent MLflow run every step nests under."""

from __future__ import annotations

import json
import re
import secrets
from datetime import UTC, datetime
from pathlib import Path

from tasks.io.flow_runs import current_flow_run_id, end_killed_flow_run
from tasks.io.tracking import (
    MlflowTracker,
    close_killed_run,
    close_run,
    configure_mlflow,
    create_run,
    flatten,
    log_dataset_inputs,
    newest_run,
    reopen_run,
)
from tasks.io.versioning import provenance
from tasks.lib.config import ConfigError, RunConfig
from tasks.lib.core import threads
from tasks.lib.core.run_layout import RunLayout
from tasks.lib.dataset.tokenization import data_length_histogram, split_lengths
from tasks.lib.gate.gate_result import VERDICT_CODE
from tasks.lib.run.refs import DataRef, PipelineResult, RunContext
from tasks.lib.run.run_report import verdict_line

FLOW_RUN_TAG = "prefect_flow_run_id"  # the attempt's Prefect flow run: what closes its MLflow runs once it crashed


def close_crashed_attempt(config: RunConfig, flow_run_id: str) -> list[str]:
    """The MLflow runs of a pipeline attempt whose flow run Prefect marked Crashed, closed as KILLED (a resume
    reopens the parent); returns the ids closed. Called by the automation that watches for crashed flow runs."""
    experiment_id = configure_mlflow(config.tracking.uri, config.tracking.experiment, config.tracking.artifact_location)
    parent = newest_run(experiment_id, {"pipeline": "qlora", FLOW_RUN_TAG: flow_run_id})
    return close_killed_run(experiment_id, parent.run_id) if parent else []


def new_run_id() -> str:
    return f"{datetime.now(UTC):%Y%m%d-%H%M%S}-{secrets.token_hex(2)}"


def artifact_key(name: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes only."""
    return re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-") + "-report"


def start_pipeline_run(
    config: RunConfig,
    run_id: str | None,
    data: DataRef,
    mlflow_parent_run_id: str | None = None,
    overrides: list[str] | None = None,
) -> RunContext:
    """Creates (or, for a known run id, resumes) the run directory and the parent MLflow run (nested under
    `mlflow_parent_run_id` when given: a sweep's trials sit under the sweep's run). A resume closes what the killed
    attempt left open: its step runs in MLflow (KILLED) and its Prefect flow run (Crashed, naming this one)."""
    run_id = run_id or new_run_id()
    run_dir = config.runs_dir() / run_id
    run_dir.mkdir(parents=True, exist_ok=True)
    experiment_id = configure_mlflow(config.tracking.uri, config.tracking.experiment, config.tracking.artifact_location)
    layout = RunLayout.of(run_dir)
    marker = layout.mlflow_marker
    marker_existed = marker.is_file()
    flow_run_id = current_flow_run_id()
    if marker_existed:
        stored = json.loads(marker.read_text())
        refuse_changed_resume(run_id, run_dir, config, data, stored)
        parent_run_id = stored["parent_run_id"]
        reopen_run(experiment_id, parent_run_id)
    else:
        tags = {"pipeline": "qlora", "run_id": run_id, "config_name": config.name}
        parent_run_id = create_run(experiment_id, f"{config.name}-{run_id}", tags, mlflow_parent_run_id)
        stored = {"parent_run_id": parent_run_id, "data_fingerprint": data.fingerprint}
        layout.config_file.write_text(json.dumps(config.model_dump(mode="json"), indent=2))
        layout.overrides_file.write_text(json.dumps(list(overrides or [])))
    marker.write_text(json.dumps({**stored, "prefect_flow_run_id": flow_run_id}))
    tracker = MlflowTracker(parent_run_id)
    tracker.log_params(flatten(config.model_dump(mode="json")))
    tags = {**provenance(config, data), "outcome_config_hash": config.outcome_fingerprint()}
    tracker.set_tags({**tags, "cpu_threads_at_start": threads.fit(), FLOW_RUN_TAG: flow_run_id or ""})
    killed = stored.get("prefect_flow_run_id")
    if killed and flow_run_id and killed != flow_run_id:  # after the tag moved: closing the killed one leaves us be
        end_killed_flow_run(killed, f"the process died; run {run_id} was resumed by flow run {flow_run_id}")
    tracker.log_metrics({f"data.{k}": v for k, v in flatten(data.stats).items() if isinstance(v, int | float)})
    tracker.log_artifact(layout.config_file)
    if not marker_existed:
        sources = {
            "train": config.data.path,
            "validation": config.data.validation_path or config.data.path,
            "test": config.data.test_path or config.data.path,
        }
        log_dataset_inputs(parent_run_id, sources, data.raw_version, config.name)
    rejects = Path(data.processed_dir) / "rejects.jsonl"
    if rejects.is_file():
        tracker.log_artifact(rejects, "data")
    tracker.log_artifact(Path(data.processed_dir) / "stats.json", "data")
    histogram = data_length_histogram(
        split_lengths(Path(data.processed_dir)), config.data.max_length, layout.data_lengths_chart
    )
    tracker.log_artifact(histogram, "data")
    return RunContext(run_id=run_id, run_dir=str(run_dir), experiment_id=experiment_id, parent_run_id=parent_run_id)


def refuse_changed_resume(run_id: str, run_dir: Path, config: RunConfig, data: DataRef, stored: dict) -> None:
    """A resumed run must continue what it started: the same config and the same prepared data."""
    problems = []
    previous_config = RunLayout.of(run_dir).config_file
    if previous_config.is_file():
        before = flatten(json.loads(previous_config.read_text()))
        after = flatten(config.model_dump(mode="json"))
        changed = sorted(key for key in set(before) | set(after) if before.get(key) != after.get(key))
        if changed:
            problems.append(f"config keys changed: {', '.join(changed)}")
    if stored.get("data_fingerprint") not in (None, data.fingerprint):
        problems.append("the prepared data changed (its fingerprint differs)")
    if problems:
        raise ConfigError(
            f"run {run_id} cannot resume: {'; '.join(problems)}. Start a new run (no --run-id) for the new settings."
        )


def headline_metrics(result: PipelineResult) -> dict[str, float]:
    """What Compare in the MLflow UI needs on the parent run: is it better, did it forget, did it ship."""
    metrics: dict[str, float] = {}
    if result.train is not None and result.train.best_eval_loss is not None:
        metrics["train.best_eval_loss"] = float(result.train.best_eval_loss)  # what a sweep chooses on
    if result.forgetting is not None:
        gate = result.forgetting.gate
        for key in ("base", "tuned", "delta", "ci_low", "ci_high"):
            if getattr(gate.task, key) is not None:
                metrics[f"task.{key}"] = float(getattr(gate.task, key))
        for row in gate.rows:
            if row.delta is not None:
                metrics[f"forgetting.{row.name}.delta"] = float(row.delta)
        accuracy = [row.delta for row in gate.rows if row.kind == "accuracy" and row.delta is not None]
        if accuracy:
            metrics["forgetting.worst_accuracy_delta_pts"] = float(min(accuracy))
        metrics["gate.passed"] = float(result.forgetting.passed)
        metrics["gate.verdict"] = VERDICT_CODE[gate.verdict]
    if result.merge is not None:
        metrics["merge.merged_vs_adapter_max"] = result.merge.fidelity.merged_vs_adapter_max
        if result.merge.fidelity.relative_distance is not None:
            metrics["merge.relative_distance"] = result.merge.fidelity.relative_distance
    metrics["registered"] = float(bool(result.registration and result.registration.registered))
    return metrics


def finish_pipeline_run(context: RunContext, result: PipelineResult, failed: bool) -> None:
    summary = RunLayout.of(context.run_dir).result_file
    summary.write_text(result.model_dump_json(indent=2))
    tracker = MlflowTracker(context.parent_run_id)
    tracker.log_artifact(summary)
    tracker.log_metrics(headline_metrics(result))
    tags = {"outcome": "failed" if failed else "completed"}
    if result.forgetting is not None:
        tags["gate"] = "passed" if result.forgetting.passed else "failed"
    if result.registration is not None and result.registration.version:
        tags["registered_version"] = result.registration.version
    tracker.set_tags({**tags, "mlflow.note.content": verdict_line(result)})  # the note: its description in the UI
    if result.forgetting is not None:  # the gate's report and chart on the run a user opens, not only on its step
        tracker.log_text(result.forgetting.markdown, "gate_report.md")
        chart = RunLayout.of(context.run_dir).forgetting_chart
        if chart.is_file():
            tracker.log_artifact(chart)
    if result.train is not None and result.train.adapter_model_id:
        verdicts = {f"pipeline.{key}": value for key, value in tags.items()}
        gate = result.forgetting.gate.tags() if result.forgetting is not None else {}
        tracker.set_logged_model_tags(result.train.adapter_model_id, {**verdicts, **gate})
    close_run(context.parent_run_id, "FAILED" if failed else "FINISHED")


def last_attempt(config: RunConfig) -> dict[str, str] | None:
    """Tags of the newest pipeline run of this config's name that completed (gate passed or not), or None.

    A run that crashed is not an attempt to remember: the next schedule retries it."""
    experiment_id = configure_mlflow(config.tracking.uri, config.tracking.experiment, config.tracking.artifact_location)
    newest = newest_run(experiment_id, {"pipeline": "qlora", "config_name": config.name, "outcome": "completed"})
    return newest.tags if newest else None


def unchanged_since_last_attempt(config: RunConfig, data: DataRef) -> str | None:
    """Why retraining would repeat the last attempt (same data content, same outcome-relevant config), or None.

    Compared with the last *attempted* run, not the last registered one: a config whose gate failed is not
    retrained every week until something changes; an edited file counts as new data (the data fingerprint
    hashes file content), and editing only where results go or when the schedule fires is not a change.
    """
    previous = last_attempt(config)
    if previous is None:
        return None
    same_data = previous.get("processed_data_fingerprint") == data.fingerprint
    same_config = previous.get("outcome_config_hash") == config.outcome_fingerprint()
    if not (same_data and same_config):
        return None
    registered = previous.get("registered_version")
    outcome = f"gate {previous.get('gate', 'not reached')}, " + (
        f"registered v{registered}" if registered else "nothing registered"
    )
    return (
        f"data (fingerprint {data.fingerprint[:12]}) and config unchanged since run {previous.get('run_id', '?')} "
        f"({outcome})"
    )
