"""QLoRA training with the HF Trainer: packing without cross-contamination, validation loss, early
stopping, checkpoints, resume from the latest checkpoint, and a guard against diverging runs."""

from __future__ import annotations

import importlib.util
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from peft import get_peft_model, prepare_model_for_kbit_training
from transformers import (
    EarlyStoppingCallback,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)
from transformers.trainer import TRAINER_STATE_NAME

from tasks.lib.config import RunConfig
from tasks.lib.core.plots import pyplot, save_png
from tasks.lib.core.run_layout import RunLayout
from tasks.lib.dataset.data_formats import read_jsonl
from tasks.lib.modeling.loading import peft_lora_config, pin_cpu_4bit_kernel, resolve_compute_dtype
from tasks.lib.modeling.lora_dropout import use_cheap_lora_dropout
from tasks.lib.modeling.packed_attention import NAME as PACKED_ATTENTION
from tasks.lib.modeling.packed_attention import resolve_attention, set_attention
from tasks.lib.training.callbacks import (
    BetweenSteps,
    DivergenceGuard,
    ForgettingProxy,
    MetricsCallback,
    MetricsSink,
    general_text_windows,
)
from tasks.lib.training.collators import TokenCountingCollator, build_collator, supports_answer_logits_only


@dataclass
class TrainResult:
    adapter_dir: Path
    resumed_from_step: int | None
    global_step: int
    best_eval_loss: float | None
    first_eval_loss: float | None
    trainable_params: int
    total_params: int
    tokens_per_second: float
    stopped_early: bool
    stopped_by_forgetting_proxy: int | None = None  # the step whose evaluation passed the proxy's bound
    attention: str = ""  # the attention implementation training used
    log_history: list[dict[str, Any]] = field(default_factory=list)
    proxy_history: list[dict[str, Any]] = field(default_factory=list)  # {"step", forgetting_proxy.* metrics}


def read_token_split(path: Path, max_rows: int | None = None) -> Dataset:
    rows = [{"input_ids": row["input_ids"], "labels": row["labels"]} for _, row in read_jsonl(Path(path))]
    return Dataset.from_list(rows[:max_rows] if max_rows is not None else rows)


def _resolve_auto(config: RunConfig) -> tuple[str, bool]:
    cuda = torch.cuda.is_available()
    optimizer = config.train.optimizer
    if optimizer == "auto":
        optimizer = "paged_adamw_8bit" if cuda and config.quantization.enabled else "adamw_torch"
    checkpointing = config.train.gradient_checkpointing
    if checkpointing == "auto":
        checkpointing = cuda
    return optimizer, bool(checkpointing)


def attach_lora(base: PreTrainedModel, config: RunConfig, gradient_checkpointing: bool) -> PreTrainedModel:
    if config.quantization.enabled:
        base = prepare_model_for_kbit_training(base, use_gradient_checkpointing=gradient_checkpointing)
    elif gradient_checkpointing:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        base.enable_input_require_grads()
    base.config.use_cache = False
    model = get_peft_model(base, peft_lora_config(config.lora))
    use_cheap_lora_dropout(model)
    return model


def training_arguments(config: RunConfig, output_dir: Path, optimizer: str, checkpointing: bool) -> TrainingArguments:
    train = config.train
    compute_dtype = resolve_compute_dtype(config.quantization.compute_dtype)
    return TrainingArguments(
        output_dir=str(output_dir),
        max_steps=train.max_steps,
        per_device_train_batch_size=train.batch_size,
        per_device_eval_batch_size=train.batch_size,
        gradient_accumulation_steps=train.gradient_accumulation_steps,
        learning_rate=train.learning_rate,
        lr_scheduler_type=train.lr_scheduler,
        warmup_steps=train.warmup_ratio,
        weight_decay=train.weight_decay,
        max_grad_norm=train.max_grad_norm,
        optim=optimizer,
        activation_checkpointing=checkpointing,
        activation_checkpointing_kwargs={"use_reentrant": False} if checkpointing else None,
        dataloader_pin_memory=torch.cuda.is_available(),  # pinned memory only helps copies to a GPU
        bf16=compute_dtype == torch.bfloat16,
        fp16=compute_dtype == torch.float16,
        eval_strategy="steps",
        eval_steps=train.eval_steps,
        save_strategy="steps",
        save_steps=train.save_steps,
        save_total_limit=train.save_total_limit,
        load_best_model_at_end=train.early_stopping_patience is not None,
        metric_for_best_model="eval_loss",
        greater_is_better=False,
        logging_steps=train.logging_steps,
        logging_first_step=True,
        seed=config.seed,
        data_seed=config.seed,
        report_to="none",
        dataloader_num_workers=0,
        remove_unused_columns=False,
        # The Trainer's bar (steps done, rate, time left; a line every TQDM_MININTERVAL s, 20 from the command line).
        disable_tqdm=False,
        # Under torchrun, accelerate launch or Ray Train (WORLD_SIZE > 1): only the LoRA weights train, every one of
        # them is used each step, and the CPU has no NCCL. Without use_cpu, accelerate reads a CPU machine's
        # processes as independent (DistributedType.NO): each trains on its shard alone, gradients never averaged.
        use_cpu=not torch.cuda.is_available(),
        ddp_find_unused_parameters=False,
        ddp_backend="gloo" if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available() else None,
    )


def last_complete_checkpoint(checkpoint_dir: Path) -> str | None:
    """The newest checkpoint rank 0 finished writing (trainer_state.json is its last file). A process killed while
    saving, or a surviving rank of a data-parallel group (each rank writes its RNG state into the folder), can leave
    a newer folder without it: resuming from that would fail, so it is passed over."""
    steps = []
    for folder in Path(checkpoint_dir).glob("checkpoint-*"):
        suffix = folder.name.removeprefix("checkpoint-")
        if suffix.isdigit() and (folder / TRAINER_STATE_NAME).is_file():
            steps.append((int(suffix), folder))
    return str(max(steps)[1]) if steps else None


def _quantized_lora_model(config: RunConfig, load_base: Callable[[], PreTrainedModel], checkpointing: bool):
    """The 4-bit base with its attention implementation chosen and the LoRA attached: (model, attention)."""
    torch.manual_seed(config.seed)
    base = load_base()
    pin_cpu_4bit_kernel(base)
    attention = resolve_attention(
        config.train.attention,
        config.train.packing,
        torch.cuda.is_available(),
        importlib.util.find_spec("flash_attn") is not None,
    )
    attention = set_attention(base, attention)
    return attach_lora(base, config, checkpointing), attention


def _callbacks(
    config: RunConfig,
    tokenizer: PreTrainedTokenizerBase,
    collator: TokenCountingCollator,
    metrics_sink: MetricsSink | None,
    general_text: Sequence[str],
    extra_callbacks: Sequence[TrainerCallback],
) -> tuple[list[TrainerCallback], ForgettingProxy | None]:
    """The Trainer's callbacks (divergence guard, metrics, early stopping, the forgetting proxy when it has text),
    and the proxy among them."""
    callbacks: list[TrainerCallback] = [DivergenceGuard(), BetweenSteps()]
    if metrics_sink is not None:
        callbacks.append(MetricsCallback(metrics_sink, collator))
    if config.train.early_stopping_patience is not None:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=config.train.early_stopping_patience))
    proxy_config, proxy = config.train.forgetting_proxy, None
    if proxy_config.enabled and general_text:
        windows = general_text_windows(general_text, tokenizer, proxy_config.windows, proxy_config.window_tokens)
        proxy = ForgettingProxy(windows, proxy_config.max_increase, metrics_sink)
        callbacks.append(proxy)
    return [*callbacks, *extra_callbacks], proxy


def _first_evaluation(
    trainer: Trainer, run_dir: Path, metrics_sink: MetricsSink | None, resuming: bool
) -> float | None:
    """The validation loss before any training step: measured on a fresh start, read back on a resume."""
    if resuming:
        return _first_eval_loss(run_dir)
    first_eval = trainer.evaluate()["eval_loss"]
    if trainer.is_world_process_zero():
        _remember_first_eval(run_dir, first_eval)
    if metrics_sink is not None:
        metrics_sink({"eval_loss": first_eval}, 0)
    return first_eval


def train_adapter(
    config: RunConfig,
    load_base: Callable[[], PreTrainedModel],
    tokenizer: PreTrainedTokenizerBase,
    data_dir: Path,
    run_dir: Path,
    metrics_sink: MetricsSink | None = None,
    extra_callbacks: Sequence[TrainerCallback] = (),
    general_text: Sequence[str] = (),
) -> TrainResult:
    """Trains a LoRA adapter on `data_dir`'s train split; resumes if `run_dir` holds checkpoints.

    `general_text` (pages of general text) feeds the in-training forgetting proxy when it is enabled.

    `extra_callbacks` are appended to the Trainer's (benchmarks/train_throughput.py times steps with one).
    """
    run_dir = Path(run_dir)
    checkpoint_dir = RunLayout.of(run_dir).checkpoints_dir
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    last_checkpoint = last_complete_checkpoint(checkpoint_dir)
    optimizer, checkpointing = _resolve_auto(config)
    model, attention = _quantized_lora_model(config, load_base, checkpointing)
    trainable, total = model.get_nb_trainable_parameters()

    train_set = read_token_split(Path(data_dir) / "train.jsonl")
    eval_set = read_token_split(Path(data_dir) / "validation.jsonl", config.train.eval_max_rows)
    answer_logits_only = config.train.packing and supports_answer_logits_only(model, config)
    share_prefix = config.train.packing and config.train.share_prompt_prefix and attention == PACKED_ATTENTION
    collator = TokenCountingCollator(
        build_collator(tokenizer, config.train.packing, answer_logits_only, share_prefix), tokenizer.pad_token_id
    )
    callbacks, proxy = _callbacks(config, tokenizer, collator, metrics_sink, general_text, extra_callbacks)
    trainer = Trainer(
        model=model,
        args=training_arguments(config, checkpoint_dir, optimizer, checkpointing),
        train_dataset=train_set,
        eval_dataset=eval_set,
        data_collator=collator,
        processing_class=tokenizer,
        callbacks=callbacks,
    )

    first_eval = _first_evaluation(trainer, run_dir, metrics_sink, resuming=last_checkpoint is not None)
    started = time.perf_counter()
    output = trainer.train(resume_from_checkpoint=last_checkpoint)
    elapsed = time.perf_counter() - started

    if proxy is not None and proxy.stopped_at is not None:
        _restore_checkpoint_adapter(model, checkpoint_dir, proxy.last_step_below)
    adapter_dir = RunLayout.of(run_dir).adapter_dir
    if trainer.is_world_process_zero():  # one writer when several processes train together
        model.save_pretrained(adapter_dir, safe_serialization=True)
    history = trainer.state.log_history
    eval_losses = [entry["eval_loss"] for entry in history if "eval_loss" in entry]
    return TrainResult(
        adapter_dir=adapter_dir,
        resumed_from_step=int(Path(last_checkpoint).name.split("-")[-1]) if last_checkpoint else None,
        global_step=output.global_step,
        best_eval_loss=min(eval_losses) if eval_losses else None,
        first_eval_loss=first_eval,
        trainable_params=int(trainable),
        total_params=int(total),
        tokens_per_second=collator.real_tokens / elapsed if elapsed > 0 else 0.0,
        stopped_early=output.global_step < config.train.max_steps,
        stopped_by_forgetting_proxy=proxy.stopped_at if proxy is not None else None,
        attention=attention,
        log_history=history,
        proxy_history=proxy.history if proxy is not None else [],
    )


def _restore_checkpoint_adapter(model, checkpoint_dir: Path, step: int | None) -> None:
    """Load the adapter weights of checkpoint-<step> (the last evaluation below the forgetting bound). Nothing is
    restored when that checkpoint was not kept (save_total_limit) or the step is 0 (no checkpoint exists)."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    weights = checkpoint_dir / f"checkpoint-{step}" / "adapter_model.safetensors"
    if step and weights.is_file():
        set_peft_model_state_dict(model, load_file(str(weights)))


def _remember_first_eval(run_dir: Path, value: float | None) -> None:
    if value is not None:
        RunLayout.of(run_dir).first_eval_loss.write_text(json.dumps({"eval_loss": value}))


def _first_eval_loss(run_dir: Path) -> float | None:
    path = RunLayout.of(run_dir).first_eval_loss
    return json.loads(path.read_text())["eval_loss"] if path.is_file() else None


def loss_curve_png(log_history: list[dict[str, Any]], path: Path) -> Path:
    plt = pyplot()
    train = [(entry["step"], entry["loss"]) for entry in log_history if "loss" in entry]
    evals = [(entry["step"], entry["eval_loss"]) for entry in log_history if "eval_loss" in entry]
    figure, axis = plt.subplots(figsize=(7, 4))
    if train:
        axis.plot(*zip(*train, strict=True), label="train loss")
    if evals:
        axis.plot(*zip(*evals, strict=True), marker="o", label="validation loss")
    axis.set_xlabel("step")
    axis.set_ylabel("loss")
    axis.set_title("QLoRA training")
    axis.legend()
    return save_png(figure, path)
