"""Experiment tracking: a small protocol, an MLflow implementation and a null one.

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
from pathlib import Path
from typing import Any, Protocol

from tasks.lib.errors import UserError

# A whole name segment, so `HF_TOKEN` and `db.password` are secrets but `max_new_tokens` and `tokenizer` are not.
SECRET_KEY_PATTERN = re.compile(
    r"(^|[._-])(token|secret|password|passwd|api[_-]?key|credentials?|auth)($|[._-])", re.IGNORECASE
)
# Up to the authority's last "@", so a password with a raw (unencoded) "@" is masked whole.
URI_CREDENTIALS = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)[^/\s]*@")
HF_TOKEN_VALUE = re.compile(r"(?<![A-Za-z0-9])hf_[A-Za-z0-9]{30,}")  # a Hugging Face access token
DEFAULT_TRACKING_URI = "sqlite:///mlruns.db"


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


class Tracker(Protocol):
    def log_params(self, params: Mapping[str, Any]) -> None: ...
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None: ...
    def set_tags(self, tags: Mapping[str, Any]) -> None: ...
    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None: ...
    def log_text(self, text: str, artifact_file: str) -> None: ...


class NullTracker:
    """Stands in where no tracking is wanted (unit tests, dry runs)."""

    def log_params(self, params: Mapping[str, Any]) -> None:
        pass

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        pass

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        pass

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        pass

    def log_text(self, text: str, artifact_file: str) -> None:
        pass


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

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        path = Path(path)
        if path.is_dir():
            self.client.log_artifacts(self.run_id, str(path), artifact_path)
        else:
            self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_text(self, text: str, artifact_file: str) -> None:
        self.client.log_text(self.run_id, scrub(text), artifact_file)


def configure_mlflow(uri: str | None, experiment: str, artifact_location: str | None = None) -> str:
    """Points MLflow at the store and makes sure the experiment exists; returns the experiment id."""
    import mlflow

    uri = tracking_uri(uri)
    mlflow.set_tracking_uri(uri)
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
    import mlflow

    client = mlflow.MlflowClient()
    if run_id is None:
        tags = {"mlflow.runName": run_name}
        if parent_run_id:
            tags["mlflow.parentRunId"] = parent_run_id
        run_id = client.create_run(experiment_id, run_name=run_name, tags=tags).info.run_id
    else:
        client.update_run(run_id, status="RUNNING")
    try:
        yield run_id
    except BaseException:
        client.set_terminated(run_id, status="FAILED")
        raise
    client.set_terminated(run_id, status="FINISHED")
