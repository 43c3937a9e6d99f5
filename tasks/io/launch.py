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

from tasks.lib.config import RunConfig
from tasks.lib.errors import UserError
from tasks.lib.training import TrainResult


class LaunchError(UserError, RuntimeError):
    """The training processes did not finish; their output says why."""


def launch_training(
    config: RunConfig, data_dir: Path, run_dir: Path, general_text: list[str], timeout: float | None = None
) -> TrainResult:
    """Train with `config.train.num_processes` processes and return rank 0's result."""
    run_dir = Path(run_dir)
    launch_dir = run_dir / "launch"
    launch_dir.mkdir(parents=True, exist_ok=True)
    config_file, text_file, result_file = (launch_dir / name for name in ("config.json", "text.json", "result.json"))
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
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    completed = subprocess.run(command, env=env, timeout=timeout, check=False)
    if completed.returncode != 0 or not result_file.is_file():
        raise LaunchError(
            f"{config.train.num_processes} training processes exited with code {completed.returncode} (their output "
            "is above); a rerun with the same run id resumes from the last checkpoint"
        )
    fields = json.loads(result_file.read_text())
    return TrainResult(**{**fields, "adapter_dir": Path(fields["adapter_dir"])})


LOSS_KEYS = ("loss", "train_loss", "eval_loss", "first_eval_loss", "best_eval_loss")


def unscaled_losses(entry: dict, world_size: int) -> dict:
    """The Trainer multiplies each process's loss by the number of processes (so that DDP's gradient mean equals
    the gradient of the mean over every token of the global batch, average_tokens_across_devices) and reports the
    training and evaluation losses so multiplied: divided back, they compare with a single process's."""
    return {
        key: value / world_size if key in LOSS_KEYS and value is not None else value for key, value in entry.items()
    }


def _worker(config_file: str, data_dir: str, run_dir: str, text_file: str, result_file: str) -> None:
    from tasks.io.models import load_base_model, load_tokenizer
    from tasks.lib.training import train_adapter

    config = RunConfig.model_validate_json(Path(config_file).read_text())
    tokenizer = load_tokenizer(config.model)
    result = train_adapter(
        config,
        lambda: load_base_model(config.model, config.quantization),
        tokenizer,
        Path(data_dir),
        Path(run_dir),
        general_text=json.loads(Path(text_file).read_text()),
    )
    if int(os.environ.get("RANK", "0")) == 0:
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        fields = {
            **dataclasses.asdict(result),
            "adapter_dir": str(result.adapter_dir),
            "log_history": [unscaled_losses(entry, world_size) for entry in result.log_history],
            **unscaled_losses(
                {"first_eval_loss": result.first_eval_loss, "best_eval_loss": result.best_eval_loss}, world_size
            ),
        }
        Path(result_file).write_text(json.dumps(fields, default=str))


if __name__ == "__main__":
    _worker(*sys.argv[1:6])
