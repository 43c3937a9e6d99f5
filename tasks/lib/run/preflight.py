"""Checks a config against the world before any heavy work: every missing or unusable input is named by its key."""

from __future__ import annotations

import difflib
import importlib.util
import json
from pathlib import Path

from tasks.lib.config import ConfigError, RunConfig
from tasks.lib.dataset.data_formats import is_hub_id


def check_inputs(config: RunConfig, benchmarks: bool = True) -> None:
    """Names every missing input; `benchmarks=False` for steps that stop before the forgetting check."""
    problems = []
    if config.train.attention == "flash_attention_2" and importlib.util.find_spec("flash_attn") is None:
        problems.append("train.attention: flash_attention_2 needs the flash-attn package (and a CUDA GPU)")
    for key in ("path", "validation_path", "test_path"):
        value = getattr(config.data, key)
        if value and not Path(value).exists() and not _plausible_hub_id(value):
            problems.append(f"data.{key}: {_missing(value)}")
    model_path = Path(config.model.name_or_path)
    if config.model.gguf_file:
        if not (model_path / config.model.gguf_file).is_file():
            problems.append(f"model.gguf_file: {model_path / config.model.gguf_file} does not exist")
    elif not model_path.exists() and not _plausible_hub_id(config.model.name_or_path):
        problems.append(f"model.name_or_path: {_missing(config.model.name_or_path)}")
    elif model_path.exists() and not (model_path / "config.json").is_file():
        problems.append(f"model.name_or_path: {model_path} has no config.json")
    elif model_path.is_dir() and "lm_head" in config.lora.target_modules and _ties_embeddings(model_path):
        problems.append(
            f"lora.target_modules: lm_head shares its weights with the input embeddings in {model_path} "
            "(tie_word_embeddings); a LoRA on it cannot be scored by lm-eval (which re-ties the weights) "
            "nor merged into the one shared matrix. Leave lm_head out."
        )
    problems += _launch_problems(config)
    if benchmarks and config.forgetting.enabled:
        problems += _benchmark_problems(config)
    if problems:
        raise ConfigError("config refused before any work:\n  " + "\n  ".join(problems))


def _benchmark_problems(config: RunConfig) -> list[str]:
    """Missing prepared data, and every bad row of a user's own benchmark files (named by file and line)."""
    from tasks.lib.config.benchmark_names import OUTPUT_FILES
    from tasks.lib.dataset.data_formats import DataError
    from tasks.lib.general_benchmarks.benchmark_data import convert_custom

    bench = config.forgetting
    if any(name in OUTPUT_FILES for name in bench.benchmarks) and not Path(bench.data_dir).is_dir():
        return [
            f"forgetting.data_dir: {bench.data_dir} does not exist "
            "(run `dvc repro prepare_benchmarks`, or set forgetting.enabled=false)"
        ]
    problems = []
    for name, spec in bench.custom.items():
        if spec.kind == "lm_eval" and Path(spec.path).is_file():
            problems += [f"forgetting.custom.{name}: {problem}" for problem in _lm_eval_yaml_problems(Path(spec.path))]
        elif Path(spec.path).is_file():
            try:
                convert_custom(name, spec.path, spec.kind)
            except DataError as error:
                problems.append(f"forgetting.custom.{name}: {error}")
    return problems


def _lm_eval_yaml_problems(path: Path) -> list[str]:
    """A user's lm-eval task YAML: it parses, and every local file its `dataset_kwargs.data_files` names exists
    (as `datasets` resolves it: from the working directory, globs allowed; remote addresses are not checked)."""
    import glob

    import yaml

    class _Loader(yaml.SafeLoader):
        pass

    _Loader.add_multi_constructor("!", lambda loader, suffix, node: None)  # `!function ...`: resolved by lm-eval
    try:
        task = yaml.load(path.read_text(encoding="utf-8"), Loader=_Loader) or {}
    except yaml.YAMLError as error:
        return [f"{path}: not valid YAML ({error})"]
    if not isinstance(task, dict):
        return [f"{path}: an lm-eval task YAML is a mapping of keys, got {type(task).__name__}"]
    data_files = (task.get("dataset_kwargs") or {}).get("data_files")
    named = data_files.values() if isinstance(data_files, dict) else [data_files]
    files = [item for entry in named for item in (entry if isinstance(entry, list) else [entry]) if item]
    missing = [str(file) for file in files if "://" not in str(file) and not glob.glob(str(file))]
    return [f"{path}: dataset_kwargs.data_files names {file}, which does not exist" for file in missing]


def _launch_problems(config: RunConfig) -> list[str]:
    """Multi-process settings that cannot work, named before any process starts."""
    import yaml

    train, quantization = config.train, config.quantization
    if not train.accelerate_config:
        return []
    path = Path(train.accelerate_config)
    if not path.is_file():
        return [f"train.accelerate_config: {path} does not exist"]
    try:
        launch = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as error:
        return [f"train.accelerate_config: {path} is not valid YAML ({error})"]
    fsdp = launch.get("distributed_type") == "FSDP"
    if fsdp and quantization.enabled and quantization.quant_storage != quantization.compute_dtype:
        return [
            f"quantization.quant_storage: FSDP ({path}) shards the 4-bit weights only when they are stored in the "
            f"compute dtype: set quant_storage and compute_dtype both to bfloat16 (now {quantization.quant_storage} "
            f"and {quantization.compute_dtype})"
        ]
    return []


def _ties_embeddings(model_dir: Path) -> bool:
    try:
        return bool(json.loads((model_dir / "config.json").read_text(encoding="utf-8")).get("tie_word_embeddings"))
    except (OSError, ValueError):
        return False


def _plausible_hub_id(value: str) -> bool:
    """A hub id, unless its `org/` part is a local folder: `models/smollm2-135m-instruc` is a typo'd local path
    (it would otherwise fail much later, offline, with a hub traceback)."""
    return is_hub_id(value) and not Path(value).parent.is_dir()


def _missing(value: str) -> str:
    """`value does not exist`, with the closest existing names beside it when there are any."""
    path = Path(value)
    siblings = [child.name for child in path.parent.iterdir()] if path.parent.is_dir() else []
    close = difflib.get_close_matches(path.name, siblings, n=3, cutoff=0.6)
    hint = f"; did you mean {' or '.join(str(path.parent / name) for name in close)}?" if close else ""
    return f"{value} does not exist (and is not a hub id){hint}"
