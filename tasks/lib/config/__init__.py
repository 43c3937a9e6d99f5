"""The run config: one pydantic model per section, each in the module named for what it configures; every name is
imported from here (`from tasks.lib.config import RunConfig`)."""

from tasks.lib.config.data_config import DataConfig, ReplayConfig, SplitConfig, TableConfig
from tasks.lib.config.evaluation_config import (
    BenchmarkSettings,
    CustomBenchmark,
    EvaluationConfig,
    ForgettingConfig,
    GateConfig,
)
from tasks.lib.config.model_config import LoraConfig, ModelConfig, QuantizationConfig
from tasks.lib.config.release_config import MergeConfig, RegistryConfig, ScheduleConfig, TrackingConfig
from tasks.lib.config.run_config import (
    RunConfig,
    apply_overrides,
    config_from_dict,
    load_config,
    parse_override,
    read_run_config,
)
from tasks.lib.config.section import ConfigError
from tasks.lib.config.training_config import (
    ForgettingProxyConfig,
    RayConfig,
    ResourcesConfig,
    SweepConfig,
    SweepParameter,
    TrainConfig,
)

__all__ = [
    "BenchmarkSettings",
    "ConfigError",
    "CustomBenchmark",
    "DataConfig",
    "EvaluationConfig",
    "ForgettingConfig",
    "ForgettingProxyConfig",
    "GateConfig",
    "LoraConfig",
    "MergeConfig",
    "ModelConfig",
    "QuantizationConfig",
    "RayConfig",
    "RegistryConfig",
    "ReplayConfig",
    "ResourcesConfig",
    "RunConfig",
    "ScheduleConfig",
    "SplitConfig",
    "SweepConfig",
    "SweepParameter",
    "TableConfig",
    "TrackingConfig",
    "TrainConfig",
    "apply_overrides",
    "config_from_dict",
    "load_config",
    "parse_override",
    "read_run_config",
]
