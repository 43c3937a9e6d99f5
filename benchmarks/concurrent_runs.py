"""Two trainings on one machine: one after the other, at the same time with each process's share of the cores
(`resources.cpu_threads: auto`, tasks.lib.threads), and at the same time with every process taking all cores (what
each process did before shares, and what torch does by default).

Each training is the pipeline's own (`train_adapter` on the demo's prepared rows, the same rows and seed each time),
in its own process, as two `qlora run`s or two sweep trials on one worker machine would be. Wall time from the first
start to the last end; the sequential pair is the baseline, measured in the same run.

    python -m benchmarks.concurrent_runs [--quick] [--steps 15] [--config configs/demo.yaml] [--set k=v]
"""

from __future__ import annotations

import multiprocessing as mp
import tempfile
import time
from pathlib import Path

from benchmarks._common import load_run_config, parser, quiet_libraries, ratio, write_results


def train_once(
    config_path: str, overrides: list[str], data_dir: str, out_dir: str, holders_dir: str, threads: int | None
) -> None:
    quiet_libraries()
    from tasks.io.models import load_base_model, load_tokenizer
    from tasks.lib.core import threads as core_share
    from tasks.lib.training.trainer import train_adapter

    config = load_run_config(config_path, overrides)
    core_share.hold_share(threads, Path(holders_dir))
    tokenizer = load_tokenizer(config.model)
    train_adapter(
        config,
        lambda: load_base_model(config.model, config.quantization),
        tokenizer,
        Path(data_dir),
        Path(out_dir),
        metrics_sink=lambda metrics, step: None,
    )


def timed_pair(config_path: str, overrides: list[str], data_dir: Path, work: Path, mode: str, cores: int) -> float:
    """Seconds for two trainings: `sequential`, `shared` (concurrent, shares) or `all-cores` (concurrent)."""
    context = mp.get_context("spawn")
    holders = work / f"holders-{mode}"
    threads = cores if mode == "all-cores" else None
    arguments = [
        (config_path, overrides, str(data_dir), str(work / f"{mode}-{i}"), str(holders), threads) for i in range(2)
    ]
    processes = [context.Process(target=train_once, args=args) for args in arguments]
    started = time.perf_counter()
    if mode == "sequential":
        for process in processes:
            process.start()
            process.join()
    else:
        for process in processes:
            process.start()
        for process in processes:
            process.join()
    seconds = time.perf_counter() - started
    if any(process.exitcode for process in processes):
        raise SystemExit(f"{mode}: a training process failed (exit codes {[p.exitcode for p in processes]})")
    return seconds


def main() -> int:
    quiet_libraries()
    arguments = parser(__doc__.splitlines()[0])
    arguments.add_argument("--steps", type=int, help="optimizer steps per training (default 15; quick: 3)")
    args = arguments.parse_args()
    from tasks.lib.core.threads import machine_cores

    steps = args.steps or (3 if args.quick else 15)
    overrides = [
        *args.overrides,
        f"train.max_steps={steps}",
        f"train.eval_steps={steps}",
        f"train.save_steps={steps}",
        "train.early_stopping_patience=null",
        f"train.eval_max_rows={8 if args.quick else 40}",
    ]
    from tasks.data import run_prepare

    data_dir = Path(run_prepare(load_run_config(args.config, overrides)).processed_dir)  # cached by fingerprint
    cores = machine_cores()
    seconds = {}
    with tempfile.TemporaryDirectory(prefix="qlora-bench-concurrent-") as work:
        for mode in ("sequential", "shared", "all-cores"):
            seconds[mode] = timed_pair(args.config, overrides, data_dir, Path(work), mode, cores)
            print(f"{mode:10s} two trainings of {steps} steps: {seconds[mode]:6.1f} s", flush=True)
    results = {
        "steps": steps,
        "cores": cores,
        "seconds": seconds,
        "shared_over_sequential": ratio(seconds["shared"], seconds["sequential"]),
        "all_cores_over_sequential": ratio(seconds["all-cores"], seconds["sequential"]),
    }
    markdown = (
        f"Two demo trainings ({steps} steps each, {cores} cores): one after the other {seconds['sequential']:.0f} s; "
        f"at once with core shares {seconds['shared']:.0f} s ({results['shared_over_sequential']:.2f}x); at once, "
        f"each on all cores {seconds['all-cores']:.0f} s ({results['all_cores_over_sequential']:.2f}x)."
    )
    write_results("concurrent_runs", results, markdown, args.quick)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
