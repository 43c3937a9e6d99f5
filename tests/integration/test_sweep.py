"""A sweep on a real Prefect server with a real process work pool and two `prefect worker` processes, tiny model:
four grid trials, two of which cannot pass the gate (they must show a task gain the tiny model cannot make); the best
passing trial is
registered, the failing ones are not; MLflow holds the sweep run, every trial's run under it, and the Pareto plot."""

from __future__ import annotations

import subprocess
from pathlib import Path

import httpx
import pytest
from mlflow.tracking import MlflowClient

from tasks.io.registry import PIPELINE_RUN_TAG
from tests.conftest import write_tiny_config
from tests.integration.servers import BIN_DIR, prefect_server, start, stop

pytestmark = pytest.mark.integration

POOL = "sweep-test-pool"


def test_a_sweep_spreads_trials_over_two_workers_and_registers_the_best_passing_trial(
    tmp_path: Path, tiny_model_dir: Path, benchmark_data_dir: Path
) -> None:
    sweep = {
        "parameters": {
            "train.learning_rate": {"choices": [0.003, 0.01]},
            # A random tiny model gains nothing on the task in 4 steps: asked to prove a gain, the gate does not pass.
            "gate.require_task_improvement": {"choices": [False, True]},
        },
        "trials": 4,
        "sampler": "grid",
        "parallel": 2,
        "work_pool": POOL,
        "trial_timeout_s": 900,
    }
    overrides = {"sweep": sweep, "train.max_steps": 4, "train.eval_steps": 2, "train.save_steps": 2}
    config_path = write_tiny_config(tmp_path, tiny_model_dir, benchmark_data_dir, overrides)
    with prefect_server(tmp_path / "prefect-home") as (api, env, server_log):
        worker_logs = [tmp_path / f"worker-{i}.log" for i in range(2)]
        workers = [
            start(
                [str(BIN_DIR / "prefect"), "worker", "start", "--pool", POOL, "--limit", "1", "--name", f"w{i}"],
                env,
                log,
            )
            for i, log in enumerate(worker_logs)
        ]
        try:
            sweep_run = subprocess.run(
                [str(BIN_DIR / "qlora"), "sweep", str(config_path)],
                env=env,
                capture_output=True,
                text=True,
                timeout=1800,
                check=False,
            )
            flow_runs = httpx.post(f"{api}/flow_runs/filter", json={}, timeout=30).raise_for_status().json()
        finally:
            stop(workers)
    output = sweep_run.stdout + sweep_run.stderr
    assert sweep_run.returncode == 0, output[-4000:]

    trial_runs = [run for run in flow_runs if "sweep" in run.get("tags", [])]
    assert len(trial_runs) == 4 and {run["state"]["type"] for run in trial_runs} == {"COMPLETED"}, trial_runs
    for log in worker_logs:  # both workers ran trials
        text = log.read_text(errors="replace")
        assert any(run["id"] in text for run in trial_runs), text[-2000:]

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("tiny")
    (sweep_parent,) = client.search_runs([experiment.experiment_id], "tags.pipeline = 'qlora-sweep'")
    trials = client.search_runs(
        [experiment.experiment_id],
        f"tags.mlflow.parentRunId = '{sweep_parent.info.run_id}' and tags.pipeline = 'qlora'",
    )
    assert len(trials) == 4
    artifacts = {artifact.path for artifact in client.list_artifacts(sweep_parent.info.run_id)}
    assert {"sweep_pareto.png", "sweep_trials.md"} <= artifacts
    passed = [run for run in trials if run.data.tags.get("gate") == "passed"]
    failed = [run for run in trials if run.data.tags.get("gate") == "failed"]
    assert len(passed) == 2 and len(failed) == 2
    best = {run.data.tags["run_id"]: run for run in passed}[sweep_parent.data.tags["best_run_id"]]
    # Chosen on the validation loss (selection data), never on the test items' task gain.
    losses = [run.data.metrics["train.best_eval_loss"] for run in passed]
    assert best.data.metrics["train.best_eval_loss"] == min(losses)
    assert best.data.metrics["train.best_eval_loss"] == sweep_parent.data.metrics["best.validation_loss"]
    versions = client.search_model_versions("name = 'tiny-sst2'")
    assert len(versions) == 1  # only the best passing trial went through the registry
    assert versions[0].tags[PIPELINE_RUN_TAG] == best.data.tags["run_id"]
    assert not any(run.data.tags.get("registered_version") for run in failed)
