"""SIGKILL in each step in turn, each time rerun with the same run id: the run converges, nothing is left lying.

Each step is killed where it hurts (QLORA_FAILPOINT, tasks/lib/core/failpoints.py): right after its MLflow step run
started, or for registration right after the model version was created and before it was verified or aliased.
A real Prefect server with both automations and `qlora serve` runs alongside, as `qlora stack up` sets them up.
"""

from __future__ import annotations

import hashlib
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import REPO_ROOT, write_tiny_config
from tests.integration.servers import BIN_DIR, prefect_server, start, stop, wait_for

pytestmark = pytest.mark.integration

STEPS = ["train", "evaluate", "merge", "forgetting", "register"]
HEARTBEAT_SECONDS = 30  # Prefect's minimum
CRASH_AFTER_SECONDS = 45


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, str], Path]]:
    """A Prefect server with both automations, and `qlora serve` serving the deployment that closes a crashed run's
    MLflow runs (as `qlora stack up` runs them)."""
    folder = tmp_path_factory.mktemp("kills")
    with prefect_server(folder / "prefect-home", PREFECT_FLOWS_HEARTBEAT_FREQUENCY=str(HEARTBEAT_SECONDS)) as (
        api,
        env,
        _,
    ):
        serve_log = folder / "serve.log"
        serving = start([str(BIN_DIR / "qlora"), "serve", "configs/tiny.yaml"], env, serve_log)
        try:

            def closer_served() -> bool:
                names = [d["name"] for d in httpx.post(f"{api}/deployments/filter", json={}, timeout=30).json()]
                return "qlora-close-crashed" in names

            wait_for(closer_served, 120, "qlora serve to serve its deployments", [serve_log])
            install = f"from flows.automations import install_crash_detection as i; i({CRASH_AFTER_SECONDS})"
            subprocess.run([str(BIN_DIR / "python"), "-c", install], env=env, cwd=REPO_ROOT, check=True, timeout=120)
            yield api, env, serve_log
        finally:
            stop([serving])


def _sha256(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


def _flow_runs(api: str, run_id: str) -> list[dict]:
    runs = httpx.post(f"{api}/flow_runs/filter", json={}, timeout=30).raise_for_status().json()
    return [run for run in runs if run["parameters"].get("run_id") == run_id]


def test_a_kill_in_each_step_in_turn_then_a_rerun_converges(
    server, tmp_path: Path, tiny_model_dir: Path, benchmark_data_dir: Path
) -> None:
    """One run, killed in train; its rerun killed in evaluate; and so on to register; the last rerun converges.
    Each rerun resumes the killed step and reuses every step finished before it."""
    api, env, serve_log = server
    config_path = write_tiny_config(tmp_path, tiny_model_dir, benchmark_data_dir, {"train.max_steps": 4})
    # Another run, killed in train and never resumed: Prefect marks it Crashed, and its MLflow runs are closed.
    left_alone = [str(BIN_DIR / "qlora"), "run", str(config_path)]
    killed = subprocess.run(left_alone, env=dict(env, QLORA_FAILPOINT="train"), cwd=REPO_ROOT, capture_output=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]

    run_id = "kill-each-step"
    command = [str(BIN_DIR / "qlora"), "run", str(config_path), "--run-id", run_id]
    run_dir = tmp_path / "runs" / "tiny" / run_id
    adapter = run_dir / "adapter" / "adapter_model.safetensors"
    for step in STEPS:
        failpoint = "register.version-created" if step == "register" else step
        adapter_before = _sha256(adapter)
        attempt = [*command[:-2], "--new-run-id", run_id] if step == "train" else command
        killed = subprocess.run(attempt, env=dict(env, QLORA_FAILPOINT=failpoint), cwd=REPO_ROOT, capture_output=True)
        assert killed.returncode == -signal.SIGKILL, (step, killed.stderr[-3000:])
        assert (_sha256(adapter) is None) == (step == "train")
        if adapter_before is not None:
            assert _sha256(adapter) == adapter_before, step  # a finished training is reused, never trained further
        assert not (run_dir / "merged").exists() or step in {"forgetting", "register"}  # never a half-written one
        if step != "train":  # this attempt resumed the killed one: its flow run is Crashed now, not in minutes
            killed_before = [run for run in _flow_runs(api, run_id) if run["state"]["type"] == "CRASHED"]
            assert any("was resumed by flow run" in run["state"]["message"] for run in killed_before), step

    mlflow = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    (pending,) = mlflow.search_model_versions("name='tiny-sst2'")
    assert pending.tags["round_trip"] == "pending" and not pending.aliases  # killed before its check: labelled

    typo = subprocess.run([*command[:-1], "kill-each-stpe"], env=env, cwd=REPO_ROOT, capture_output=True, text=True)
    assert typo.returncode == 1 and "closest: kill-each-step" in typo.stderr, typo.stderr[-2000:]
    # The resume as one command, from the folder the runs are in: the run's own config and overrides.
    resume = [str(BIN_DIR / "qlora"), "run", "--run-id", run_id]
    rerun = subprocess.run(resume, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]

    experiment_id = mlflow.get_experiment_by_name("tiny").experiment_id
    parents = mlflow.search_runs([experiment_id], filter_string=f"tags.run_id = '{run_id}'")
    assert [parent.info.status for parent in parents] == ["FINISHED"]  # one parent run, finished
    children = mlflow.search_runs(
        [experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parents[0].info.run_id}'"
    )
    finished = sorted(child.data.tags["step"] for child in children if child.info.status == "FINISHED")
    assert finished == sorted(STEPS)  # each step ran to the end once; completed steps were reused
    others = sorted(
        (child.data.tags["step"], child.info.status) for child in children if child.info.status != "FINISHED"
    )
    assert others == sorted((step, "KILLED") for step in STEPS)  # each killed attempt's step run is closed

    versions = mlflow.search_model_versions("name='tiny-sst2'")
    assert len(versions) == 1 and versions[0].tags["round_trip"] == "verified"
    assert str(mlflow.get_model_version_by_alias("tiny-sst2", "champion").version) == str(versions[0].version)

    # Each resume marked the attempt it replaced Crashed; the last rerun completed.
    states = sorted(run["state"]["type"] for run in _flow_runs(api, run_id))
    assert states == sorted(["COMPLETED"] + ["CRASHED"] * len(STEPS))

    abandoned = [
        run
        for run in mlflow.search_runs([experiment_id], "tags.pipeline = 'qlora'")
        if run.data.tags["run_id"] != run_id
    ]
    assert len(abandoned) == 1

    def closed() -> list[str] | None:
        runs = [mlflow.get_run(abandoned[0].info.run_id)] + mlflow.search_runs(
            [experiment_id], f"tags.mlflow.parentRunId = '{abandoned[0].info.run_id}'"
        )
        statuses = sorted(run.info.status for run in runs)
        return statuses if set(statuses) == {"KILLED"} else None

    statuses = wait_for(closed, CRASH_AFTER_SECONDS + 4 * HEARTBEAT_SECONDS, "the abandoned run closed", [serve_log])
    assert len(statuses) == 2  # the parent and its train step
