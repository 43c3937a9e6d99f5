"""Config sections for judging a model: the target task, the forgetting benchmarks and the gate."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from tasks.lib.config.benchmark_names import DEFAULT_BENCHMARKS
from tasks.lib.config.section import Section


class EvaluationConfig(Section):
    metrics: list[Literal["accuracy", "exact_match", "f1", "rouge"]] = Field(
        default_factory=lambda: ["accuracy", "f1"],
        description="accuracy/exact_match/f1 for labels; rouge for free text.",
    )
    primary_metric: str = Field("accuracy", description="The score that decides promotion.")
    max_items: int | None = Field(200, gt=0, description="Test items evaluated (same for base and tuned).")
    max_new_tokens: int | None = Field(
        None,
        gt=0,
        description="Generation budget per answer; null: derived from the test references (95th percentile of "
        "their token lengths, plus a margin), so a long free-text answer is never cut.",
    )
    batch_size: int = Field(16, gt=0, description="Test items generated at once (left-padded).")
    answer_match: Literal["label", "exact"] = Field(
        "label",
        description="label: when the references form a small label set, an answer counts as the one label it "
        "names ('The review is positive.' -> positive; a negated mention such as 'not positive' does not count; "
        "of overlapping labels the longest wins); exact: the whole normalised answer must match.",
    )
    labels: list[str] | None = Field(
        None, description="The label set, stated; null: the distinct test references when they look like labels."
    )
    mode: Literal["auto", "generate", "choices", "both"] = Field(
        "auto",
        description="generate: greedy answers, scored by the label they name; choices: each label scored as the "
        "answer by its log-likelihood, the most likely wins (lm-eval's multiple-choice rule, fair to a chatty "
        "base; classification only); both: generate decides, choices_* metrics reported beside it; auto: both "
        "for classification (stated labels, or test answers that form a label set), generate for free text.",
    )
    normalization: Literal["text", "none", "sql"] = Field(
        "text",
        description="How answers and references are normalised before matching: text (case, spaces, surrounding "
        "punctuation), none (surrounding whitespace only), sql (case, spaces, a trailing ';').",
    )
    extract_pattern: str | None = Field(
        None,
        description="A regex whose first group (or whole match) is the answer that is scored, in the generated "
        "text and in the reference, e.g. GSM8K's '####\\s*(-?[\\d,.]+)'; a generation without a match scores as wrong.",
    )

    @field_validator("extract_pattern")
    @classmethod
    def _pattern_compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as error:
                raise ValueError(f"not a valid regular expression: {error}") from None
        return value

    @model_validator(mode="after")
    def _primary_is_computed(self) -> EvaluationConfig:
        rouge = {"rouge1", "rouge2", "rougeL"} if "rouge" in self.metrics else set()
        computed = set(self.metrics) | rouge
        if self.primary_metric not in computed:
            raise ValueError(f"primary_metric {self.primary_metric!r} is not among metrics {self.metrics}")
        return self


class CustomBenchmark(Section):
    path: str = Field(description="A local file (JSONL, JSON, Parquet) of items, or an lm-eval task YAML.")
    kind: Literal["multiple_choice", "continuation", "perplexity", "lm_eval"] = Field(
        description="multiple_choice: query, choices, answer (index or text); continuation: context and the "
        "continuation scored after a space; perplexity: a text per row; lm_eval: a task YAML whose `task:` is this "
        "benchmark's name (its dataset_path pointing at local files for offline use)."
    )


class BenchmarkSettings(Section):
    metric: str | None = Field(None, description="The metric the gate judges (default: the benchmark's own).")
    limit: int | None = Field(None, gt=0, description="Items (documents for perplexity) scored; default the global.")
    margin: float | None = Field(
        None, gt=0.0, description="Non-inferiority margin: accuracy points, or a relative perplexity rise (0.1)."
    )


class ForgettingConfig(Section):
    enabled: bool = Field(True, description="Score the benchmarks and gate on them; false: the task row alone.")
    benchmarks: list[str] = Field(
        default_factory=lambda: list(DEFAULT_BENCHMARKS),
        description="Benchmarks the merged model is compared with its base on, item by item: the packaged ones "
        "(`qlora benchmarks` lists them), names in `custom`, or any lm-eval task name (its data from the hub).",
    )
    custom: dict[str, CustomBenchmark] = Field(
        default_factory=dict, description="Your own benchmarks by name; list each name in `benchmarks` too."
    )
    settings: dict[str, BenchmarkSettings] = Field(
        default_factory=dict, description="Per-benchmark metric, item count and margin, by benchmark name."
    )
    sample: Literal["random", "first"] = Field(
        "random",
        description="random: each benchmark's `limit` items (documents) drawn at random, seeded, the same every "
        "run; first: the first `limit` (adjacent items share a source, e.g. HellaSwag's activities).",
    )
    sample_seed: int = Field(0, description="Seed of the drawn items; another seed draws (and scores) other items.")
    limit: int | None = Field(
        500,
        gt=0,
        description="Items per accuracy benchmark (500: the gate settles a 5-point margin, see docs/pipeline.md).",
    )
    perplexity_limit: int | None = Field(
        20,
        gt=0,
        description="Documents per perplexity benchmark (a WikiText article is ~5k tokens; the row is a t-test over "
        "documents, so fewer than ~20 rarely settle a 10% margin); null: all.",
    )
    look_every: int | None = Field(
        None,
        gt=0,
        description="Group-sequential gate: score each accuracy benchmark's drawn items this many at a time and stop "
        "a row once a boundary is crossed (O'Brien-Fleming-type alpha spending, Bonferroni across rows); `limit` is "
        "then the most items a row scores. null: every item scored, one look (Holm across rows).",
    )
    perplexity_look_every: int | None = Field(
        None,
        ge=10,
        description="The same for perplexity benchmarks, in documents (at least 10: a t-test over fewer is too weak "
        "to stop on); `perplexity_limit` is then the most documents. Needs `look_every`.",
    )
    batch_size: int = Field(16, gt=0, description="Benchmark requests scored at once.")
    max_length: int = Field(
        1024, gt=16, description="Longest scored sequence in tokens (WikiText windows); capped by the model's."
    )
    data_dir: str = Field("data/benchmarks", description="Prepared benchmark JSONL (DVC stage output).")
    run_when_task_fails: bool = Field(
        False, description="Score the benchmarks even when the task row already failed (the full report)."
    )
    cache_dir: str = Field(".cache/base_scores", description="Base-model scores reused across runs.")
    engine: Literal["local", "ray"] = Field(
        "local",
        description="local: scored in the pipeline's process; ray: the benchmarks split over `ray.num_workers` Ray "
        "tasks, each loading the model (the run directory must be on storage the workers reach).",
    )

    @model_validator(mode="after")
    def _document_looks_need_item_looks(self) -> ForgettingConfig:
        if self.perplexity_look_every is not None and self.look_every is None:
            raise ValueError("perplexity_look_every needs look_every (the gate is group-sequential or not as a whole)")
        return self

    @model_validator(mode="after")
    def _benchmarks_are_known(self) -> ForgettingConfig:
        from tasks.lib.config.benchmark_names import check_benchmark_names

        problems = check_benchmark_names(self.benchmarks, self.custom, self.settings)
        if problems:
            raise ValueError("; ".join(problems))
        return self


class GateConfig(Section):
    max_accuracy_drop: float = Field(
        5.0, gt=0.0, description="Non-inferiority margin, in accuracy points, on every accuracy benchmark."
    )
    max_perplexity_increase: float = Field(
        0.10, gt=0.0, description="Non-inferiority margin for perplexity, relative (0.10 = +10%)."
    )
    require_task_improvement: bool = Field(
        True, description="Tuned must be shown better than base on the task (paired test on the same items)."
    )
    alpha: float = Field(
        0.05, gt=0.0, lt=0.5, description="Family-wise error rate across the benchmarks (Holm); task test level."
    )
    on_inconclusive: Literal["fail", "pass"] = Field(
        "fail", description="What a verdict that the items cannot settle does to promotion."
    )
