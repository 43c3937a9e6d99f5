"""Which benchmarks exist and what each is judged on: the packaged task YAMLs, a user's own, lm-eval's.

Light on purpose (no lm-eval import): the config validates benchmark names with it before any heavy work.
"""

from __future__ import annotations

import difflib
import functools
import importlib.util
import json
import re
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any, NamedTuple

# Benchmark name -> output file name inside out_dir.
OUTPUT_FILES = {
    "hellaswag": "hellaswag.jsonl",
    "arc_easy": "arc_easy.jsonl",
    "arc_challenge": "arc_challenge.jsonl",
    "piqa": "piqa.jsonl",
    "lambada": "lambada.jsonl",
    "wikitext": "wikitext.jsonl",
    "winogrande": "winogrande.jsonl",
    "boolq": "boolq.jsonl",
    "openbookqa": "openbookqa.jsonl",
    "copa": "copa.jsonl",
    "mmlu": "mmlu.jsonl",
    "truthfulqa_mc1": "truthfulqa_mc1.jsonl",
}
# Benchmark name -> the DVC-tracked raw folder under data/raw it is converted from.
RAW_FOLDERS = {
    "hellaswag": "hellaswag",
    "arc_easy": "arc_easy",
    "arc_challenge": "arc_challenge",
    "piqa": "piqa",
    "lambada": "lambada_openai",
    "wikitext": "wikitext2_raw",
    "winogrande": "winogrande",
    "boolq": "boolq",
    "openbookqa": "openbookqa",
    "copa": "copa",
    "mmlu": "mmlu",
    "truthfulqa_mc1": "truthfulqa",
}
DEFAULT_BENCHMARKS = ["hellaswag", "arc_easy", "piqa", "lambada", "wikitext"]
# The metric each packaged benchmark is judged on by default (its lm-eval task's usual headline).
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
# The metrics a user's benchmark can be judged on, by kind; the first is the default.
CUSTOM_METRICS = {
    "multiple_choice": ["acc", "acc_norm"],
    "continuation": ["acc"],
    "perplexity": ["word_perplexity", "byte_perplexity", "bits_per_byte"],
}
# Reported per item as one log-likelihood (LAMBADA's perplexity): no paired test judges it.
UNGATEABLE = frozenset({"perplexity"})
# Every metric the gate can judge, and its direction; perplexities are "lower is better".
HIGHER_IS_BETTER: dict[str, bool] = {
    "acc": True,
    "acc_norm": True,
    "exact_match": True,
    "perplexity": False,
    "word_perplexity": False,
    "byte_perplexity": False,
    "bits_per_byte": False,
}
_TASK_LINE = re.compile(r"^task:\s*[\"']?([A-Za-z0-9_.\-]+)[\"']?\s*$", re.M)
_METRIC_LINE = re.compile(r"^\s*- metric: (\w+)", re.M)


def task_yaml_dir() -> Path:
    """The packaged task YAML folder."""
    return Path(str(resources.files("tasks.lib.general_benchmarks") / "lm_eval_tasks"))


def yaml_metrics(text: str) -> list[str]:
    """The metrics a task YAML's metric_list names, in order."""
    return _METRIC_LINE.findall(text)


@functools.cache
def lm_eval_task_names() -> frozenset[str]:
    """Every task name lm-eval ships a YAML for (a text scan of its task folder: ~1 s, no lm-eval import)."""
    spec = importlib.util.find_spec("lm_eval")
    if spec is None or not spec.submodule_search_locations:
        return frozenset()
    root = Path(next(iter(spec.submodule_search_locations))) / "tasks"
    names: set[str] = set()
    for path in root.rglob("*.yaml"):
        names.update(_TASK_LINE.findall(path.read_text(encoding="utf-8", errors="replace")))
    return frozenset(names)


def default_metric(name: str, custom: Mapping[str, Any]) -> str | None:
    """The metric `name` is judged on unless its settings say otherwise; None: lm-eval's first reported one."""
    if name in custom:
        return CUSTOM_METRICS.get(custom[name].kind, [None])[0]
    return HEADLINE.get(name)


def gateable_metrics(name: str, custom: Mapping[str, Any]) -> list[str] | None:
    """The metrics the gate can judge `name` on; None: not known before scoring (lm-eval's own tasks)."""
    if name in custom:
        kind = custom[name].kind
        return CUSTOM_METRICS[kind] if kind in CUSTOM_METRICS else None
    if name in HEADLINE:
        text = (task_yaml_dir() / f"{name}.yaml").read_text(encoding="utf-8")
        return [metric for metric in yaml_metrics(text) if metric not in UNGATEABLE]
    return None


def _closest(name: str, candidates: list[str]) -> str:
    close = difflib.get_close_matches(name, candidates, n=3, cutoff=0.6)
    return f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""


def check_benchmark_names(benchmarks: list[str], custom: Mapping[str, Any], settings: Mapping[str, Any]) -> list[str]:
    """Every problem with the configured names: unknown (with the closest known names), duplicated, a custom
    benchmark that shadows a packaged one or is never scored, settings for a benchmark not scored, a metric the
    benchmark does not report. The lm-eval index is read only when a name is not packaged or custom."""
    problems = []
    local = sorted(HEADLINE) + sorted(custom)
    for name in sorted({name for name in benchmarks if benchmarks.count(name) > 1}):
        problems.append(f"benchmarks: {name!r} is listed twice")
    for name in benchmarks:
        if name not in HEADLINE and name not in custom and name not in lm_eval_task_names():
            suggestion = _closest(name, local) or _closest(name, sorted(lm_eval_task_names()))
            problems.append(
                f"benchmarks: unknown benchmark {name!r}{suggestion} (`qlora benchmarks` lists the packaged ones; "
                "define your own under forgetting.custom)"
            )
    for name, spec in custom.items():
        if name in HEADLINE:
            problems.append(f"custom.{name}: shadows the packaged benchmark {name!r}; pick another name")
        if name not in benchmarks:
            problems.append(f"custom.{name}: defined but not scored; add {name!r} to forgetting.benchmarks")
        if spec.kind == "lm_eval":
            problems += _check_task_yaml(name, Path(spec.path))
        elif not Path(spec.path).is_file():
            problems.append(f"custom.{name}.path: {spec.path} does not exist")
    for name, setting in settings.items():
        if name not in benchmarks:
            problems.append(f"settings.{name}: {name!r} is not among forgetting.benchmarks")
        elif setting.metric:
            known = gateable_metrics(name, custom)
            if known is not None and setting.metric not in known:
                problems.append(f"settings.{name}.metric: {name} can be judged on {known}, not {setting.metric!r}")
    return problems


def _check_task_yaml(name: str, path: Path) -> list[str]:
    if not path.is_file():
        return [f"custom.{name}.path: {path} does not exist"]
    tasks = _TASK_LINE.findall(path.read_text(encoding="utf-8", errors="replace"))
    if tasks != [name]:
        return [f"custom.{name}.path: {path} must define `task: {name}` (it defines {tasks or 'none'})"]
    return []


class PackagedBenchmark(NamedTuple):
    name: str
    metric: str
    items: int | None  # prepared items, None when not prepared
    status: str


def packaged_benchmarks(data_dir: Path) -> list[PackagedBenchmark]:
    """Each packaged benchmark, its metric, and whether its data is prepared (else the command that prepares it)."""
    manifest_file = Path(data_dir) / "manifest.json"
    manifest = json.loads(manifest_file.read_text(encoding="utf-8")) if manifest_file.is_file() else {}
    rows = []
    for name, metric in HEADLINE.items():
        if name in manifest and (Path(data_dir) / OUTPUT_FILES[name]).is_file():
            rows.append(PackagedBenchmark(name, metric, manifest[name]["items"], f"prepared in {data_dir}"))
        else:
            how = f"not prepared: dvc pull data/raw/{RAW_FOLDERS[name]}.dvc && dvc repro prepare_benchmarks"
            rows.append(PackagedBenchmark(name, metric, None, how))
    return rows
