"""A real Prefect server, the served deployments, and a run triggered through the API as the UI's "Run" does."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from mlflow.tracking import MlflowClient

from flows.serve import ON_DEMAND, SCHEDULED
from tasks.pipeline_run import artifact_key
from tests.conftest import REPO_ROOT, write_tiny_config

pytestmark = pytest.mark.integration

TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for(check, seconds: float, what: str, logs: list[Path]):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            found = check()
        except httpx.HTTPError:
            found = None
        if found:
            return found
        time.sleep(1)
    tails = "\n".join(f"--- {log}\n{log.read_text(errors='replace')[-3000:]}" for log in logs if log.exists())
    raise AssertionError(f"timed out after {seconds:.0f}s waiting for {what}\n{tails}")


def _start(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        command, env=env, cwd=REPO_ROOT, stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True
    )


@pytest.fixture
def served(tmp_path: Path, tiny_model_dir: Path, benchmark_data_dir: Path) -> Iterator[tuple[str, Path, list[Path]]]:
    """`prefect server start` on a free port and `qlora serve` of a tiny config against it."""
    config_path = write_tiny_config(tmp_path, tiny_model_dir, benchmark_data_dir, {"schedule.cron": "0 3 * * 1"})
    api = f"http://127.0.0.1:{_free_port()}/api"
    env = dict(
        os.environ,
        PREFECT_HOME=str(tmp_path / "prefect-home"),
        PREFECT_API_URL=api,
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_SERVER_UI_ENABLED="false",
    )
    env.pop("MLFLOW_TRACKING_URI", None)
    logs = [tmp_path / "server.log", tmp_path / "serve.log"]
    bin_dir = Path(sys.executable).parent
    port = api.rsplit(":", 1)[1].removesuffix("/api")
    server = _start([str(bin_dir / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", port], env, logs[0])
    processes = [server]
    try:
        _wait_for(lambda: httpx.get(f"{api}/health", timeout=5).status_code == 200, 180, "the Prefect server", logs)
        processes.append(_start([str(bin_dir / "qlora"), "serve", str(config_path)], env, logs[1]))
        yield api, tmp_path, logs
    finally:
        for process in reversed(processes):
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()


def test_ui_run_with_overrides_completes_and_registers(served) -> None:
    api, root, logs = served
    client = httpx.Client(base_url=api, timeout=30)

    def deployments() -> dict[str, dict] | None:
        found = {d["name"]: d for d in client.post("/deployments/filter", json={}).raise_for_status().json()}
        return found if {ON_DEMAND, SCHEDULED} <= set(found) else None

    served_deployments = _wait_for(deployments, 180, "the served deployments", logs)
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
    flow_run = _wait_for(
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

    run = _wait_for(finished, 420, "the flow run to finish", logs)
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
