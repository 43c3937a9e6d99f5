"""Experiment tracking: the one place runs are created, logged into, looked up and closed in MLflow.

Everything sent to MLflow passes through `scrub`, so a secret never reaches the store: values
of secret-looking keys are dropped and credentials embedded in URIs are masked.
"""

from __future__ import annotations

import math
import os
import re
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tasks.lib.config.release_config import LOCAL_TRACKING_STORE
from tasks.lib.core.errors import UserError

# A whole name segment, so `HF_TOKEN` and `db.password` are secrets but `max_new_tokens` and `tokenizer` are not.
SECRET_KEY_PATTERN = re.compile(
    r"(^|[._-])(token|secret|password|passwd|api[_-]?key|credentials?|auth)($|[._-])", re.IGNORECASE
)
# Up to the authority's last "@", so a password with a raw (unencoded) "@" is masked whole.
URI_CREDENTIALS = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)[^/\s]*@")
HF_TOKEN_VALUE = re.compile(r"(?<![A-Za-z0-9])hf_[A-Za-z0-9]{30,}")  # a Hugging Face access token
DEFAULT_TRACKING_URI = f"sqlite:///{LOCAL_TRACKING_STORE}"  # a config not loaded from a file: the working directory


def _known_secret_values() -> list[str]:
    names = [name for name in os.environ if SECRET_KEY_PATTERN.search(name)]
    return [os.environ[name] for name in names if len(os.environ[name]) >= 6]


def scrub(value: str) -> str:
    """Masks credentials in URIs, Hugging Face tokens and any value equal to a secret from the environment."""
    value = URI_CREDENTIALS.sub(r"\g<scheme>***@", value)
    value = HF_TOKEN_VALUE.sub("***", value)
    for secret in _known_secret_values():
        value = value.replace(secret, "***")
    return value


def scrub_mapping(values: Mapping[str, Any]) -> dict[str, str]:
    return {
        key: ("***" if SECRET_KEY_PATTERN.search(key) and value not in (None, "", False) else scrub(str(value)))
        for key, value in values.items()
    }


def flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def tracking_uri(configured: str | None) -> str:
    return configured or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def shown_tracking_uri(configured: str | None) -> str:
    """The tracking URI as reports and the console may show it: credentials masked."""
    return scrub(tracking_uri(configured))


@dataclass(frozen=True)
class RunSummary:
    """What the pipeline reads back from a run: its id, name, tags, metrics and times (seconds)."""

    run_id: str
    name: str
    experiment_id: str
    tags: dict[str, str]
    metrics: dict[str, float]
    start: float
    end: float | None  # None while it runs

    @classmethod
    def of(cls, run: Any) -> RunSummary:
        info = run.info
        end = info.end_time / 1000 if info.end_time else None
        tags, metrics = dict(run.data.tags), dict(run.data.metrics)
        return cls(info.run_id, info.run_name, info.experiment_id, tags, metrics, info.start_time / 1000, end)

    @property
    def seconds(self) -> float | None:
        return None if self.end is None else self.end - self.start


def create_run(experiment_id: str, run_name: str, tags: Mapping[str, str], parent_run_id: str | None = None) -> str:
    """A new run (nested under `parent_run_id` when given), left RUNNING; returns its id."""
    import mlflow

    nested = {"mlflow.parentRunId": parent_run_id} if parent_run_id else {}
    return mlflow.MlflowClient().create_run(experiment_id, run_name=run_name, tags={**tags, **nested}).info.run_id


def reopen_run(experiment_id: str, run_id: str) -> None:
    """A resumed run is RUNNING again; the child runs a killed attempt left RUNNING are closed as KILLED
    (nothing else can be running under it now)."""
    for child in child_runs(experiment_id, run_id, status="RUNNING"):
        close_run(child.run_id, "KILLED")
    close_run(run_id, "RUNNING")


def close_killed_run(experiment_id: str, run_id: str) -> list[str]:
    """A run whose process was killed, and every step run under it, closed as KILLED where still RUNNING; returns
    the ids closed."""
    import mlflow

    still_running = [child.run_id for child in child_runs(experiment_id, run_id, status="RUNNING")]
    if mlflow.MlflowClient().get_run(run_id).info.status == "RUNNING":
        still_running.append(run_id)
    for stale in still_running:
        close_run(stale, "KILLED")
    return still_running


def close_run(run_id: str, status: str = "FINISHED") -> None:
    """FINISHED, FAILED or KILLED (or RUNNING again)."""
    import mlflow

    client = mlflow.MlflowClient()
    if status == "RUNNING":
        client.update_run(run_id, status="RUNNING")
    else:
        client.set_terminated(run_id, status=status)


def get_run(run_id: str) -> RunSummary:
    import mlflow

    return RunSummary.of(mlflow.MlflowClient().get_run(run_id))


def child_runs(experiment_id: str, parent_run_id: str, status: str | None = None) -> list[RunSummary]:
    """The runs nested under `parent_run_id` (e.g. a pipeline run's steps), oldest first."""
    import mlflow

    where = f"tags.mlflow.parentRunId = '{parent_run_id}'" + (f" and attributes.status = '{status}'" if status else "")
    runs = mlflow.MlflowClient().search_runs([experiment_id], filter_string=where)
    return sorted((RunSummary.of(run) for run in runs), key=lambda run: run.start)


def newest_run(experiment_id: str, tags: Mapping[str, str]) -> RunSummary | None:
    """The newest run of the experiment carrying all of `tags`, or None."""
    import mlflow

    where = " and ".join(f"tags.{key} = '{value}'" for key, value in tags.items())
    runs = mlflow.MlflowClient().search_runs(
        [experiment_id], filter_string=where, order_by=["attributes.start_time DESC"], max_results=1
    )
    return RunSummary.of(runs[0]) if runs else None


class MlflowTracker:
    """Logs into one MLflow run (by id), so it works from any task or thread."""

    def __init__(self, run_id: str):
        import mlflow

        self.run_id = run_id
        self.client = mlflow.MlflowClient()

    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        clean = scrub_mapping(flatten(params))
        items = [Param(key, value[:6000]) for key, value in clean.items()]
        for start in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[start : start + 100])

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None, model_id: str | None = None) -> None:
        """Metrics of this run; with model_id they are also the metrics of that logged model."""
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [
            Metric(key, float(value), now, step or 0, model_id=model_id, run_id=self.run_id if model_id else None)
            for key, value in metrics.items()
            if isinstance(value, int | float) and math.isfinite(float(value))
        ]
        if items:
            self.client.log_batch(self.run_id, metrics=items)

    def log_model_folder(
        self, name: str, folder: Path, model_type: str, params: Mapping[str, Any], tags: Mapping[str, Any]
    ) -> str:
        """A folder (e.g. a PEFT adapter) as an MLflow 3 logged model of this run; returns its model id."""
        from mlflow.entities import LoggedModelStatus

        model = self.client.create_logged_model(
            experiment_id=self.client.get_run(self.run_id).info.experiment_id,
            name=name,
            source_run_id=self.run_id,
            params=scrub_mapping(params),
            tags=scrub_mapping(tags),
            model_type=model_type,
        )
        self.client.log_model_artifacts(model.model_id, str(folder))
        self.client.finalize_logged_model(model.model_id, LoggedModelStatus.READY)
        return model.model_id

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        for key, value in scrub_mapping(tags).items():
            self.client.set_tag(self.run_id, key, value)

    def set_logged_model_tags(self, model_id: str, tags: Mapping[str, Any]) -> None:
        self.client.set_logged_model_tags(model_id, scrub_mapping(tags))

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        path = Path(path)
        if path.is_dir():
            self.client.log_artifacts(self.run_id, str(path), artifact_path)
        else:
            self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_text(self, text: str, artifact_file: str) -> None:
        self.client.log_text(self.run_id, scrub(text), artifact_file)


_STORES_READY: set[str] = set()


@contextmanager
def _first_use_of_store(uri: str) -> Iterator[None]:
    """One process at a time opens a SQLite store for the first time: MLflow creates and migrates its schema on
    first use, and two runs starting together on a fresh store raced ("table ... already exists")."""
    if uri in _STORES_READY or not uri.startswith("sqlite:///"):
        yield
        return
    from filelock import FileLock

    database = Path(uri.removeprefix("sqlite:///").split("?")[0])
    database.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{database}.init-lock", timeout=600):
        yield
    _STORES_READY.add(uri)


def configure_mlflow(uri: str | None, experiment: str, artifact_location: str | None = None) -> str:
    """Points MLflow at the store and makes sure the experiment exists; returns the experiment id."""
    import mlflow

    uri = tracking_uri(uri)
    mlflow.set_tracking_uri(uri)
    with _first_use_of_store(uri):
        found = mlflow.get_experiment_by_name(experiment)
    if found is not None:
        if found.artifact_location.startswith("mlflow-artifacts:") and not uri.startswith("http"):
            raise UserError(
                f"experiment {experiment!r} in {scrub(uri)} keeps its artifacts behind an MLflow server's proxy "
                f"({found.artifact_location}), which only that server can reach: start it (`make up`), or name a "
                "new experiment (tracking.experiment)"
            )
        return found.experiment_id
    # Marked as model training, so MLflow 3's UI opens the runs view (not the GenAI "evaluation runs" one).
    try:
        return mlflow.create_experiment(
            experiment, artifact_location=artifact_location, tags={"mlflow.experimentKind": "custom_model_development"}
        )
    except Exception:
        # Another run started at the same moment may have created it first (the name is unique in the store).
        created_meanwhile = mlflow.get_experiment_by_name(experiment)
        if created_meanwhile is None:
            raise
        return created_meanwhile.experiment_id


def log_dataset_inputs(run_id: str, sources: dict[str, str], digest: str, name: str) -> None:
    """Each split's source as an MLflow dataset input of `run_id` (context = the split), digest = data version."""
    import mlflow
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.entities import DatasetInput, InputTag

    inputs = []
    for split, source in sources.items():
        dataset = MetaDataset(source=resolve_dataset_source(source), name=f"{name}-{split}", digest=digest[:36])
        tags = [InputTag(key="mlflow.data.context", value=split)]
        inputs.append(DatasetInput(dataset=dataset._to_mlflow_entity(), tags=tags))
    try:
        mlflow.MlflowClient().log_inputs(run_id, datasets=inputs)
    except Exception:
        # Two runs of one data version starting together can both insert the same dataset row (experiment, name,
        # digest are unique in the store) and the loser fails; once the row exists, logging only links it.
        time.sleep(0.5)
        mlflow.MlflowClient().log_inputs(run_id, datasets=inputs)


@contextmanager
def mlflow_run(
    experiment_id: str, run_name: str, run_id: str | None = None, parent_run_id: str | None = None
) -> Iterator[str]:
    """Starts (or resumes, given run_id) a run without touching MLflow's global active-run stack."""
    if run_id is None:
        run_id = create_run(experiment_id, run_name, {"mlflow.runName": run_name}, parent_run_id)
    else:
        close_run(run_id, "RUNNING")
    try:
        yield run_id
    except BaseException:
        close_run(run_id, "FAILED")
        raise
    close_run(run_id)
