"""What every Prefect task shares: which failures are worth a retry, and the nested MLflow run."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel

from tasks.io.tracking import MlflowTracker, configure_mlflow, mlflow_run
from tasks.lib.config import RunConfig
from tasks.lib.core.errors import cannot_heal
from tasks.lib.core.failpoints import failpoint
from tasks.lib.core.publish import publish_text
from tasks.lib.core.run_layout import RunLayout
from tasks.lib.run.refs import RunContext


def step_logger() -> logging.Logger | logging.LoggerAdapter:
    """The Prefect run's logger inside a flow or task run (the UI shows its lines), else Prefect's console logger (a
    step re-run by its own verb: the terminal shows its lines)."""
    # Imported here, not at the top: the CLI imports this module before it points Prefect at the local stack and
    # sets its startup timeout, and Prefect reads its settings once, when first imported.
    from prefect import get_run_logger
    from prefect.exceptions import MissingContextError
    from prefect.logging import get_logger

    try:
        return get_run_logger()
    except MissingContextError:
        return get_logger("qlora")


def retry_only_transient(task, task_run, state) -> bool:
    """Retry network and disk hiccups; never bad data, bad config, a missing file, a diverged run or a failed gate."""
    try:
        state.result()
    except OSError as error:  # ConnectionError and TimeoutError are OSErrors
        return not cannot_heal(error)
    except Exception:
        return False
    return False


@contextmanager
def step_run(config: RunConfig, context: RunContext, step: str) -> Iterator[MlflowTracker]:
    """A nested MLflow run for one step of the pipeline run."""
    configure_mlflow(config.tracking.uri, config.tracking.experiment, config.tracking.artifact_location)
    with mlflow_run(context.experiment_id, step, parent_run_id=context.parent_run_id) as run_id:
        tracker = MlflowTracker(run_id)
        tracker.set_tags({"step": step, "pipeline_run_id": context.run_id})
        failpoint(step)
        yield tracker


Ref = TypeVar("Ref", bound=BaseModel)


def _marker(context: RunContext, step: str) -> Path:
    return RunLayout.of(context.run_dir).step_marker(step)


def completed_step(context: RunContext, step: str, ref_type: type[Ref]) -> Ref | None:
    """The result of `step` when this run already completed it (a rerun with the same run id), else None.

    A rerun reuses finished steps instead of redoing them: the adapter is never trained a step further, the
    evaluation and the gate are not recomputed on a different model, and each step has one MLflow run.
    """
    marker = _marker(context, step)
    if not marker.is_file():
        return None
    return ref_type.model_validate_json(marker.read_text(encoding="utf-8"))


def mark_completed(context: RunContext, step: str, ref: Ref) -> Ref:
    """Record `step` as done (atomically: a kill leaves either no marker or a whole one)."""
    publish_text(_marker(context, step), ref.model_dump_json(indent=2))
    return ref


def once(step: str, ref_type: type[Ref], context: RunContext, run, logger=None) -> Ref:
    """Run `run()` unless this pipeline run already completed `step`; either way return the step's result."""
    done = completed_step(context, step, ref_type)
    if done is not None:
        if logger is not None:
            logger.info("%s already completed in this run: reusing its result", step)
        return done
    return mark_completed(context, step, run())
