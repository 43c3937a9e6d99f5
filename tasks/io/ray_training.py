"""QLoRA training on a Ray cluster (`train.engine: ray`): Ray Train's TorchTrainer runs the training each rank of
torchrun runs (`tasks.io.launch.train_this_rank`: the HF Trainer, 4-bit QLoRA, packing, checkpoints in the run
directory, early stopping), on `train.ray.num_workers` workers over gloo (CPU) or NCCL (GPUs).

A worker that dies is Ray's to replace (`max_failures`): the new worker group starts the same function, which
resumes from the last checkpoint in the run directory. That directory must be reachable from every worker: any
folder on a one-machine cluster, shared storage (NFS, a mounted bucket) on several machines. Rank 0 writes the
result; the pipeline logs its history to MLflow once, as for torchrun.
"""

from __future__ import annotations

from pathlib import Path

from tasks.io.launch import LaunchError, read_result, train_this_rank
from tasks.lib.config import RunConfig
from tasks.lib.training import TrainResult


def _train_loop(settings: dict) -> None:
    import ray.train

    context = ray.train.get_context()
    train_this_rank(
        RunConfig.model_validate_json(settings["config"]),
        Path(settings["data_dir"]),
        Path(settings["run_dir"]),
        settings["general_text"],
        Path(settings["result_file"]),
        context.get_world_rank(),
    )


def ray_training(config: RunConfig, data_dir: Path, run_dir: Path, general_text: list[str]) -> TrainResult:
    """Train on the Ray cluster `config.train.ray.address` names (a one-machine one started for it when null)."""
    import ray
    from ray.train import FailureConfig, ScalingConfig
    from ray.train import RunConfig as RayRunConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    settings = config.train.ray
    run_dir = Path(run_dir).resolve()
    launch_dir = run_dir / "launch"
    launch_dir.mkdir(parents=True, exist_ok=True)
    result_file = launch_dir / "result.json"
    result_file.unlink(missing_ok=True)
    gpu = settings.gpus_per_worker > 0
    resources = {"CPU": settings.cpus_per_worker, **({"GPU": settings.gpus_per_worker} if gpu else {})}
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=settings.address, log_to_driver=True, include_dashboard=False)
    try:
        trainer = TorchTrainer(
            _train_loop,
            train_loop_config={
                "config": config.model_dump_json(),
                "data_dir": str(Path(data_dir).resolve()),
                "run_dir": str(run_dir),
                "general_text": general_text,
                "result_file": str(result_file),
            },
            torch_config=TorchConfig(backend="nccl" if gpu else "gloo"),
            scaling_config=ScalingConfig(num_workers=settings.num_workers, use_gpu=gpu, resources_per_worker=resources),
            run_config=RayRunConfig(
                name=f"{config.name}-{run_dir.name}",
                storage_path=str(launch_dir / "ray"),
                failure_config=FailureConfig(max_failures=settings.max_failures),
            ),
        )
        try:
            trainer.fit()
        except Exception as error:  # Ray's TrainingFailedError carries the workers' tracebacks
            raise LaunchError(
                f"Ray training on {settings.num_workers} workers failed after {settings.max_failures} replacements: "
                f"{error}; a rerun with the same run id resumes from the last checkpoint"
            ) from error
    finally:
        if started_here:
            ray.shutdown()
    if not result_file.is_file():
        raise LaunchError(f"Ray training ended without rank 0's result ({result_file})")
    return read_result(result_file)
