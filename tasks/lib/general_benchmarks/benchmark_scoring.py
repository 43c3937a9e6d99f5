"""General-ability benchmarks (catastrophic-forgetting probes) run in-process with lm-eval.

The packaged task definitions are the YAML files in `tasks/lib/general_benchmarks/lm_eval_tasks/`, which mirror
lm-eval's own tasks (hellaswag, arc, piqa, lambada_openai, wikitext, winogrande, boolq, openbookqa, copa, mmlu,
truthfulqa_mc1) but read the local JSONL made by `benchmark_data.prepare_benchmarks`; a user's own JSONL
benchmark uses a template of `lm_eval_tasks/custom/`, a user's lm-eval YAML is loaded from its own folder,
and any other name is lm-eval's own task. Their `data_files` hold a `__DATA_DIR__` placeholder: at run time
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
import zlib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import BaseModel

from tasks.lib.config.benchmark_names import (
    HEADLINE,
    HIGHER_IS_BETTER,
    OUTPUT_FILES,
    RAW_FOLDERS,
    default_metric,
    lm_eval_task_names,
    task_yaml_dir,
)
from tasks.lib.core.errors import UserError
from tasks.lib.gate.benchmark_scores import BenchmarkScores
from tasks.lib.general_benchmarks.benchmark_data import convert_custom

if TYPE_CHECKING:
    from tasks.lib.config import BenchmarkSettings, CustomBenchmark, RunConfig

# Benchmarks scored as perplexity over whole documents in windows of `max_length` tokens.

# Benchmarks scored as perplexity over whole documents in windows of `max_length` tokens.
ROLLING_TOKENS_PER_BATCH = 4096
DATA_PLACEHOLDER = "__DATA_DIR__"
NAME_PLACEHOLDER = "__NAME__"
# Perplexity stderrs are bootstrapped; lm-eval's default 100k draws take minutes on a CPU.
BOOTSTRAP_ITERS = 1000


class BenchmarkError(UserError, ValueError):
    """Unknown benchmark name or missing prepared data; the message names the file."""


class BenchmarkPlan(BaseModel):
    """One benchmark as it will be scored: its task YAML, its data, its metric and how many items."""

    name: str
    metric: str | None  # None: lm-eval's own task, judged on the first metric it reports
    limit: int | None
    rolling: bool = False  # perplexity over whole documents, in windows
    yaml_text: str | None = None  # with the placeholders; None: lm-eval's own task of that name
    data_file: str | None = None  # the prepared JSONL (packaged), or the user's file (custom)
    custom_kind: str | None = None  # a user's JSONL benchmark, converted when scored
    yaml_dir: str | None = None  # a user's lm-eval YAML: loaded where it is (its `!function`s resolve there)
    drawn: list[int] | None = None  # the item indices scored (a seeded sample); None: the first `limit`


def draw_items(name: str, total: int, limit: int | None, seed: int) -> list[int] | None:
    """A seeded random sample of `limit` of a benchmark's `total` item indices, in file order; None when every item
    is scored. Seeded by the benchmark's name too, so two benchmarks of equal size get different positions."""
    if limit is None or limit >= total:
        return None
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    return sorted(int(index) for index in rng.choice(total, size=limit, replace=False))


def _row_count(path: Path) -> int:
    with path.open("rb") as handle:  # JSON escapes newlines inside strings: one per item
        return sum(1 for line in handle if line.strip())


def plan_benchmarks(
    names: list[str],
    data_dir: Path,
    limit: int | None,
    perplexity_limit: int | None = None,
    custom: Mapping[str, CustomBenchmark] | None = None,
    settings: Mapping[str, BenchmarkSettings] | None = None,
    sample: str = "first",
    seed: int = 0,
) -> list[BenchmarkPlan]:
    """How each named benchmark is scored; a missing data file is named with the command that makes it.

    sample="random" draws each benchmark's items (`draw_items`) where its size is known before scoring (packaged
    and a user's files); lm-eval's own tasks and a user's lm-eval YAML take their first items."""
    custom, settings = custom or {}, settings or {}
    plans, problems = [], []
    for name in names:
        setting = settings.get(name)
        metric = (setting.metric if setting else None) or default_metric(name, custom)
        if name in HEADLINE:
            text = (task_yaml_dir() / f"{name}.yaml").read_text(encoding="utf-8")
            data_file, kind = Path(data_dir) / OUTPUT_FILES[name], None
            if not data_file.is_file():
                problems.append(
                    f"missing prepared benchmark file {data_file} (`dvc pull data/raw/{RAW_FOLDERS[name]}.dvc` "
                    "then `dvc repro prepare_benchmarks`)"
                )
        elif name in custom:
            data_file, kind = Path(custom[name].path), custom[name].kind
            template = data_file if kind == "lm_eval" else task_yaml_dir() / "custom" / f"{kind}.yaml"
            text = template.read_text(encoding="utf-8") if template.is_file() else None
            if not data_file.is_file():
                problems.append(f"missing benchmark file {data_file} (forgetting.custom.{name}.path)")
        else:
            text, data_file, kind = None, None, None
            if name not in lm_eval_task_names():
                problems.append(f"unknown benchmark {name!r} (known: {sorted(HEADLINE)}, lm-eval's tasks, custom)")
        rolling = text is not None and "output_type: loglikelihood_rolling" in text
        default_limit = perplexity_limit if rolling else limit  # perplexity_limit None: every document
        own_limit = (setting.limit if setting and setting.limit else None) or default_limit
        drawn = None
        if sample == "random" and data_file is not None and data_file.is_file() and kind != "lm_eval":
            total = len(convert_custom(name, str(data_file), kind)) if kind else _row_count(data_file)
            drawn = draw_items(name, total, own_limit, seed)
        plans.append(
            BenchmarkPlan(
                name=name,
                metric=metric,
                limit=own_limit,
                drawn=drawn,
                rolling=rolling,
                yaml_text=text,
                data_file=str(data_file) if data_file else None,
                custom_kind=kind if kind != "lm_eval" else None,
                yaml_dir=str(data_file.parent.resolve()) if kind == "lm_eval" else None,
            )
        )
    if problems:
        raise BenchmarkError("; ".join(problems))
    return plans


def _yaml_string(path: Path) -> str:
    # A JSON string body is also a valid YAML double-quoted string body (backslashes, quotes escaped).
    return json.dumps(str(Path(path).resolve()))[1:-1]


def write_task_configs(plans: list[BenchmarkPlan], data_dir: Path, out_dir: Path) -> Path:
    """Each plan's YAML in out_dir with its data folder filled in; a user's rows converted beside it."""
    for plan in plans:
        if plan.yaml_text is None or plan.yaml_dir is not None:
            continue
        folder = Path(data_dir)
        if plan.custom_kind is not None:
            rows = convert_custom(plan.name, str(plan.data_file), plan.custom_kind)
            folder = out_dir / "data"
            folder.mkdir(exist_ok=True)
            with (folder / f"{plan.name}.jsonl").open("w", encoding="utf-8") as handle:
                handle.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
        text = plan.yaml_text.replace(DATA_PLACEHOLDER, _yaml_string(folder)).replace(NAME_PLACEHOLDER, plan.name)
        (out_dir / f"{plan.name}.yaml").write_text(text, encoding="utf-8")
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


def choice_counts(samples: list[dict]) -> dict[str, int] | None:
    """{doc id: how many choices} for a multiple-choice benchmark (every item has at least two), else None."""
    counts = {str(sample["doc_id"]): len(sample.get("arguments") or ()) for sample in samples}
    if not counts or min(counts.values()) < 2:
        return None
    return counts


def chance_level(choices: Mapping[str, int] | None) -> float | None:
    """The accuracy of guessing uniformly among each item's choices (multiple choice only), else None."""
    if not choices:
        return None
    return sum(1.0 / count for count in choices.values()) / len(choices)


def item_groups(samples: list[dict]) -> dict[str, str] | None:
    """{doc id: subject} for benchmarks whose items carry a subject (MMLU), for the per-subject detail."""
    groups = {str(sample["doc_id"]): sample.get("doc", {}).get("subject") for sample in samples}
    return groups if groups and all(isinstance(group, str) for group in groups.values()) else None


def _headline(row: dict[str, float], wanted: str | None, name: str, reported: list[str]) -> str:
    if wanted is None:  # lm-eval's own task: the first metric the gate can judge, else the first reported
        wanted = next((metric for metric in reported if metric in HIGHER_IS_BETTER), reported[0] if reported else "?")
    if wanted not in row:
        raise BenchmarkError(f"lm-eval returned no {wanted!r} for {name}: {reported}")
    return wanted


def extract_scores(results: dict, metrics: Mapping[str, str | None]) -> dict[str, BenchmarkScores]:
    """lm-eval results -> {name: its scores}: every aggregate lm-eval reported (filter suffixes dropped), the items it
    scored, the metric it is judged on, and per item (when lm-eval logged samples) the result on that metric, the
    number of choices, the guessing accuracy and the subject.

    `metrics` maps each benchmark to the metric it is judged on (None: the first one lm-eval reports)."""
    scores: dict[str, BenchmarkScores] = {}
    for name, wanted in metrics.items():
        values: dict[str, float] = {}
        for key, value in results["results"][name].items():
            metric, _, _filter = key.partition(",")
            number = _number(value)
            if metric != "alias" and number is not None and not math.isnan(number):
                values[metric] = number
        reported = [metric for metric in values if not metric.endswith("_stderr")]
        n_samples = results.get("n-samples", {}).get(name, {})
        row = BenchmarkScores(
            metric=_headline(values, wanted, name, reported),
            values=values,
            n=float(n_samples.get("effective", n_samples.get("original", 0))),
        )
        samples = results.get("samples", {}).get(name)
        if samples:
            choices = choice_counts(samples)
            row = row.model_copy(
                update={
                    "items": per_item_results(samples, row.metric),
                    "choices": choices,
                    "chance": chance_level(choices),
                    "groups": item_groups(samples),
                }
            )
        scores[name] = row
    return scores


def _as_plans(
    names: list[str] | list[BenchmarkPlan], data_dir: Path, limit: int | None, perplexity_limit: int | None
) -> list[BenchmarkPlan]:
    plans = [item for item in names if isinstance(item, BenchmarkPlan)]
    named = [item for item in names if isinstance(item, str)]
    return plans + plan_benchmarks(named, data_dir, limit, perplexity_limit) if named else plans


def evaluate_lm(
    lm: Any, names: list[str] | list[BenchmarkPlan], data_dir: Path, limit: int | None
) -> dict[str, BenchmarkScores]:
    """Run the benchmark tasks on any lm-eval `LM` (the HF wrapper, or a test double): packaged names, or plans."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    plans = _as_plans(names, data_dir, limit, limit)
    with tempfile.TemporaryDirectory(prefix="qlora-lm-eval-tasks-") as tmp, _no_bootstrap_pool():
        # lm-eval's own tasks need its index of thousands of YAMLs; packaged and custom ones only this folder.
        own_tasks = any(plan.yaml_text is None for plan in plans)
        folders = [str(write_task_configs(plans, data_dir, Path(tmp)))]
        folders += sorted({plan.yaml_dir for plan in plans if plan.yaml_dir})
        manager = TaskManager(include_path=folders, include_defaults=own_tasks)
        drawn = {plan.name: plan.drawn for plan in plans if plan.drawn is not None}
        if drawn and len(drawn) < len(plans):
            raise ValueError("drawn and first-N benchmarks are scored in separate calls")
        results = simple_evaluate(
            model=lm,
            tasks=[plan.name for plan in plans],
            task_manager=manager,
            limit=None if drawn else limit,
            samples=drawn or None,
            bootstrap_iters=BOOTSTRAP_ITERS,
            log_samples=True,  # per-item results: the gate compares base and tuned item by item
            # Zero-shot log-likelihood scoring is deterministic; leave the caller's RNGs alone.
            random_seed=None,
            numpy_random_seed=None,
            torch_random_seed=None,
        )
    return extract_scores(results, {plan.name: plan.metric for plan in plans})


def run_benchmarks(
    model: Any,
    tokenizer: Any,
    names: list[str] | list[BenchmarkPlan],
    data_dir: Path,
    limit: int | None,
    batch_size: int,
    max_length: int = 1024,
    perplexity_limit: int | None = None,
) -> dict[str, BenchmarkScores]:
    """Score an in-memory model (plain, 4-bit, or a PeftModel) on the first items of each benchmark.

    `names`: packaged benchmark names (scored on `limit` items, perplexity ones on `perplexity_limit` documents,
    default `limit`), or plans from `plan_benchmarks` that carry their own. Returns `extract_scores`' rows.
    `max_length` (capped by the model's context) bounds every scored sequence. Perplexity tasks score full
    windows of that length, so their batch is cut to ROLLING_TOKENS_PER_BATCH tokens: at batch 16 and an 8k
    context, the logits alone of a 49k-vocabulary model would take 25 GB.
    The model's train/eval mode is restored afterwards.
    """
    from tasks.lib.general_benchmarks.shared_context_lm import shared_context_scoring

    plans = _as_plans(names, data_dir, limit, perplexity_limit or limit)
    context = getattr(getattr(model, "config", None), "max_position_embeddings", None) or max_length
    max_length = min(max_length, context)
    rolling_batch = max(1, min(batch_size, ROLLING_TOKENS_PER_BATCH // max_length))
    # lm-eval takes one limit per call, or drawn items (never both): one call per (kind, limit or drawn).
    groups: dict[tuple[bool, int | str | None], list[BenchmarkPlan]] = {}
    for plan in plans:
        groups.setdefault((plan.rolling, "drawn" if plan.drawn is not None else plan.limit), []).append(plan)
    was_training = getattr(model, "training", False)
    scores: dict[str, BenchmarkScores] = {}
    try:
        with shared_context_scoring(model) as lm_class:
            for (rolling, group_limit), group in groups.items():
                size = rolling_batch if rolling else batch_size
                lm = lm_class(pretrained=model, tokenizer=tokenizer, batch_size=size, max_length=max_length)
                scores.update(evaluate_lm(lm, group, Path(data_dir), None if group_limit == "drawn" else group_limit))
        return {plan.name: scores[plan.name] for plan in plans}
    finally:
        if was_training:
            model.train()


def configured_plans(config: RunConfig, names: list[str] | None = None) -> list[BenchmarkPlan]:
    """The run's benchmarks (or `names` among them) as they will be scored."""
    bench = config.forgetting
    return plan_benchmarks(
        list(bench.benchmarks) if names is None else names,
        Path(bench.data_dir),
        bench.limit,
        bench.perplexity_limit,
        bench.custom,
        bench.settings,
        bench.sample,
        bench.sample_seed,
    )


def score_benchmarks(
    config: RunConfig,
    model: Any,
    tokenizer: Any,
    names: list[str] | None = None,
    plans: list[BenchmarkPlan] | None = None,
) -> dict[str, BenchmarkScores]:
    """`run_benchmarks` with the run's forgetting settings, on `plans` or `names` (default: every configured
    benchmark)."""
    bench = config.forgetting
    return run_benchmarks(
        model,
        tokenizer,
        plans if plans is not None else configured_plans(config, names),
        Path(bench.data_dir),
        limit=bench.limit,
        batch_size=bench.batch_size,
        max_length=bench.max_length,
    )
