"""Data-parallel training: `train.num_processes` processes, each training on its share of every global batch (DDP
over NCCL on GPUs, gloo on the CPU; FSDP with an accelerate config), started by torchrun or, when
`train.accelerate_config` names a file, by `accelerate launch`; rank 0 writes the adapter and the result.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from tasks.lib.config import RunConfig
from tasks.lib.core.errors import UserError
from tasks.lib.core.run_layout import RunLayout
from tasks.lib.training.trainer import TrainResult


class LaunchError(UserError, RuntimeError):
    """The training processes did not finish; their output says why."""


def launch_training(
    config: RunConfig, data_dir: Path, run_dir: Path, general_text: list[str], timeout: float | None = None
) -> TrainResult:
    """Train with `config.train.num_processes` processes and return rank 0's result."""
    run_dir = Path(run_dir)
    layout = RunLayout.of(run_dir)
    launch_dir, result_file = layout.launch_dir, layout.launch_result
    launch_dir.mkdir(parents=True, exist_ok=True)
    config_file, text_file = layout.launch_config, layout.launch_general_text
    config_file.write_text(config.model_dump_json())
    text_file.write_text(json.dumps(general_text))
    result_file.unlink(missing_ok=True)
    arguments = [str(path) for path in (config_file, Path(data_dir), run_dir, text_file, result_file)]
    processes = str(config.train.num_processes)
    if config.train.accelerate_config:
        launcher = ["accelerate.commands.launch", "--config_file", config.train.accelerate_config]
        launcher += ["--num_processes", processes]
    else:
        launcher = ["torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
    command = [sys.executable, "-m", *launcher, "-m", "tasks.io.launch", *arguments]
    # The ranks split this process's CPU threads (its share of the machine, tasks.lib.threads) between them.
    rank_threads = max(1, torch.get_num_threads() // config.train.num_processes)
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(rank_threads))}
    completed = subprocess.run(command, env=env, timeout=timeout, check=False)
    if completed.returncode != 0 or not result_file.is_file():
        raise LaunchError(
            f"{config.train.num_processes} training processes exited with code {completed.returncode} (their output "
            "is above); a rerun with the same run id resumes from the last checkpoint"
        )
    return read_result(result_file)


def train_this_rank(
    config: RunConfig, data_dir: Path, run_dir: Path, general_text: list[str], result_file: Path, rank: int
) -> None:
    """One process's part of data-parallel training (the process group is set up by its launcher: torchrun,
    accelerate or Ray Train); rank 0 writes the result."""
    from tasks.io.models import load_base_model, load_tokenizer
    from tasks.lib.training.trainer import train_adapter

    tokenizer = load_tokenizer(config.model)
    result = train_adapter(
        config,
        lambda: load_base_model(config.model, config.quantization),
        tokenizer,
        Path(data_dir),
        Path(run_dir),
        general_text=general_text,
    )
    if rank == 0:
        fields = {**dataclasses.asdict(result), "adapter_dir": str(result.adapter_dir)}
        Path(result_file).write_text(json.dumps(fields, default=str))


def read_result(result_file: Path) -> TrainResult:
    fields = json.loads(Path(result_file).read_text())
    return TrainResult(**{**fields, "adapter_dir": Path(fields["adapter_dir"])})


def _worker(config_file: str, data_dir: str, run_dir: str, text_file: str, result_file: str) -> None:
    train_this_rank(
        RunConfig.model_validate_json(Path(config_file).read_text()),
        Path(data_dir),
        Path(run_dir),
        json.loads(Path(text_file).read_text()),
        Path(result_file),
        int(os.environ.get("RANK", "0")),
    )


if __name__ == "__main__":
    _worker(*sys.argv[1:6])
