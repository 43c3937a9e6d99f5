"""Cost curves: how the three size-driven costs grow, each measured at several sizes in one run.

1. Data preparation rows/s vs rows: `run_prepare` on the demo config (SST-2 train, 67k rows in all) with
   `data.max_rows` at each size, every time from scratch (read, validate, render with the chat template, tokenize
   and mask, split, write), into a temporary folder.
2. Forgetting-check time vs items per benchmark: each benchmark of the config scored alone, through the same
   `run_benchmarks` the check calls, at several `limit`s (documents for WikiText); the model is the dense
   base, which costs what the merged model costs (same architecture and dtype), loaded once.
3. Training real tokens/s vs `data.max_length`: the pipeline's `train_adapter` on the Alpaca-GPT4 rows (long
   answers, truncated to each length so packed rows fill it), the same batch size and timed steps at every length.

Each curve's baseline is its own smallest size, measured in the same run: the printed ratio is cost per unit
(per row, per item, per token) relative to it, so 1.0 everywhere means linear growth. Writes
benchmarks/results/cost_curves.json|md and cost_curves.png.

    python -m benchmarks.cost_curves [--quick] [--curves prep,forgetting,training]
"""

from __future__ import annotations

import multiprocessing as mp
import sys
import tempfile
import time
from pathlib import Path
from queue import Empty
from typing import Any

from benchmarks._common import RESULTS_DIR, load_run_config, parser, quiet_libraries, ratio, stopwatch, write_results

ALPACA_CONFIG = "configs/alpaca.yaml"
CURVES = ("prep", "forgetting", "training")
SIZES = {
    "prep": ([2000, 8000, 32000, None], [500, 2000]),  # None: every row (67,349 of SST-2 train)
    "forgetting": ([25, 50, 100, 200], [4, 8]),
    "wikitext_documents": ([2, 4, 8], [2]),
    "training": ([128, 256, 512, 1024], [64, 128]),
}
TRAIN_BATCH, TRAIN_STEPS = 2, 4  # timed steps per length, after one untimed warm-up step


def sizes(name: str, quick: bool) -> list:
    full, small = SIZES[name]
    return small if quick else full


def prep_curve(config_path: str, overrides: list[str], quick: bool, work: Path) -> list[dict[str, Any]]:
    from tasks.data import run_prepare

    points = []
    for index, rows in enumerate(sizes("prep", quick)):
        config = load_run_config(
            config_path, [*overrides, f"data.max_rows={rows or 'null'}", f"data.processed_dir={work / f'prep{index}'}"]
        )
        with stopwatch() as elapsed:
            data = run_prepare(config)
        # Every size reads the whole file (the seeded shuffle picks max_rows from all of it); `rows` are those
        # then validated, rendered, tokenized and split.
        rows = data.stats["rows_selected"]
        points.append({"rows": rows, "rows_read": data.stats["rows_read"], "seconds": elapsed()})
        points[-1]["rows_per_second"] = ratio(rows, elapsed())
        print(f"prep {rows:>6} rows: {elapsed():6.1f} s, {ratio(rows, elapsed()):7.0f} rows/s", flush=True)
    return points


def forgetting_curve(config_path: str, overrides: list[str], quick: bool) -> dict[str, list[dict[str, Any]]]:
    from functools import partial

    from transformers import AutoModelForCausalLM

    from tasks.io.models import load_tokenizer, resolve_model_path
    from tasks.lib.general_benchmarks.benchmark_scoring import run_benchmarks

    config = load_run_config(config_path, overrides)
    bench = config.forgetting
    model = AutoModelForCausalLM.from_pretrained(resolve_model_path(config.model), use_safetensors=True).eval()
    score = partial(
        run_benchmarks,
        model,
        load_tokenizer(config.model),
        data_dir=Path(bench.data_dir),
        batch_size=bench.batch_size,
        max_length=bench.max_length,
    )
    curves: dict[str, list[dict[str, Any]]] = {}
    for name in bench.benchmarks:
        perplexity = name == "wikitext"
        for items in [1, *sizes("wikitext_documents" if perplexity else "forgetting", quick)]:
            limits = {"limit": bench.limit, "perplexity_limit": items} if perplexity else {"limit": items}
            with stopwatch() as elapsed:
                score([name], **limits)
            if items == 1:
                continue  # a warm-up, not timed: the task's first build (and first read of its files) is not per item
            curves.setdefault(name, []).append({"items": items, "seconds": elapsed()})
            print(f"forgetting {name:10s} {items:>4} items: {elapsed():6.1f} s", flush=True)
    return curves


def _train_at_length(length: int, overrides: list[str], work: str, queue: Any) -> None:
    """One length in its own process (its own memory; nothing cached from another length)."""
    quiet_libraries()
    from benchmarks.train_throughput import Baton, _lockstep_timer, train_pipeline
    from tasks.data import run_prepare

    steps = TRAIN_STEPS + 1
    schedule = [f"train.{key}={steps}" for key in ("max_steps", "eval_steps", "save_steps")]
    config = load_run_config(
        ALPACA_CONFIG,
        [
            *overrides,
            *schedule,
            f"data.max_length={length}",
            "data.overlong=truncate",
            f"data.processed_dir={work}/data{length}",
            f"train.batch_size={TRAIN_BATCH}",
            "train.gradient_accumulation_steps=1",
            "train.early_stopping_patience=null",
        ],
    )
    data_dir = Path(run_prepare(config).processed_dir)
    timer = _lockstep_timer(Baton(mp.get_context("spawn"), 1), 0)
    train_pipeline(config, data_dir, Path(work) / f"train{length}", steps, timer)
    tokens, seconds = sum(timer.tokens[1:]), sum(timer.seconds[1:])
    queue.put({"max_length": length, "real_tokens": tokens, "seconds": seconds, "tokens_per_second": tokens / seconds})


def _result_of(process: Any, queue: Any, timeout: float = 3600.0) -> dict[str, Any]:
    """What the process put on the queue; an error as soon as it died without a result (not an hour's wait)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            return queue.get(timeout=5)
        except Empty:
            if not process.is_alive():
                code = process.exitcode
                raise RuntimeError(f"the training process exited with code {code} before its result") from None
    process.kill()
    raise TimeoutError(f"no training result within {timeout:.0f} s")


def training_curve(overrides: list[str], quick: bool, work: Path) -> list[dict[str, Any]]:
    context = mp.get_context("spawn")
    points = []
    for length in sizes("training", quick):
        queue = context.Queue()
        process = context.Process(target=_train_at_length, args=(length, overrides, str(work), queue))
        process.start()
        point = _result_of(process, queue)
        process.join()
        points.append(point)
        print(f"training max_length {length:>5}: {point['tokens_per_second']:6.1f} real tokens/s", flush=True)
    return points


def describe(title: str, points: list[dict[str, Any]], size_key: str, cost_key: str, unit_key: str) -> str:
    """One markdown line: each size's cost, and its cost per unit over the smallest size's (1.00x = linear
    growth; above 1 = faster than linear)."""
    per_unit = [ratio(point[cost_key], point[unit_key]) for point in points]
    cells = [
        f"{size_key} {point[size_key]}: {point[cost_key]:.1f} s ({cost / per_unit[0]:.2f}x)"
        for point, cost in zip(points, per_unit, strict=True)
    ]
    return f"- {title}: " + ", ".join(cells)


def plot(results: dict[str, Any], path: Path) -> Path:
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    from tasks.lib.core.plots import pyplot, save_png

    plt = pyplot()
    figure, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    if "prep" in results:
        points = results["prep"]
        axes[0].plot([p["rows"] for p in points], [p["rows_per_second"] for p in points], "o-")
        axes[0].set(xscale="log", xlabel="rows (SST-2 train)", ylabel="rows / s", title="data preparation")
        axes[0].set_xticks([p["rows"] for p in points])
    if "forgetting" in results:
        for name, points in results["forgetting"].items():
            axes[1].plot([p["items"] for p in points], [p["seconds"] for p in points], "o-", label=name)
        axes[1].set(xscale="log", yscale="log", xlabel="items (WikiText: documents)", ylabel="seconds")
        axes[1].set_title("forgetting benchmarks, one model")
        axes[1].legend(fontsize=8)
    if "training" in results:
        points = results["training"]
        axes[2].plot([p["max_length"] for p in points], [p["tokens_per_second"] for p in points], "o-")
        axes[2].set(xscale="log", xlabel="data.max_length (tokens)", ylabel="real tokens / s", title="training")
        axes[2].set_ylim(bottom=0)
        axes[2].set_xticks([p["max_length"] for p in points])
    for axis in axes:
        axis.grid(alpha=0.3)
        for ticks in (axis.xaxis, axis.yaxis):
            ticks.set_major_formatter(ScalarFormatter())
            ticks.set_minor_formatter(NullFormatter())
    axes[1].set_yticks([2, 5, 10, 20, 50])
    return save_png(figure, path)


def main() -> int:
    quiet_libraries()
    arguments = parser(__doc__.splitlines()[0])
    arguments.add_argument("--curves", default=",".join(CURVES), help=f"comma-separated subset of {CURVES}")
    args = arguments.parse_args()
    chosen = [name for name in args.curves.split(",") if name]
    if set(chosen) - set(CURVES):
        arguments.error(f"--curves names only {CURVES}")
    results: dict[str, Any] = {}
    lines = [f"**cost_curves** ({'quick' if args.quick else 'full'}): cost per unit relative to the smallest size"]
    with tempfile.TemporaryDirectory(prefix="qlora-bench-curves-") as folder:
        work = Path(folder)
        if "prep" in chosen:
            results["prep"] = prep_curve(args.config, args.overrides, args.quick, work)
            lines.append(describe("data preparation", results["prep"], "rows", "seconds", "rows"))
        if "forgetting" in chosen:
            results["forgetting"] = forgetting_curve(args.config, args.overrides, args.quick)
            for name, points in results["forgetting"].items():
                lines.append(describe(f"forgetting {name}", points, "items", "seconds", "items"))
        if "training" in chosen:
            results["training"] = training_curve(args.overrides, args.quick, work)
            lines.append(describe("training", results["training"], "max_length", "seconds", "real_tokens"))
    png = plot(results, RESULTS_DIR / f"cost_curves{'-quick' if args.quick else ''}.png")
    print(f"wrote {png}")
    write_results(
        "cost_curves",
        {"curves": results, "train_batch": TRAIN_BATCH, "train_steps": TRAIN_STEPS},
        "\n".join(lines),
        args.quick,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
