"""SIGKILL in each step in turn, each time rerun with the same run id: the run converges, nothing is left lying.

Each step is killed where it hurts (QLORA_FAILPOINT, tasks/lib/failpoints.py): right after its MLflow step run
started, or for registration right after the model version was created and before it was verified or aliased.
A real Prefect server with the crash-detection automation runs alongside, as `qlora stack up` sets it up.
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
from tests.integration.servers import BIN_DIR, prefect_server, wait_for

pytestmark = pytest.mark.integration

STEPS = ["train", "evaluate", "merge", "forgetting", "register"]
HEARTBEAT_SECONDS = 30  # Prefect's minimum
CRASH_AFTER_SECONDS = 45


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, str]]]:
    home = tmp_path_factory.mktemp("kills") / "prefect-home"
    with prefect_server(home, PREFECT_FLOWS_HEARTBEAT_FREQUENCY=str(HEARTBEAT_SECONDS)) as (api, env, _):
        install = f"from flows.automations import install_crash_detection as i; i({CRASH_AFTER_SECONDS})"
        subprocess.run([str(BIN_DIR / "python"), "-c", install], env=env, cwd=REPO_ROOT, check=True, timeout=120)
        yield api, env


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
    api, env = server
    config_path = write_tiny_config(tmp_path, tiny_model_dir, benchmark_data_dir, {"train.max_steps": 4})
    run_id = "kill-each-step"
    command = [str(BIN_DIR / "qlora"), "run", str(config_path), "--run-id", run_id]
    run_dir = tmp_path / "runs" / "tiny" / run_id
    adapter = run_dir / "adapter" / "adapter_model.safetensors"
    for step in STEPS:
        failpoint = "register.version-created" if step == "register" else step
        adapter_before = _sha256(adapter)
        killed = subprocess.run(command, env=dict(env, QLORA_FAILPOINT=failpoint), cwd=REPO_ROOT, capture_output=True)
        assert killed.returncode == -signal.SIGKILL, (step, killed.stderr[-3000:])
        assert (_sha256(adapter) is None) == (step == "train")
        if adapter_before is not None:
            assert _sha256(adapter) == adapter_before, step  # a finished training is reused, never trained further
        assert not (run_dir / "merged").exists() or step in {"forgetting", "register"}  # never a half-written one

    rerun = subprocess.run(command, env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]

    mlflow = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment_id = mlflow.get_experiment_by_name("tiny").experiment_id
    parents = mlflow.search_runs([experiment_id], filter_string="tags.pipeline = 'qlora'")
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

    # Prefect's own mechanism marks each dead attempt's flow run as crashed; the last rerun completed.
    def states() -> list[str] | None:
        found = sorted(run["state"]["type"] for run in _flow_runs(api, run_id))
        return found if found == sorted(["COMPLETED"] + ["CRASHED"] * len(STEPS)) else None

    wait_for(states, CRASH_AFTER_SECONDS + 4 * HEARTBEAT_SECONDS, "the killed flow runs to be marked CRASHED", [])
