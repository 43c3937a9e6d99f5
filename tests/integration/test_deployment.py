"""A real Prefect server, the served deployments, and a run triggered through the API as the UI's "Run" does."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from mlflow.tracking import MlflowClient

from flows.automations import CRASH_DETECTION
from flows.serve import ON_DEMAND, SCHEDULED
from tasks.pipeline_run import artifact_key
from tests.conftest import write_tiny_config
from tests.integration.servers import BIN_DIR, prefect_server, start, stop, wait_for

pytestmark = pytest.mark.integration

TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


@pytest.fixture
def served(tmp_path: Path, tiny_model_dir: Path, benchmark_data_dir: Path) -> Iterator[tuple]:
    """`prefect server start` on a free port and `qlora serve` of a tiny config against it."""
    config_path = write_tiny_config(tmp_path, tiny_model_dir, benchmark_data_dir, {"schedule.cron": "0 3 * * 1"})
    with prefect_server(tmp_path / "prefect-home") as (api, env, server_log):
        logs = [server_log, tmp_path / "serve.log"]
        serve = start([str(BIN_DIR / "qlora"), "serve", str(config_path)], env, logs[1])
        try:
            yield api, tmp_path, logs, env
        finally:
            stop([serve])


def test_ui_run_with_overrides_completes_and_registers(served) -> None:
    api, root, logs, env = served
    client = httpx.Client(base_url=api, timeout=30)

    def deployments() -> dict[str, dict] | None:
        found = {d["name"]: d for d in client.post("/deployments/filter", json={}).raise_for_status().json()}
        return found if {ON_DEMAND, SCHEDULED} <= set(found) else None

    served_deployments = wait_for(deployments, 180, "the served deployments", logs)
    automations = client.post("/automations/filter", json={}).raise_for_status().json()
    assert CRASH_DETECTION in {automation["name"] for automation in automations}  # `qlora serve` installs it
    scheduled = served_deployments[SCHEDULED]
    assert scheduled["schedules"] and scheduled["schedules"][0]["schedule"]["cron"] == "0 3 * * 1"
    assert scheduled["parameters"]["skip_if_unchanged"] is True
    on_demand = served_deployments[ON_DEMAND]
    schema = on_demand["parameter_openapi_schema"]["properties"]
    assert {"config_path", "overrides", "run_id", "skip_if_unchanged"} <= set(schema)  # the UI's form
    for deployment in (on_demand, scheduled):  # one run at a time is the deployment's own rule, queued
        assert deployment["global_concurrency_limit"]["limit"] == 1
        assert deployment["concurrency_options"]["collision_strategy"] == "ENQUEUE"

    # What the UI's "Run" -> "Custom run" posts: the deployment's defaults merged with the edited fields.
    parameters = {**on_demand["parameters"], "overrides": ["train.max_steps=8", "lora.r=4"]}
    # Retried on 503 as Prefect's own client and the UI do: a fresh SQLite-backed server answers 503 while its
    # background services hold the database.
    flow_run = wait_for(
        lambda: client.post(
            f"/deployments/{on_demand['id']}/create_flow_run", json={"parameters": parameters}
        ).raise_for_status(),
        60,
        "the server to accept the flow run",
        logs,
    )
    flow_run_id = flow_run.json()["id"]

    def finished() -> dict | None:
        run = client.get(f"/flow_runs/{flow_run_id}").raise_for_status().json()
        return run if run["state"]["type"] in TERMINAL else None

    run = wait_for(finished, 420, "the flow run to finish", logs)
    assert run["state"]["type"] == "COMPLETED", run["state"]

    query = {"artifacts": {"key": {"any_": [artifact_key("tiny")]}}, "sort": "CREATED_DESC", "limit": 1}
    artifacts = client.post("/artifacts/filter", json=query).raise_for_status().json()
    assert artifacts and artifacts[0]["flow_run_id"] == flow_run_id
    assert "version **1**" in artifacts[0]["data"]

    mlflow = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    parents = mlflow.search_runs(
        [mlflow.get_experiment_by_name("tiny").experiment_id], filter_string="tags.pipeline = 'qlora'"
    )
    assert len(parents) == 1 and parents[0].data.params["train.max_steps"] == "8"
    children = mlflow.search_runs(
        [parents[0].info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parents[0].info.run_id}'"
    )
    assert {child.data.tags["step"] for child in children} == {"train", "evaluate", "forgetting", "merge", "register"}
    train_run = next(child for child in children if child.data.tags["step"] == "train")
    assert train_run.data.metrics["global_step"] == 8
    assert str(mlflow.get_model_version_by_alias("tiny-sst2", "champion").version) == "1"

    # New data announced (`qlora data-updated`): the scheduled-retraining deployment's event trigger starts a run,
    # which trains on the new data version.
    automation_names = {a["name"] for a in client.post("/automations/filter", json={}).raise_for_status().json()}
    assert any("retrain tiny on new data" in name for name in automation_names), automation_names
    data_file = root / "sst2_slice.tsv"
    data_file.write_text("".join(data_file.read_text().splitlines(keepends=True)[:-20]))
    announce = [str(BIN_DIR / "qlora"), "data-updated", str(root / "tiny.yaml")]
    announced = subprocess.run(announce, env=env, capture_output=True, text=True, timeout=120)
    assert announced.returncode == 0 and "qlora.data.updated" in announced.stdout, announced.stderr[-2000:]

    def retrain_finished() -> dict | None:
        query = {"deployments": {"id": {"any_": [scheduled["id"]]}}}
        runs = client.post("/flow_runs/filter", json=query).raise_for_status().json()
        return next((run for run in runs if run["state"]["type"] in TERMINAL), None)

    retrain = wait_for(retrain_finished, 420, "the event-triggered retraining run", logs)
    assert retrain["state"]["type"] == "COMPLETED", retrain["state"]
    parents = mlflow.search_runs(
        [parents[0].info.experiment_id],
        filter_string="tags.pipeline = 'qlora'",
        order_by=["attributes.start_time DESC"],
    )
    assert len(parents) == 2 and parents[0].data.tags["data_version"] != parents[1].data.tags["data_version"]
