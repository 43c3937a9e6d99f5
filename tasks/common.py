"""What every Prefect task shares: which failures are worth a retry, and the nested MLflow run."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from tasks.io.tracking import MlflowTracker, configure_mlflow, mlflow_run
from tasks.lib.config import RunConfig
from tasks.lib.refs import RunContext

TRANSIENT_ERRORS = (ConnectionError, TimeoutError, OSError)


def retry_only_transient(task, task_run, state) -> bool:
    """Retry network and disk hiccups; never bad data, bad config, a diverged run or a failed gate."""
    try:
        state.result()
    except TRANSIENT_ERRORS as error:
        return not isinstance(error, FileNotFoundError | PermissionError | IsADirectoryError)
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
        yield tracker
