"""General-ability benchmarks (catastrophic-forgetting probes) run in-process with lm-eval.

The task definitions are the YAML files in `tasks/lib/benchmark_tasks/`, which mirror lm-eval's own
hellaswag / arc / piqa / lambada_openai / wikitext tasks but read the local JSONL made by
`benchmark_data.prepare_benchmarks`. Their `data_files` hold a `__DATA_DIR__` placeholder: at run time
the YAMLs are copied into a temporary folder with the absolute data path filled in and loaded with
`TaskManager(include_path=..., include_defaults=False)`. That is lm-eval 0.4.13's public way to load
task folders; it also skips indexing the thousands of built-in tasks, and keeps the YAMLs readable and
runnable with the lm-eval CLI. The wikitext YAML imports lm-eval's own detokenizer by module path, so
it resolves from any folder.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import resources
from pathlib import Path
from typing import Any

from tasks.lib.benchmark_data import OUTPUT_FILES
from tasks.lib.config import RunConfig
from tasks.lib.errors import UserError

# The metric each benchmark is judged on (the gate compares these).
HEADLINE: dict[str, str] = {
    "hellaswag": "acc_norm",
    "arc_easy": "acc_norm",
    "arc_challenge": "acc_norm",
    "piqa": "acc_norm",
    "lambada": "acc",
    "wikitext": "word_perplexity",
    "winogrande": "acc",
    "boolq": "acc",
    "openbookqa": "acc_norm",
    "copa": "acc",
    "mmlu": "acc",
    "truthfulqa_mc1": "acc",
}
# Every metric reported, and its direction; perplexities are "lower is better".
HIGHER_IS_BETTER: dict[str, bool] = {
    "acc": True,
    "acc_norm": True,
    "perplexity": False,
    "word_perplexity": False,
    "byte_perplexity": False,
    "bits_per_byte": False,
}
# Benchmarks scored as perplexity over whole documents in windows of `max_length` tokens.
ROLLING_TASKS = frozenset({"wikitext"})
ROLLING_TOKENS_PER_BATCH = 4096
PERPLEXITY_METRICS = frozenset(metric for metric, higher in HIGHER_IS_BETTER.items() if not higher)
DATA_PLACEHOLDER = "__DATA_DIR__"
# Perplexity stderrs are bootstrapped; lm-eval's default 100k draws take minutes on a CPU.
BOOTSTRAP_ITERS = 1000


class BenchmarkError(UserError, ValueError):
    """Unknown benchmark name or missing prepared data; the message names the file."""


def task_yaml_dir() -> Path:
    """The packaged task YAML folder."""
    return Path(str(resources.files("tasks.lib") / "benchmark_tasks"))


def task_yaml_texts(names: list[str]) -> dict[str, str]:
    """{name: YAML text with the placeholder}, for hashing into cache keys."""
    return {name: (task_yaml_dir() / f"{name}.yaml").read_text(encoding="utf-8") for name in names}


def _check(names: list[str], data_dir: Path) -> None:
    problems = [f"unknown benchmark {name!r} (known: {sorted(HEADLINE)})" for name in names if name not in HEADLINE]
    problems += [
        f"missing prepared benchmark file {data_dir / OUTPUT_FILES[name]} (run `qlora prepare-benchmarks`)"
        for name in names
        if name in HEADLINE and not (data_dir / OUTPUT_FILES[name]).is_file()
    ]
    if problems:
        raise BenchmarkError("; ".join(problems))


def write_task_configs(names: list[str], data_dir: Path, out_dir: Path) -> Path:
    """Copy the YAMLs for `names` into out_dir with the absolute data folder substituted."""
    # A JSON string body is also a valid YAML double-quoted string body (backslashes, quotes escaped).
    quoted = json.dumps(str(Path(data_dir).resolve()))[1:-1]
    for name, text in task_yaml_texts(names).items():
        (out_dir / f"{name}.yaml").write_text(text.replace(DATA_PLACEHOLDER, quoted), encoding="utf-8")
    return out_dir


@contextmanager
def _no_bootstrap_pool() -> Iterator[None]:
    # lm-eval bootstraps in a multiprocessing pool, which forks a process holding torch threads.
    previous = os.environ.get("DISABLE_MULTIPROC")
    os.environ["DISABLE_MULTIPROC"] = "1"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("DISABLE_MULTIPROC", None)
        else:
            os.environ["DISABLE_MULTIPROC"] = previous


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def per_item_results(samples: list[dict], metric: str) -> dict[str, Any]:
    """lm-eval's logged samples -> {doc id: result} on `metric`, for paired comparisons.

    Accuracy metrics give 0/1 per document; perplexity metrics give [log-likelihood, weight] (words, bytes).
    """
    items: dict[str, Any] = {}
    for sample in samples:
        value = sample[metric]
        items[str(sample["doc_id"])] = [float(value[0]), float(value[1])] if isinstance(value, list | tuple) else value
    return dict(sorted(items.items(), key=lambda item: int(item[0]) if item[0].isdigit() else item[0]))


def extract_scores(results: dict, names: list[str]) -> dict[str, dict[str, Any]]:
    """lm-eval results -> {name: {metric: value, metric_stderr: value, "n": items, "items": {doc: result}}}.

    Filter suffixes are dropped; "items" holds the per-document results on the HEADLINE metric when lm-eval
    logged samples.
    """
    scores: dict[str, dict[str, Any]] = {}
    for name in names:
        raw = results["results"][name]
        row: dict[str, float] = {}
        for key, value in raw.items():
            metric, _, _filter = key.partition(",")
            number = _number(value)
            if metric != "alias" and number is not None and not math.isnan(number):
                row[metric] = number
        n_samples = results.get("n-samples", {}).get(name, {})
        row["n"] = float(n_samples.get("effective", n_samples.get("original", 0)))
        if HEADLINE[name] not in row:
            raise BenchmarkError(f"lm-eval returned no {HEADLINE[name]!r} for {name}: {sorted(raw)}")
        samples = results.get("samples", {}).get(name)
        if samples:
            row["items"] = per_item_results(samples, HEADLINE[name])
        scores[name] = row
    return scores


def evaluate_lm(lm: Any, names: list[str], data_dir: Path, limit: int | None) -> dict[str, dict[str, Any]]:
    """Run the benchmark tasks on any lm-eval `LM` (the HF wrapper, or a test double)."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    data_dir = Path(data_dir)
    _check(names, data_dir)
    with tempfile.TemporaryDirectory(prefix="qlora-lm-eval-tasks-") as tmp, _no_bootstrap_pool():
        manager = TaskManager(include_path=write_task_configs(names, data_dir, Path(tmp)), include_defaults=False)
        results = simple_evaluate(
            model=lm,
            tasks=list(names),
            task_manager=manager,
            limit=limit,
            bootstrap_iters=BOOTSTRAP_ITERS,
            log_samples=True,  # per-item results: the gate compares base and tuned item by item
            # Zero-shot log-likelihood scoring is deterministic; leave the caller's RNGs alone.
            random_seed=None,
            numpy_random_seed=None,
            torch_random_seed=None,
        )
    return extract_scores(results, names)


def run_benchmarks(
    model: Any,
    tokenizer: Any,
    names: list[str],
    data_dir: Path,
    limit: int | None,
    batch_size: int,
    max_length: int = 1024,
    perplexity_limit: int | None = None,
) -> dict[str, dict[str, Any]]:
    """Score an in-memory model (plain, 4-bit, or a PeftModel) on the first `limit` items of each benchmark.

    Returns {name: {metric: value, "<metric>_stderr": value, "n": items}}; HEADLINE[name] is always present.
    Perplexity benchmarks score the first `perplexity_limit` documents (default: `limit`).
    `max_length` (capped by the model's context) bounds every scored sequence. Perplexity tasks score full
    windows of that length, so their batch is cut to ROLLING_TOKENS_PER_BATCH tokens: at batch 16 and an 8k
    context, the logits alone of a 49k-vocabulary model would take 25 GB.
    The model's train/eval mode is restored afterwards.
    """
    from tasks.lib.shared_context_lm import shared_context_scoring

    _check(names, Path(data_dir))
    context = getattr(getattr(model, "config", None), "max_position_embeddings", None) or max_length
    max_length = min(max_length, context)
    rolling_batch = max(1, min(batch_size, ROLLING_TOKENS_PER_BATCH // max_length))
    groups = [
        ([name for name in names if name not in ROLLING_TASKS], batch_size, limit),
        ([name for name in names if name in ROLLING_TASKS], rolling_batch, perplexity_limit or limit),
    ]
    was_training = getattr(model, "training", False)
    scores: dict[str, dict[str, Any]] = {}
    try:
        with shared_context_scoring(model) as lm_class:
            for group, size, group_limit in groups:
                if group:
                    lm = lm_class(pretrained=model, tokenizer=tokenizer, batch_size=size, max_length=max_length)
                    scores.update(evaluate_lm(lm, group, Path(data_dir), group_limit))
        return {name: scores[name] for name in names}
    finally:
        if was_training:
            model.train()


def score_benchmarks(config: RunConfig, model: Any, tokenizer: Any, names: list[str] | None = None) -> dict:
    """`run_benchmarks` with the run's forgetting settings, on `names` (default: every configured benchmark)."""
    bench = config.forgetting
    return run_benchmarks(
        model,
        tokenizer,
        list(bench.benchmarks) if names is None else names,
        Path(bench.data_dir),
        limit=bench.limit,
        batch_size=bench.batch_size,
        max_length=bench.max_length,
        perplexity_limit=bench.perplexity_limit,
    )
