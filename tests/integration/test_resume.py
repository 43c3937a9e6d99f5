"""A training killed with SIGKILL after a checkpoint resumes from that checkpoint when started again."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT, write_tiny_config

pytestmark = pytest.mark.integration

RUN_ID = "resume-test"
MAX_STEPS = 120


def _train_command(config_path: Path) -> list[str]:
    return [str(Path(sys.executable).parent / "qlora"), "train", str(config_path), "--run-id", RUN_ID]


def test_killed_training_resumes_from_its_last_checkpoint(
    tmp_path: Path, tiny_model_dir: Path, benchmark_data_dir: Path
) -> None:
    overrides = {"train.max_steps": MAX_STEPS, "train.eval_steps": 10, "train.save_steps": 10}
    config_path = write_tiny_config(tmp_path, tiny_model_dir, benchmark_data_dir, overrides)
    run_dir = tmp_path / "runs" / "tiny" / RUN_ID
    env = dict(os.environ, PYTHONUNBUFFERED="1")

    log = (tmp_path / "first.log").open("wb")
    first = subprocess.Popen(_train_command(config_path), cwd=REPO_ROOT, env=env, stdout=log, stderr=log)
    deadline = time.monotonic() + 300
    while not list(run_dir.glob("checkpoints/checkpoint-*/trainer_state.json")):
        assert first.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
        assert time.monotonic() < deadline, "no checkpoint within 300 s"
        time.sleep(0.2)
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert first.returncode == -signal.SIGKILL
    assert not (run_dir / "adapter").exists(), "the first training finished before it could be killed"

    second = subprocess.run(
        _train_command(config_path), cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert second.returncode == 0, second.stderr[-3000:]
    result = json.loads(second.stdout[second.stdout.index("{\n") :])
    assert result["resumed_from_step"] is not None and 10 <= result["resumed_from_step"] < MAX_STEPS
    assert result["resumed_from_step"] % 10 == 0
    assert result["global_step"] == MAX_STEPS
    assert (run_dir / "adapter" / "adapter_model.safetensors").is_file()
