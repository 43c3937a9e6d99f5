"""The typed run configuration: one YAML file describes a whole pipeline run.

Every section is a pydantic model that forbids unknown keys, so a typo is refused
before any heavy work, with the dotted key in the message. `load_config` reads a YAML
file, applies `--set key=value` overrides and validates everything in one go.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from tasks.lib.config.config_paths import project_root, relative_paths, relative_to_root, resolve_paths
from tasks.lib.config.data_config import DataConfig
from tasks.lib.config.evaluation_config import EvaluationConfig, ForgettingConfig, GateConfig
from tasks.lib.config.model_config import LoraConfig, ModelConfig, QuantizationConfig
from tasks.lib.config.release_config import (
    LOCAL_ARTIFACT_ROOT,
    LOCAL_TRACKING_STORE,
    MergeConfig,
    RegistryConfig,
    ScheduleConfig,
    TrackingConfig,
)
from tasks.lib.config.section import ConfigError, Section
from tasks.lib.config.training_config import RayConfig, ResourcesConfig, SweepConfig, TrainConfig


class RunConfig(Section):
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

    def shown_path(self, path: str) -> str:
        """A path as reports and descriptions show it: relative to the project root when under it (the same text on
        any checkout), whole otherwise."""
        return relative_to_root(str(path), Path(self.project_root)) if self.project_root else str(path)

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
    from tasks.lib.core.run_layout import RunLayout

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


def _local_tracking(dump: dict[str, Any], root: Path) -> dict[str, Any]:
    """Without a tracking URI (in the config or $MLFLOW_TRACKING_URI), the project's own store and artifact root,
    whatever directory the run starts from (a relative `sqlite:///mlruns.db` would be a new store in each one)."""
    tracking = dump["tracking"]
    if tracking["uri"] is None and not os.environ.get("MLFLOW_TRACKING_URI"):
        tracking["uri"] = f"sqlite:///{root / LOCAL_TRACKING_STORE}"
        if tracking["artifact_location"] is None:
            tracking["artifact_location"] = (root / LOCAL_ARTIFACT_ROOT).as_uri()
    return dump


def config_from_dict(raw: dict[str, Any], source: str = "<dict>", root: Path | None = None) -> RunConfig:
    """A validated config with its paths made absolute: under its own `project_root` when it names one, else under
    `root` (the config file's project), else under the working directory."""
    named = raw.get("project_root")
    base = Path(named if isinstance(named, str) else root or Path.cwd()).expanduser().resolve()
    try:  # the paths written, then the defaults' (validators that look at files see absolute paths)
        config = RunConfig.model_validate(resolve_paths(copy.deepcopy(raw), base))
        return RunConfig.model_validate(
            {**resolve_paths(_local_tracking(config.model_dump(mode="json"), base), base), "project_root": str(base)}
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
