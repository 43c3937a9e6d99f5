"""Tracking: secrets never reach MLflow; runs open and close with the right status in a throwaway store."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient
from mlflow.tracking._tracking_service import utils as tracking_utils

from tasks.io.tracking import MlflowTracker, configure_mlflow, flatten, mlflow_run, scrub, scrub_mapping

HF_TOKEN = "hf_" + "AbCdEfGhIjKlMnOpQrStUvWxYz01234567"  # 34 characters after the prefix, like a real one
DB_PASSWORD = "Sup3rS3cretPw"
DB_URI = f"postgresql://trainer:{DB_PASSWORD}@db.internal:5432/mlflow"


# --- scrub / scrub_mapping / flatten -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("uri", "kept"),
    [
        (DB_URI, "postgresql://***@db.internal:5432/mlflow"),
        ("https://user:pw@huggingface.co/org/model", "https://***@huggingface.co/org/model"),
        ("s3://key:secret@bucket/path", "s3://***@bucket/path"),
        ("postgresql://u:p@ss@w0rd@db:5432/m", "postgresql://***@db:5432/m"),  # a raw "@" in the password
        ("https://host/path?mail=a@b.org", "https://host/path?mail=a@b.org"),  # "@" after the authority
    ],
)
def test_scrub_masks_uri_credentials(uri: str, kept: str) -> None:
    assert scrub(uri) == kept


@pytest.mark.parametrize("value", ["sqlite:///mlruns.db", "https://huggingface.co/org/model", "/data/raw/sst2", "8"])
def test_scrub_leaves_plain_values_alone(value: str) -> None:
    assert scrub(value) == value


def test_scrub_masks_hf_token_inside_a_value() -> None:
    cleaned = scrub(f"huggingface-cli login --token {HF_TOKEN} && train")
    assert HF_TOKEN not in cleaned
    assert cleaned == "huggingface-cli login --token *** && train"


def test_scrub_masks_secrets_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_API_KEY", "0123456789abcdef-not-a-uri")
    monkeypatch.setenv("MY_SERVICE_PASSWORD", "hunter2hunter2")
    cleaned = scrub("key=0123456789abcdef-not-a-uri pw=hunter2hunter2")
    assert "0123456789abcdef" not in cleaned
    assert "hunter2" not in cleaned


@pytest.mark.parametrize(
    "key", ["token", "hf_token", "HF_TOKEN", "password", "db.password", "secret", "client_secret", "api_key", "apiKey"]
)
def test_scrub_mapping_masks_secret_keys(key: str) -> None:
    assert scrub_mapping({key: "anything-at-all", "model": "org/model"}) == {key: "***", "model": "org/model"}


def test_scrub_mapping_stringifies_and_scrubs_other_values() -> None:
    cleaned = scrub_mapping({"tracking.uri": DB_URI, "lora.r": 8, "flag": True, "empty": None})
    assert cleaned["tracking.uri"] == "postgresql://***@db.internal:5432/mlflow"
    assert cleaned["lora.r"] == "8"
    assert cleaned["flag"] == "True"
    assert cleaned["empty"] == "None"


def test_flatten_nested_mappings_with_dotted_keys() -> None:
    nested = {"model": {"name": "m", "quant": {"bits": 4}}, "seed": 7, "empty": {}}
    assert flatten(nested) == {"model.name": "m", "model.quant.bits": 4, "seed": 7}


def test_flatten_keeps_lists_as_single_values() -> None:
    flat = flatten({"lora": {"targets": ["q_proj", "v_proj"], "layers": [{"i": 0}]}})
    assert flat == {"lora.targets": ["q_proj", "v_proj"], "lora.layers": [{"i": 0}]}


def test_flatten_then_scrub_masks_nested_secrets() -> None:
    cleaned = scrub_mapping(flatten({"hub": {"token": HF_TOKEN, "repo": "org/model"}, "notes": [HF_TOKEN]}))
    assert cleaned["hub.token"] == "***"
    assert cleaned["hub.repo"] == "org/model"
    assert HF_TOKEN not in cleaned["notes"]


# --- a real MLflow store -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    """(folder, experiment id) of a private sqlite store; global MLflow state is restored afterwards."""
    root = tmp_path_factory.mktemp("mlflow")
    previous = tracking_utils._tracking_uri
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        patch.delenv("MLFLOW_REGISTRY_URI", raising=False)
        try:
            experiment_id = configure_mlflow(
                f"sqlite:///{root}/mlflow.db", "tracking-test", (root / "artifacts").as_uri()
            )
            yield root, experiment_id
        finally:
            while mlflow.active_run() is not None:
                mlflow.end_run()
            mlflow.set_tracking_uri(previous)


def test_configure_mlflow_is_idempotent(store: tuple[Path, str]) -> None:
    root, experiment_id = store
    assert configure_mlflow(f"sqlite:///{root}/mlflow.db", "tracking-test") == experiment_id
    other = configure_mlflow(f"sqlite:///{root}/mlflow.db", "another")
    assert other != experiment_id
    assert MlflowClient().get_experiment(experiment_id).name == "tracking-test"


def test_configure_mlflow_takes_the_experiment_a_concurrent_run_created_first(
    store: tuple[Path, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two runs starting together both find no experiment; the one whose create loses takes the winner's."""
    root, experiment_id = store
    lookup, calls = mlflow.get_experiment_by_name, []

    def looked_up_before_the_other_run_created_it(name: str):
        calls.append(name)
        return None if len(calls) == 1 else lookup(name)

    monkeypatch.setattr(mlflow, "get_experiment_by_name", looked_up_before_the_other_run_created_it)
    assert configure_mlflow(f"sqlite:///{root}/mlflow.db", "tracking-test") == experiment_id


def test_mlflow_run_finishes_and_records_name_and_parent(store: tuple[Path, str]) -> None:
    _, experiment_id = store
    client = MlflowClient()
    with mlflow_run(experiment_id, "parent") as parent_id:
        assert client.get_run(parent_id).info.status == "RUNNING"
        with mlflow_run(experiment_id, "child", parent_run_id=parent_id) as child_id:
            pass
    assert mlflow.active_run() is None  # the global active-run stack is untouched
    parent, child = client.get_run(parent_id), client.get_run(child_id)
    assert parent.info.status == child.info.status == "FINISHED"
    assert parent.info.run_name == "parent"
    assert child.data.tags["mlflow.parentRunId"] == parent_id


def test_mlflow_run_marks_failure_and_resumes(store: tuple[Path, str]) -> None:
    _, experiment_id = store
    client = MlflowClient()
    with pytest.raises(RuntimeError, match="boom"), mlflow_run(experiment_id, "flaky") as run_id:
        raise RuntimeError("boom")
    assert client.get_run(run_id).info.status == "FAILED"

    with mlflow_run(experiment_id, "flaky", run_id=run_id) as resumed:
        assert resumed == run_id
        assert client.get_run(run_id).info.status == "RUNNING"
    assert client.get_run(run_id).info.status == "FINISHED"


def test_tracker_logs_params_metrics_tags_and_artifacts(store: tuple[Path, str], tmp_path: Path) -> None:
    _, experiment_id = store
    many = {f"p{i:03d}": i for i in range(250)}  # more than one log_batch of 100
    (tmp_path / "report.md").write_text("# report")
    (tmp_path / "plots").mkdir()
    (tmp_path / "plots" / "a.png").write_bytes(b"png")
    with mlflow_run(experiment_id, "logging") as run_id:
        tracker = MlflowTracker(run_id)
        tracker.log_params({"model": {"name": "org/model", "lora": {"r": 8}}, "long": "x" * 7000, "many": many})
        tracker.log_metrics({"loss": 1.5, "nan": float("nan"), "inf": float("inf"), "text": "n/a"}, step=3)  # type: ignore[dict-item]
        tracker.set_tags({"gate": "passed"})
        tracker.log_artifact(tmp_path / "report.md")
        tracker.log_artifact(tmp_path / "plots", "plots")
    run = MlflowClient().get_run(run_id)
    assert run.data.params["model.name"] == "org/model"
    assert run.data.params["model.lora.r"] == "8"
    assert len(run.data.params["long"]) == 6000
    assert run.data.params["many.p249"] == "249"
    assert run.data.metrics == {"loss": 1.5}
    assert MlflowClient().get_metric_history(run_id, "loss")[0].step == 3
    assert run.data.tags["gate"] == "passed"
    artifacts = {item.path for item in MlflowClient().list_artifacts(run_id)}
    assert artifacts == {"report.md", "plots"}


def test_secrets_never_reach_the_store(store: tuple[Path, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Every way a secret may come in (key name, URI, raw token, environment) leaves no byte of it on disk."""
    root, experiment_id = store
    env_secret = "env-only-s3cret-value"
    monkeypatch.setenv("SOME_SERVICE_TOKEN", env_secret)
    with mlflow_run(experiment_id, "secrets") as run_id:
        tracker = MlflowTracker(run_id)
        tracker.log_params(
            {
                "hub": {"token": HF_TOKEN, "password": DB_PASSWORD},
                "tracking": {"uri": DB_URI},
                "command": f"train --hub-token {HF_TOKEN}",
                "note": f"fetched with {env_secret}",
            }
        )
        tracker.set_tags({"api_key": HF_TOKEN, "store": DB_URI, "hub_token": HF_TOKEN})
    params = MlflowClient().get_run(run_id).data.params
    assert params["hub.token"] == "***"
    assert params["tracking.uri"] == "postgresql://***@db.internal:5432/mlflow"

    stored = b"".join(path.read_bytes() for path in root.glob("mlflow.db*"))
    assert b"db.internal" in stored  # the params did land in this file
    assert [secret for secret in (HF_TOKEN, DB_PASSWORD, env_secret) if secret.encode() in stored] == []


def test_dataset_inputs_survive_a_concurrent_run_inserting_the_same_dataset_first(
    store: tuple[Path, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two runs of one data version start together: both insert the dataset row, and the loser's insert fails
    (its name and digest are unique in the experiment). Its retry links the row the other run made."""
    from mlflow.exceptions import MlflowException

    from tasks.io.tracking import log_dataset_inputs

    _, experiment_id = store
    client = MlflowClient()
    first, second = (client.create_run(experiment_id).info.run_id for _ in range(2))
    sources = {"train": "data/raw/sst2/train.tsv"}
    original, calls = MlflowClient.log_inputs, []

    def loses_the_race_once(self, run_id, datasets=None, models=None):
        calls.append(run_id)
        if len(calls) == 2:  # the second run's first insert: the first run's row landed in between
            raise MlflowException("UNIQUE constraint failed: datasets.experiment_id, datasets.name, datasets.digest")
        return original(self, run_id, datasets=datasets, models=models)

    monkeypatch.setattr(MlflowClient, "log_inputs", loses_the_race_once)
    log_dataset_inputs(first, sources, "0123456789abcdef", "race")
    log_dataset_inputs(second, sources, "0123456789abcdef", "race")
    for run_id in (first, second):
        inputs = client.get_run(run_id).inputs.dataset_inputs
        assert [(i.dataset.name, i.dataset.digest) for i in inputs] == [("race-train", "0123456789abcdef")]


def test_runs_starting_together_on_a_fresh_store_all_get_it(tmp_path: Path) -> None:
    """Three processes open one new SQLite store at once (MLflow creates its schema on first use): all succeed."""
    import subprocess
    import sys

    uri = f"sqlite:///{tmp_path / 'fresh.db'}"
    code = (
        "import sys; from tasks.io.tracking import configure_mlflow, create_run; "
        f"create_run(configure_mlflow({uri!r}, 'together'), 'run-' + sys.argv[1], {{}})"
    )
    starts = [
        subprocess.Popen([sys.executable, "-c", code, str(index)], stderr=subprocess.PIPE, text=True)
        for index in range(3)
    ]
    errors = [process.communicate(timeout=300)[1] for process in starts]
    assert [process.returncode for process in starts] == [0, 0, 0], "\n".join(error[-1500:] for error in errors)
    experiment = MlflowClient(tracking_uri=uri).get_experiment_by_name("together")
    assert len(MlflowClient(tracking_uri=uri).search_runs([experiment.experiment_id])) == 3
