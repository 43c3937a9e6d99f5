"""Work on a Ray cluster (the config's `ray` section).

Training (`train.engine: ray`): Ray Train's TorchTrainer runs the training each rank of
torchrun runs (`tasks.io.launch.train_this_rank`: the HF Trainer, 4-bit QLoRA, packing, checkpoints in the run
directory, early stopping), on `ray.num_workers` workers over gloo (CPU) or NCCL (GPUs).

A worker that dies is Ray's to replace (`max_failures`): the new worker group starts the same function, which
resumes from the last checkpoint in the run directory. That directory must be reachable from every worker: any
folder on a one-machine cluster, shared storage (NFS, a mounted bucket) on several machines. Rank 0 writes the
result; the pipeline logs its history to MLflow once, as for torchrun. An error a new worker would hit again
(`cannot_heal`: a bad config, a missing file, a model that cannot load) ends the run at once, with its cause in
one line, instead of being retried.

Scoring (`forgetting.engine: ray`): the benchmarks (or, group-sequential, a look's blocks of them) are split over
`ray.num_workers` Ray tasks; each loads the model (the merged folder, or the base) and scores its share with the
local scorer; the results are joined by name.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tasks.io.launch import LaunchError, read_result, train_this_rank
from tasks.lib.config import RunConfig
from tasks.lib.core.errors import cannot_heal
from tasks.lib.core.run_layout import RunLayout
from tasks.lib.gate.benchmark_scores import BenchmarkScores
from tasks.lib.general_benchmarks.benchmark_scoring import BenchmarkPlan, configured_plans, score_benchmarks
from tasks.lib.training.trainer import TrainResult


def _train_loop(settings: dict) -> None:
    import ray.train

    context = ray.train.get_context()
    try:
        train_this_rank(
            RunConfig.model_validate_json(settings["config"]),
            Path(settings["data_dir"]),
            Path(settings["run_dir"]),
            settings["general_text"],
            Path(settings["result_file"]),
            context.get_world_rank(),
        )
    except Exception as error:
        if not cannot_heal(error):
            raise  # Ray replaces the worker group (max_failures); the new one resumes from the last checkpoint
        # A replacement would fail the same way: end this worker normally and leave the cause for the driver
        # (a line per worker).
        with Path(settings["fatal_file"]).open("a", encoding="utf-8") as causes:
            causes.write(" ".join(f"{type(error).__name__}: {error}".split()) + "\n")


def _connect(address: str | None) -> bool:
    """Join the cluster (a private one-machine cluster when None); True when this call connected."""
    import ray

    if ray.is_initialized():
        return False
    ray.init(address=address, include_dashboard=False)
    return True


@contextmanager
def ray_connection(address: str | None) -> Iterator[None]:
    """Connected to the cluster for the block (every `score_on_ray` inside reuses the connection, and a private
    cluster is started once); left as it was found afterwards."""
    import ray

    started_here = _connect(address)
    try:
        yield
    finally:
        if started_here:
            ray.shutdown()


def _score_share(config_json: str, plans_json: list[str], merged_dir: str | None) -> dict[str, BenchmarkScores]:
    from tasks.io.models import load_scored_model, load_tokenizer

    config = RunConfig.model_validate_json(config_json)
    plans = [BenchmarkPlan.model_validate_json(plan) for plan in plans_json]
    return score_benchmarks(config, load_scored_model(config, merged_dir), load_tokenizer(config.model), plans=plans)


def score_on_ray(
    config: RunConfig, merged_dir: str | None, plans: list[BenchmarkPlan] | None = None
) -> dict[str, BenchmarkScores]:
    """`score_benchmarks` for the merged model (or, None, the base) on `plans` (default: every configured
    benchmark), the plans split over Ray tasks."""
    import ray

    settings = config.ray
    plans = configured_plans(config) if plans is None else plans
    shares = [plans[worker :: settings.num_workers] for worker in range(settings.num_workers)]
    resources = {"num_cpus": settings.cpus_per_worker, "num_gpus": settings.gpus_per_worker}
    remote = ray.remote(**resources)(_score_share)
    folder = str(Path(merged_dir).resolve()) if merged_dir else None
    with ray_connection(settings.address):
        pending = [
            remote.remote(config.model_dump_json(), [plan.model_dump_json() for plan in share], folder)
            for share in shares
            if share
        ]
        results: dict[str, BenchmarkScores] = {}
        for part in ray.get(pending):
            results.update(part)
    return {plan.name: results[plan.name] for plan in plans}


def ray_training(config: RunConfig, data_dir: Path, run_dir: Path, general_text: list[str]) -> TrainResult:
    """Train on the Ray cluster `config.ray.address` names (a one-machine one started for it when null)."""
    import ray
    from ray.train import FailureConfig, ScalingConfig
    from ray.train import RunConfig as RayRunConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    settings = config.ray
    run_dir = Path(run_dir).resolve()
    layout = RunLayout.of(run_dir)
    launch_dir, result_file, fatal_file = layout.launch_dir, layout.launch_result, layout.launch_fatal_error
    launch_dir.mkdir(parents=True, exist_ok=True)
    result_file.unlink(missing_ok=True)
    fatal_file.unlink(missing_ok=True)
    gpu = settings.gpus_per_worker > 0
    resources = {"CPU": settings.cpus_per_worker, **({"GPU": settings.gpus_per_worker} if gpu else {})}
    started_here = _connect(settings.address)
    try:
        trainer = TorchTrainer(
            _train_loop,
            train_loop_config={
                "config": config.model_dump_json(),
                "data_dir": str(Path(data_dir).resolve()),
                "run_dir": str(run_dir),
                "general_text": general_text,
                "result_file": str(result_file),
                "fatal_file": str(fatal_file),
            },
            torch_config=TorchConfig(backend="nccl" if gpu else "gloo"),
            scaling_config=ScalingConfig(num_workers=settings.num_workers, use_gpu=gpu, resources_per_worker=resources),
            run_config=RayRunConfig(
                name=f"{config.name}-{run_dir.name}",
                storage_path=str(layout.ray_storage),
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
    if not result_file.is_file() and fatal_file.is_file():
        cause = fatal_file.read_text(encoding="utf-8").splitlines()[0]
        raise LaunchError(f"Ray training stopped, not retried (a new worker would fail the same way): {cause}")
    if not result_file.is_file():
        raise LaunchError(f"Ray training ended without rank 0's result ({result_file})")
    return read_result(result_file)
