"""The typed run configuration: one YAML file describes a whole pipeline run.

Every section is a pydantic model that forbids unknown keys, so a typo is refused
before any heavy work, with the dotted key in the message. `load_config` reads a YAML
file, applies `--set key=value` overrides and validates everything in one go.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from tasks.lib.benchmark_data import DEFAULT_BENCHMARKS
from tasks.lib.config_paths import project_root, relative_paths, resolve_paths
from tasks.lib.errors import UserError


class ConfigError(UserError, ValueError):
    """A user-caused configuration problem; the message names every offending key."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(_Section):
    name_or_path: str = Field(
        description="Hub id (e.g. HuggingFaceTB/SmolLM2-135M-Instruct), a local HF folder, "
        "or a folder holding `gguf_file`."
    )
    gguf_file: str | None = Field(
        None, description="GGUF file name inside name_or_path; converted once to a safetensors folder."
    )
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit).")
    trust_remote_code: bool = Field(False, description="Run model code from the hub. Off unless you trust it.")
    chat_template: str | None = Field(
        None,
        description="null: the tokenizer's own; 'chatml': the documented default for base models without one; "
        "or a Jinja chat template overriding the tokenizer's.",
    )


class QuantizationConfig(_Section):
    enabled: bool = Field(True, description="Load the base in 4-bit (QLoRA). False trains plain LoRA.")
    quant_type: Literal["nf4", "fp4"] = Field(
        "nf4", description="4-bit data type: nf4 (NormalFloat, the QLoRA paper's) or fp4."
    )
    double_quant: bool = Field(True, description="Quantize the quantization constants too (QLoRA's, ~0.4 bit/param).")
    compute_dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        "auto", description="auto: bfloat16 where the GPU supports it, else float32."
    )
    quant_storage: Literal["uint8", "bfloat16", "float16", "float32"] = Field(
        "uint8",
        description="The dtype the packed 4-bit weights are stored in; FSDP-QLoRA needs it equal to the compute "
        "dtype (bfloat16) so FSDP can shard them with the other weights.",
    )


class LoraConfig(_Section):
    r: int = Field(16, gt=0, description="LoRA rank.")
    alpha: int = Field(32, gt=0, description="LoRA scaling numerator (scale = alpha / r).")
    dropout: float = Field(0.05, ge=0.0, lt=1.0, description="Dropout on the LoRA input during training.")
    target_modules: str | list[str] = Field("all-linear", description="'all-linear' or module names.")
    use_rslora: bool = Field(False, description="Rank-stabilised scaling (alpha / sqrt(r) instead of alpha / r).")
    use_dora: bool = Field(False, description="Weight-decomposed LoRA (DoRA): a learned magnitude per output.")

    @field_validator("target_modules")
    @classmethod
    def _non_empty(cls, value: str | list[str]) -> str | list[str]:
        if not value:
            raise ValueError("must name at least one module, or be 'all-linear'")
        return value


class SplitConfig(_Section):
    validation: float = Field(
        0.1, ge=0.0, lt=1.0, description="Fraction of rows held out for validation loss (unless validation_path)."
    )
    test: float = Field(
        0.1, ge=0.0, lt=1.0, description="Fraction held out for target-task evaluation (unless test_path)."
    )

    @model_validator(mode="after")
    def _leaves_training_rows(self) -> SplitConfig:
        if self.validation + self.test >= 1.0:
            raise ValueError("validation + test must be below 1.0 so rows remain for training")
        return self


class TableConfig(_Section):
    header: bool = Field(True, description="CSV/TSV: line 1 names the columns.")
    columns: list[str] | None = Field(None, description="Column names; required when header is false.")
    delimiter: str | None = Field(None, min_length=1, max_length=1, description="Default: ',' for .csv, tab for .tsv.")
    quoting: Literal["auto", "minimal", "none"] = Field(
        "auto",
        description="minimal: quoted fields (pandas, spreadsheets); none: GLUE-style TSV; auto: csv minimal, tsv none.",
    )

    @model_validator(mode="after")
    def _names_without_header(self) -> TableConfig:
        if not self.header and not self.columns:
            raise ValueError("header is false: list the column names in columns")
        return self


class ReplayConfig(_Section):
    path: str = Field(description="General instruction data mixed into training only (file or hub id).")
    format: Literal["auto", "alpaca", "chat", "prompt_completion"] = Field(
        "auto", description="Row shape of the replay data, as `data.format` (auto: detected from the columns)."
    )
    hub_split: str = Field("train", description="Split to read when `path` is a hub id or data set folder.")
    hub_config: str | None = Field(None, description="Hub configuration name, when `path` is a hub id.")
    hub_revision: str | None = Field(None, description="Hub branch, tag or commit; null: the default branch.")
    fraction: float = Field(0.1, gt=0.0, lt=1.0, description="Share of the training rows that are replay rows.")


class DataConfig(_Section):
    path: str = Field(description="Local JSONL/JSON/CSV/TSV/Parquet file, or a hub data set id.")
    hub_split: str = Field("train", description="Split to read when `path` is a hub id or data set folder.")
    hub_config: str | None = Field(
        None,
        description="Configuration name of a hub data set (e.g. sst2 for nyu-mll/glue); applies to every hub "
        "source of this section.",
    )
    hub_revision: str | None = Field(
        None,
        description="Hub branch, tag or commit; null: the default branch. The data version is the commit it "
        "resolves to (a 40-character commit also works offline).",
    )
    table: TableConfig = Field(default_factory=TableConfig, description="How CSV/TSV files are read.")
    validation_path: str | None = Field(
        None, description="Separate validation source (file or hub id, same format); replaces split.validation."
    )
    validation_hub_split: str = Field("validation", description="Split to read when validation_path is a hub id.")
    test_path: str | None = Field(
        None, description="Separate test source (file or hub id, same format); replaces split.test."
    )
    test_hub_split: str = Field("test", description="Split to read when test_path is a hub id.")
    format: Literal["auto", "alpaca", "chat", "prompt_completion", "template"] = Field(
        "auto", description="Row shape; auto detects alpaca, chat (messages) and prompt/completion."
    )
    prompt_template: str | None = Field(None, description="format=template: user turn with {column} placeholders.")
    completion_template: str | None = Field(
        None, description="format=template: assistant answer with {column} placeholders."
    )
    value_maps: dict[str, dict[str, str]] = Field(
        default_factory=dict, description="Per-column value renaming, e.g. {label: {'0': negative}}."
    )
    system_prompt: str | None = Field(None, description="System turn prepended to every row.")
    rename_columns: dict[str, str] = Field(
        default_factory=dict,
        description="Column renames applied to every source before templating, e.g. {content: sentence} when "
        "the test file names a column differently from the training file.",
    )
    max_rows: int | None = Field(None, gt=0, description="Keep the first N rows after shuffling by seed.")
    max_length: int = Field(256, gt=8, description="Token limit for prompt + answer.")
    overlong: Literal["drop", "truncate"] = Field("drop", description="What to do with rows over max_length.")
    deduplicate: bool = Field(True, description="Drop rows whose whole conversation repeats an earlier row's.")
    on_invalid: Literal["error", "drop"] = Field(
        "error", description="error: refuse the file naming every bad row; drop: skip them into rejects.jsonl."
    )
    max_invalid_fraction: float = Field(
        0.05, ge=0.0, le=1.0, description="With on_invalid=drop, more invalid rows than this is an error anyway."
    )
    replay: ReplayConfig | None = Field(
        None, description="Mix general data into training against forgetting; never into validation or test."
    )
    split: SplitConfig = Field(
        default_factory=SplitConfig, description="Validation and test fractions, or the files that hold them."
    )
    processed_dir: str = Field("data/processed", description="Where prepared splits are written.")

    @model_validator(mode="after")
    def _template_needs_templates(self) -> DataConfig:
        if self.format == "template" and not (self.prompt_template and self.completion_template):
            raise ValueError("format 'template' needs both prompt_template and completion_template")
        return self

    @model_validator(mode="after")
    def _every_held_out_split_has_a_source(self) -> DataConfig:
        for name in ("validation", "test"):
            if getattr(self.split, name) == 0.0 and not getattr(self, f"{name}_path"):
                raise ValueError(f"split.{name} is 0 and no {name}_path is given: the {name} split would be empty")
        return self


class ForgettingProxyConfig(_Section):
    """An in-training forgetting signal: loss on fixed general-text windows, tuned minus base, at each evaluation."""

    enabled: bool = Field(True, description="Measure it (WikiText articles the gate never scores); false: off.")
    windows: int = Field(16, gt=0, description="WikiText windows (from forgetting.data_dir) scored each time.")
    window_tokens: int = Field(256, ge=16, description="Tokens per window.")
    max_increase: float | None = Field(
        None,
        gt=0.0,
        description="Stop training when the loss increase (nats/token) passes this, keeping the adapter of the "
        "last evaluation below it; null: only log.",
    )


class TrainConfig(_Section):
    max_steps: int = Field(200, gt=0, description="Optimizer steps to train (fewer when early stopping ends it).")
    learning_rate: float = Field(2e-4, gt=0.0, description="Peak learning rate of the LoRA weights (AdamW).")
    batch_size: int = Field(
        8,
        gt=0,
        description="Rows per process and step (packed into one sequence with packing); the global batch "
        "is batch_size x num_processes x gradient_accumulation_steps.",
    )
    num_processes: int = Field(
        1,
        gt=0,
        description="Data-parallel training processes (torchrun): one per GPU on CUDA, gloo processes on the CPU. "
        "Evaluation, merge and the benchmarks run once, in the pipeline's own process.",
    )
    engine: Literal["local", "ray"] = Field(
        "local",
        description="local: num_processes processes on this machine (torchrun); ray: Ray Train's TorchTrainer with "
        "the `ray` section's workers, on the cluster it names.",
    )
    accelerate_config: str | None = Field(
        None,
        description="An accelerate config file (e.g. configs/accelerate/fsdp_qlora.yaml): the training processes "
        "start through `accelerate launch` with it instead of torchrun; null: torchrun (DDP).",
    )
    gradient_accumulation_steps: int = Field(1, gt=0, description="Batches whose gradients add up to one step.")
    lr_scheduler: Literal["cosine", "linear", "constant", "constant_with_warmup"] = Field(
        "cosine", description="How the learning rate moves after warm-up (the HF Trainer's schedulers)."
    )
    warmup_ratio: float = Field(0.05, ge=0.0, lt=1.0, description="Share of max_steps spent warming up from 0.")
    weight_decay: float = Field(0.0, ge=0.0, description="AdamW weight decay on the LoRA weights.")
    max_grad_norm: float = Field(1.0, gt=0.0, description="Gradients are clipped to this global norm.")
    optimizer: str = Field("auto", description="auto: paged_adamw_8bit on CUDA, adamw_torch on CPU.")
    gradient_checkpointing: bool | Literal["auto"] = Field(
        "auto", description="auto: on for CUDA (QLoRA paper default), off on CPU where memory is ample."
    )
    packing: bool = Field(True, description="Concatenate rows without padding; attention stays per row.")
    attention: Literal["auto", "sdpa", "flash_attention_2", "packed_loop"] = Field(
        "auto",
        description="Attention kernel for training. auto: packed_loop on the CPU with packing (SDPA per packed "
        "row), flash_attention_2 on CUDA where flash-attn is installed, else sdpa (variable-length via position ids).",
    )
    share_prompt_prefix: bool = Field(
        True,
        description="With packing and packed_loop attention: the prompt tokens every row of a batch starts with "
        "(system turn, instruction) are computed once per batch and attended to by each row; the same loss and "
        "gradients with fewer tokens (LoRA dropout masks on those tokens are then shared within the batch).",
    )
    eval_steps: int = Field(25, gt=0, description="Validation loss (and the forgetting proxy) every N steps.")
    save_steps: int = Field(25, gt=0, description="A resumable checkpoint every N steps.")
    save_total_limit: int = Field(2, gt=0, description="Newest checkpoints kept (the best too, with early stopping).")
    logging_steps: int = Field(5, gt=0, description="Training loss and throughput to MLflow every N steps.")
    early_stopping_patience: int | None = Field(3, gt=0, description="Evals without improvement; null: off.")
    eval_max_rows: int | None = Field(200, gt=0, description="Validation rows used for the loss.")
    forgetting_proxy: ForgettingProxyConfig = Field(
        default_factory=ForgettingProxyConfig,
        description="A general-text loss logged during training (never the gate's documents).",
    )

    @model_validator(mode="after")
    def _one_way_to_scale(self) -> TrainConfig:
        if self.engine == "ray" and (self.num_processes > 1 or self.accelerate_config):
            raise ValueError(
                "with engine ray, scale with ray.num_workers (num_processes must be 1, no accelerate_config)"
            )
        return self

    @model_validator(mode="after")
    def _checkpoints_align_with_evals(self) -> TrainConfig:
        if self.early_stopping_patience is not None and self.save_steps % self.eval_steps:
            raise ValueError("save_steps must be a multiple of eval_steps when early stopping keeps the best")
        return self


class EvaluationConfig(_Section):
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


class CustomBenchmark(_Section):
    path: str = Field(description="A local file (JSONL, JSON, Parquet) of items, or an lm-eval task YAML.")
    kind: Literal["multiple_choice", "continuation", "perplexity", "lm_eval"] = Field(
        description="multiple_choice: query, choices, answer (index or text); continuation: context and the "
        "continuation scored after a space; perplexity: a text per row; lm_eval: a task YAML whose `task:` is this "
        "benchmark's name (its dataset_path pointing at local files for offline use)."
    )


class BenchmarkSettings(_Section):
    metric: str | None = Field(None, description="The metric the gate judges (default: the benchmark's own).")
    limit: int | None = Field(None, gt=0, description="Items (documents for perplexity) scored; default the global.")
    margin: float | None = Field(
        None, gt=0.0, description="Non-inferiority margin: accuracy points, or a relative perplexity rise (0.1)."
    )


class ForgettingConfig(_Section):
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
        from tasks.lib.benchmark_names import check_benchmark_names

        problems = check_benchmark_names(self.benchmarks, self.custom, self.settings)
        if problems:
            raise ValueError("; ".join(problems))
        return self


class GateConfig(_Section):
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


class MergeConfig(_Section):
    strategy: Literal["dequantize", "original"] = Field(
        "dequantize",
        description="dequantize: merge into the dequantized 4-bit base the adapter was trained on; "
        "original: merge into the full-precision base.",
    )
    min_argmax_agreement: float = Field(0.99, gt=0.0, le=1.0, description="At answer positions, merged vs adapter.")
    max_relative_distance: float = Field(
        0.1, gt=0.0, lt=1.0, description="Merged-to-adapter over base-to-adapter distance (answer log-probs)."
    )
    num_fidelity_prompts: int = Field(32, gt=8, description="Test items the merge check compares.")


class RegistryConfig(_Section):
    enabled: bool = Field(True, description="Register a run whose gates pass; false: track it only.")
    model_name: str = Field(description="Registered model name in the MLflow Model Registry.")
    confirmation_horizon: int = Field(
        52,
        ge=1,
        description="Challenger-vs-champion confirmations one test set makes (52: a year of weekly retrains); "
        "gate.alpha is spread evenly over them, so a model no better than the champion is promoted within the "
        "horizon with probability <= gate.alpha, and a gain is found as often at the last look as at the first.",
    )
    horizon_renewals: int = Field(
        0,
        ge=0,
        description="Raise by one to declare a new horizon on the same test items once the budget is spent (each "
        "horizon spends another gate.alpha on them); fresh test items renew it too.",
    )


class TrackingConfig(_Section):
    uri: str | None = Field(
        None, description="MLflow tracking URI; default $MLFLOW_TRACKING_URI, else sqlite:///mlruns.db."
    )
    experiment: str = Field("qlora", description="MLflow experiment the runs are logged in.")
    artifact_location: str | None = Field(None, description="Artifact root for a new experiment.")

    @field_validator("uri", "artifact_location")
    @classmethod
    def _no_credentials(cls, value: str | None) -> str | None:
        authority = (value or "").split("://", 1)[-1].split("/", 1)[0]
        if "@" in authority:
            raise ValueError(
                "must not carry credentials (user:password@): a config is copied into run folders, MLflow and "
                "Prefect parameters. Set MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD (or the store's own "
                "environment variables) instead"
            )
        return value


class ScheduleConfig(_Section):
    cron: str | None = Field("0 3 * * 1", description="Retraining schedule (cron); null: none.")
    timezone: str = Field("UTC", description="Time zone the cron schedule is read in.")


class SweepParameter(_Section):
    """One searched config key: a range (low, high; integers when both are integers) or a list of choices."""

    low: float | None = Field(None, description="Lower end of the searched range (with high).")
    high: float | None = Field(None, description="Upper end of the searched range (with low).")
    log: bool = Field(False, description="Sample the range on a log scale (learning rates).")
    choices: list[Any] | None = Field(None, description="The values to try, instead of a range.")

    @model_validator(mode="after")
    def _range_or_choices(self) -> SweepParameter:
        ranged = self.low is not None and self.high is not None
        if ranged == (self.choices is not None):
            raise ValueError("give either low and high, or choices")
        if ranged and not self.low < self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        if ranged and self.log and self.low <= 0:
            raise ValueError("a log-scale range needs low > 0")
        if self.choices is not None and not self.choices:
            raise ValueError("choices is empty")
        return self


class SweepConfig(_Section):
    """`qlora sweep`: trials of the whole pipeline, each a flow run on a Prefect work pool, searched by Optuna to
    maximise the paired task gain subject to the forgetting gate passing."""

    parameters: dict[str, SweepParameter] = Field(
        description="Dotted config keys to search, e.g. {train.learning_rate: {low: 1e-5, high: 1e-3, log: true}}."
    )
    trials: int = Field(8, gt=0, description="Trials in this sweep (a resumed study adds this many more).")
    sampler: Literal["tpe", "grid"] = Field("tpe", description="tpe: Optuna's TPE; grid: every combination of choices.")
    parallel: int = Field(2, gt=0, description="Trials in flight at once (the pool's workers run them).")
    storage: str | None = Field(
        None,
        description="Optuna storage URL (the study survives restarts); null: sqlite:///<output_dir>/<name>/optuna.db. "
        "In production the same Postgres as MLflow, e.g. postgresql://user@db/optuna.",
    )
    work_pool: str = Field("qlora-sweep", description="The Prefect process work pool whose workers run the trials.")
    source: str | None = Field(
        None, description="Where workers get the code: a git URL, or null for this checkout (workers on this host)."
    )
    trial_timeout_s: int = Field(7200, gt=0, description="A trial still running after this is counted as failed.")

    @model_validator(mode="after")
    def _grid_needs_choices(self) -> SweepConfig:
        if self.sampler == "grid" and any(p.choices is None for p in self.parameters.values()):
            raise ValueError("sampler 'grid' needs choices for every parameter")
        if not self.parameters:
            raise ValueError("parameters is empty: name at least one key to search")
        return self


class RayConfig(_Section):
    address: str | None = Field(
        None,
        description="The Ray cluster to join: `ray://host:10001` or `host:6379` (a KubeRay head), `auto` (the cluster "
        "`ray start` began on this machine); null: a one-machine cluster started for the run and stopped after.",
    )
    num_workers: int = Field(
        2, gt=0, description="Training workers (one process each; DDP across them); scoring tasks (benchmarks split)."
    )
    cpus_per_worker: float = Field(1.0, gt=0, description="CPUs Ray reserves per worker; also its torch threads.")
    gpus_per_worker: float = Field(0.0, ge=0, description="GPUs per worker; > 0 trains over NCCL, else gloo.")
    max_failures: int = Field(
        2,
        ge=0,
        description="Times Ray replaces a worker group after a worker dies; training continues from the last "
        "checkpoint in the run directory (which every worker must reach: shared storage on a multi-node cluster).",
    )


class ResourcesConfig(_Section):
    cpu_threads: int | Literal["auto"] = Field(
        "auto",
        description="torch's CPU threads in each pipeline process. auto: the process's share of the machine's cores "
        "among the pipeline processes running on it now (concurrent runs and sweep trials split the cores instead "
        "of each taking all of them), refitted between steps; an int: that many, whatever else runs.",
    )

    @field_validator("cpu_threads")
    @classmethod
    def _positive(cls, value: int | str) -> int | str:
        if isinstance(value, int) and value < 1:
            raise ValueError("must be at least 1, or auto")
        return value

    def configured_threads(self) -> int | None:
        return None if self.cpu_threads == "auto" else self.cpu_threads


class RunConfig(_Section):
    name: str = Field(description="Run family name: run directory, processed data and defaults derive from it.")
    seed: int = Field(42, description="Seeds shuffling, splits, LoRA initialisation, dropout and item order.")
    output_dir: str = Field("runs", description="Run directories live under here.")
    project_root: str | None = Field(
        None,
        description="The folder relative paths are read from; null: the nearest folder above the config file with "
        "pyproject.toml or dvc.yaml. Paths are made absolute when the config loads (docs/usage.md).",
    )
    model: ModelConfig = Field(description="The base model: where it is, its revision, its dtype.")
    quantization: QuantizationConfig = Field(
        default_factory=QuantizationConfig, description="How the base is loaded in 4 bits (bitsandbytes)."
    )
    lora: LoraConfig = Field(default_factory=LoraConfig, description="The LoRA adapter trained on the 4-bit base.")
    data: DataConfig = Field(description="The task data: where, its row shape, how rendered and split.")
    train: TrainConfig = Field(default_factory=TrainConfig, description="The trainer: steps, rates, checkpoints.")
    evaluation: EvaluationConfig = Field(
        default_factory=EvaluationConfig, description="Target-task evaluation of base and tuned on the test items."
    )
    forgetting: ForgettingConfig = Field(
        default_factory=ForgettingConfig, description="The general benchmarks the gate reads, and how many items."
    )
    gate: GateConfig = Field(
        default_factory=GateConfig, description="What promotion requires: margins, level, inconclusive rows."
    )
    merge: MergeConfig = Field(
        default_factory=MergeConfig, description="Merging the adapter into the dequantized base, and its check."
    )
    registry: RegistryConfig = Field(description="Where a model that passes the gates is registered.")
    tracking: TrackingConfig = Field(default_factory=TrackingConfig, description="The MLflow store runs log to.")
    schedule: ScheduleConfig = Field(
        default_factory=ScheduleConfig, description="When the retraining deployment runs (cron)."
    )
    sweep: SweepConfig | None = Field(None, description="The search `qlora sweep` runs; ignored by `qlora run`.")
    resources: ResourcesConfig = Field(
        default_factory=ResourcesConfig, description="The CPU threads a run may use on a shared machine."
    )
    ray: RayConfig = Field(
        default_factory=RayConfig, description="The Ray cluster train.engine / forgetting.engine `ray` run on."
    )

    @field_validator("name")
    @classmethod
    def _safe_name(cls, value: str) -> str:
        if not value or not all(c.isalnum() or c in "-_." for c in value):
            raise ValueError("use letters, digits, '-', '_' or '.' only")
        return value

    @model_validator(mode="after")
    def _swept_keys_exist(self) -> RunConfig:
        if self.sweep is None:
            return self
        values = self.model_dump()
        for key in self.sweep.parameters:
            node = values
            for part in key.split("."):
                if not isinstance(node, dict) or part not in node:
                    raise ValueError(f"sweep.parameters: {key!r} is not a config key")
                node = node[part]
            if key.split(".")[0] in ("sweep", "name", "output_dir", "registry", "tracking"):
                raise ValueError(f"sweep.parameters: {key!r} does not change what a trial learns")
        return self

    def runs_dir(self) -> Path:
        """Where this config's runs live: `<output_dir>/<name>/`, one folder per run id below it."""
        return Path(self.output_dir) / self.name

    def portable_dump(self) -> dict[str, Any]:
        """The config as plain data with its paths relative to the project root: what hashes see, so the same
        project checked out elsewhere hashes the same."""
        dump = self.model_dump(mode="json")
        root = dump.pop("project_root")
        return relative_paths(dump, Path(root)) if root else dump

    def fingerprint(self) -> str:
        """Stable hash of the whole config, recorded with every run."""
        return hashlib.sha256(json.dumps(self.portable_dump(), sort_keys=True).encode()).hexdigest()[:16]

    def outcome_fingerprint(self) -> str:
        """Hash of the keys that can change what a run produces or decides; where results go (output_dir,
        tracking, registry name), when it runs (schedule) and where data is prepared are left out."""
        keys = ("seed", "model", "quantization", "lora", "data", "train", "evaluation", "forgetting", "gate", "merge")
        relevant = {key: value for key, value in self.portable_dump().items() if key in keys}
        relevant["data"].pop("processed_dir", None)
        for key in ("data_dir", "cache_dir"):
            relevant["forgetting"].pop(key, None)
        if self.train.engine == "ray":  # Ray workers make the global batch, as num_processes does
            relevant["ray_workers"] = self.ray.num_workers
        return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:16]


def read_run_config(run_dir: Path | str) -> RunConfig:
    """The config a pipeline run was started with (`RUN_DIR/config.json`, written by the run itself)."""
    from tasks.lib.run_layout import RunLayout

    return RunConfig.model_validate(json.loads(RunLayout.of(run_dir).config_file.read_text(encoding="utf-8")))


def _format_errors(error: ValidationError, source: str) -> str:
    lines = [f"invalid config {source}:"]
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"]) or "(top level)"
        message = "unknown key" if item["type"] == "extra_forbidden" else item["msg"].removeprefix("Value error, ")
        lines.append(f"  {key}: {message}")
    return "\n".join(lines)


def parse_override(override: str) -> tuple[list[str], Any]:
    """`train.learning_rate=1e-4` -> (['train', 'learning_rate'], 1e-4); the value is read as YAML."""
    key, sep, raw = override.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {override!r} must look like section.key=value")
    return key.strip().split("."), yaml.safe_load(raw) if raw.strip() else None


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for override in overrides:
        path, value = parse_override(override)
        node = raw
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {override!r}: {part!r} is not a section")
            node = child
        node[path[-1]] = value
    return raw


def config_from_dict(raw: dict[str, Any], source: str = "<dict>", root: Path | None = None) -> RunConfig:
    """A validated config with its paths made absolute: under its own `project_root` when it names one, else under
    `root` (the config file's project), else under the working directory."""
    named = raw.get("project_root")
    base = Path(named if isinstance(named, str) else root or Path.cwd()).expanduser().resolve()
    try:  # the paths written, then the defaults' (validators that look at files see absolute paths)
        config = RunConfig.model_validate(resolve_paths(copy.deepcopy(raw), base))
        return RunConfig.model_validate(
            {**resolve_paths(config.model_dump(mode="json"), base), "project_root": str(base)}
        )
    except ValidationError as error:
        raise ConfigError(_format_errors(error, source)) from None


def load_config(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"config {path} is not valid YAML: {error}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"config {path} must be a mapping of sections")
    root = project_root(path)
    if isinstance(raw.get("project_root"), str):  # a relative project_root is read from the config's folder
        root = path.resolve().parent / raw["project_root"]
        raw["project_root"] = str(root)
    return config_from_dict(apply_overrides(raw, overrides or []), str(path), root)
