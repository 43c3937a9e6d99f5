"""QLoRA training with the HF Trainer: packing without cross-contamination, validation loss, early
stopping, checkpoints, resume from the latest checkpoint, and a guard against diverging runs."""

from __future__ import annotations

import importlib.util
import inspect
import json
import math
import os
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from peft import get_peft_model, prepare_model_for_kbit_training
from transformers import (
    DataCollatorForSeq2Seq,
    DataCollatorWithFlattening,
    EarlyStoppingCallback,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)
from transformers.trainer import TRAINER_STATE_NAME

from tasks.lib import threads
from tasks.lib.config import RunConfig
from tasks.lib.data_formats import read_jsonl
from tasks.lib.errors import UserError
from tasks.lib.failpoints import failpoint
from tasks.lib.lora_dropout import use_cheap_lora_dropout
from tasks.lib.modeling import peft_lora_config, pin_cpu_4bit_kernel, resolve_compute_dtype
from tasks.lib.packed_attention import NAME as PACKED_ATTENTION
from tasks.lib.packed_attention import resolve_attention, set_attention
from tasks.lib.plots import pyplot, save_png
from tasks.lib.prepare import IGNORE_INDEX
from tasks.lib.run_layout import RunLayout

MetricsSink = Callable[[Mapping[str, float], int], None]


class TrainingDivergedError(UserError, RuntimeError):
    """The loss or the adapter weights stopped being finite; the last good checkpoint is kept."""


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


class TokenCountingCollator:
    """Wraps a collator and counts the real (non-padding) tokens it hands to the model."""

    def __init__(self, inner: Callable, pad_token_id: int):
        self.inner = inner
        self.pad_token_id = pad_token_id
        self.real_tokens = 0

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        self.real_tokens += sum(len(feature["input_ids"]) for feature in features)
        return self.inner(features)


class AnswerLogitsOnly:
    """Wraps the packing collator so the LM head runs only where a label is predicted.

    Prompt tokens carry no labels, yet the model would project every position onto the vocabulary
    (49k entries for SmolLM2: about a fifth of a training step's compute) only for the loss to ignore
    them. `logits_to_keep` (the positions that predict a label) and `shift_labels` (those labels) give
    the same loss and the same gradients without that work. Packed batches hold a single row.
    """

    def __init__(self, inner: Callable):
        self.inner = inner

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch = self.inner(features)
        shifted = torch.nn.functional.pad(batch["labels"], (0, 1), value=-100)[..., 1:]
        positions = (shifted[0] != -100).nonzero().squeeze(-1)
        batch["logits_to_keep"] = positions
        batch["shift_labels"] = shifted[:, positions]
        return batch


def shared_prompt_prefix(rows_ids: Sequence[Sequence[int]], rows_labels: Sequence[Sequence[int]]) -> int:
    """How many leading tokens every row shares while nothing is learned from them: position j's prediction
    (token j + 1) is unlabelled in every row, so computing positions < the result once serves all rows."""
    if len(rows_ids) < 2:
        return 0
    first, limit, shared = rows_ids[0], min(len(ids) for ids in rows_ids) - 1, 0
    while (
        shared < limit
        and all(ids[shared] == first[shared] for ids in rows_ids)
        and all(labels[shared + 1] == IGNORE_INDEX for labels in rows_labels)
    ):
        shared += 1
    return shared


class SharedPrefixFlattening:
    """Packs a batch into one row that holds the prompt prefix its rows share once, then each row's remainder.

    A remainder's position ids continue from the prefix length, and packed_sdpa (tasks/lib/packed_attention.py)
    lets it attend to the prefix and to itself: every row's logits, loss and gradients are those of the row
    alone, for fewer tokens. On the SST-2 demo the system turn and the instruction, 39 of a row's 59 tokens, are
    computed once per batch of 8 instead of 8 times. Needs packed_sdpa: other attention kernels would not let a
    remainder see the prefix.
    """

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        rows_ids = [list(feature["input_ids"]) for feature in features]
        rows_labels = [list(feature["labels"]) for feature in features]
        shared = shared_prompt_prefix(rows_ids, rows_labels)
        input_ids, labels, positions = rows_ids[0][:shared], [IGNORE_INDEX] * shared, list(range(shared))
        for ids, row_labels in zip(rows_ids, rows_labels, strict=True):
            input_ids += ids[shared:]
            labels += [IGNORE_INDEX, *row_labels[shared + 1 :]]  # a row's first token is never predicted here
            positions += range(shared, len(ids))
        return {
            "input_ids": torch.tensor([input_ids]),
            "labels": torch.tensor([labels]),
            "position_ids": torch.tensor([positions]),
        }


def build_collator(
    tokenizer: PreTrainedTokenizerBase, packing: bool, answer_logits_only: bool = False, share_prefix: bool = False
) -> Callable:
    if packing:
        # One row per batch with position_ids restarting per example: transformers derives a
        # block-diagonal mask from them, so attention never crosses examples and nothing is padded.
        flattening = (
            SharedPrefixFlattening()
            if share_prefix
            else DataCollatorWithFlattening(return_position_ids=True, separator_id=IGNORE_INDEX)
        )
        return AnswerLogitsOnly(flattening) if answer_logits_only else flattening
    return DataCollatorForSeq2Seq(tokenizer, padding="longest", label_pad_token_id=-100, pad_to_multiple_of=None)


def supports_answer_logits_only(model: PreTrainedModel, config: RunConfig) -> bool:
    """Built-in transformers causal LMs take `logits_to_keep` and a `shift_labels` loss argument."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return not config.model.trust_remote_code and "logits_to_keep" in inspect.signature(base.forward).parameters


def _all_finite(tensors: list[torch.Tensor]) -> bool:
    """Whether every value is finite, with one device-to-host transfer: the sum of a non-finite tensor is not
    finite, and the stacked per-tensor sums are checked at once."""
    if not tensors:
        return True
    return bool(torch.isfinite(torch.stack([t.float().sum() for t in tensors])).all())


class DivergenceGuard(TrainerCallback):
    """Stops before a non-finite step can be saved: checks the trainable weights after every
    optimizer step (LoRA weights are few, so this is cheap) and every logged loss."""

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        # Weights can blow up to huge but finite values in one step and be checkpointed; the loss they give
        # shows up in the next step's gradients. Non-finite gradients therefore condemn the weights of step
        # `state.global_step`: their checkpoint, if one was written, is removed so it is neither reported as
        # good nor resumed from. (fp16 loss scaling makes inf gradients routine: its scaler skips those steps.)
        if args.fp16:
            return
        grads = [(name, p.grad) for name, p in model.named_parameters() if p.requires_grad and p.grad is not None]
        if _all_finite([grad for _, grad in grads]):  # one host sync per step; names are only looked up on failure
            return
        for name, grad in grads:
            if not torch.isfinite(grad).all():
                suspect = Path(args.output_dir) / f"checkpoint-{state.global_step}"
                if suspect.is_dir():
                    shutil.rmtree(suspect)
                raise TrainingDivergedError(
                    f"gradient of {name} became NaN/inf at step {state.global_step + 1}; training stopped. "
                    f"The last good checkpoint is kept in {args.output_dir}. Lower train.learning_rate."
                )

    def on_step_end(self, args, state, control, model=None, **kwargs):
        trainable = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
        if _all_finite([p.detach() for _, p in trainable]):
            return
        for name, parameter in trainable:
            if not torch.isfinite(parameter).all():
                raise TrainingDivergedError(
                    f"adapter weight {name} became NaN/inf at step {state.global_step}; training stopped. "
                    f"The last good checkpoint is kept in {args.output_dir}. Lower train.learning_rate."
                )

    def on_log(self, args, state, control, logs=None, **kwargs):
        for key in ("loss", "grad_norm", "eval_loss"):
            value = (logs or {}).get(key)
            if value is not None and not math.isfinite(value):
                raise TrainingDivergedError(
                    f"{key} became {value} at step {state.global_step}; training stopped. "
                    f"The last good checkpoint is kept in {args.output_dir}. Lower train.learning_rate."
                )


class BetweenSteps(TrainerCallback):
    """torch's CPU threads follow this process's share of the cores (`tasks.lib.threads`) between steps; the kill
    tests' failpoint `train.step-N` fires after step N's checkpoint, if one was due, is written."""

    def on_step_begin(self, args, state, control, **kwargs):
        failpoint(f"train.step-{state.global_step}")
        threads.fit()

    def on_prediction_step(self, args, state, control, **kwargs):
        threads.fit()


class MetricsCallback(TrainerCallback):
    """Forwards Trainer logs (loss, lr, grad norm, eval loss) plus real tokens/s to a metrics sink."""

    def __init__(self, sink: MetricsSink, counter: TokenCountingCollator):
        self.sink = sink
        self.counter = counter
        self._last_time = time.perf_counter()
        self._last_tokens = 0

    def on_log(self, args, state, control, logs=None, **kwargs):
        metrics = {key: float(value) for key, value in (logs or {}).items() if isinstance(value, int | float)}
        if "loss" in metrics:
            now, tokens = time.perf_counter(), self.counter.real_tokens
            if now > self._last_time and tokens > self._last_tokens:
                metrics["tokens_per_second"] = (tokens - self._last_tokens) / (now - self._last_time)
            self._last_time, self._last_tokens = now, tokens
        self.sink(metrics, state.global_step)


def general_text_windows(
    pages: Sequence[str], tokenizer: PreTrainedTokenizerBase, count: int, length: int
) -> torch.Tensor:
    """`count` windows of `length` tokens cut from the start of general-text pages (fixed: same every run)."""
    windows = []
    for page in pages:
        ids = tokenizer(page, add_special_tokens=False)["input_ids"]
        windows.extend(ids[start : start + length] for start in range(0, len(ids) - length + 1, length))
        if len(windows) >= count:
            break
    if not windows:
        raise ValueError(f"no general-text page has {length} tokens for the forgetting proxy")
    return torch.tensor(windows[:count])


class ForgettingProxy(TrainerCallback):
    """At every evaluation, the loss on fixed general-text windows minus the base model's (the adapter disabled):
    the cheap forgetting signal PEFT's method comparison uses. With `max_increase` it stops training once the
    increase passes the bound, remembering the last evaluation step below it."""

    def __init__(self, windows: torch.Tensor, max_increase: float | None, sink: MetricsSink | None):
        self.windows = windows
        self.max_increase = max_increase
        self.sink = sink
        self.base_loss: float | None = None
        self.last_step_below: int | None = None
        self.stopped_at: int | None = None
        self.history: list[dict[str, Any]] = []

    def _loss(self, model) -> float:
        was_training = model.training
        model.eval()
        windows = self.windows.to(model.device)
        with torch.no_grad():
            loss = float(model(input_ids=windows, labels=windows).loss)
        model.train(was_training)
        return loss

    def on_evaluate(self, args, state, control, model=None, **kwargs):
        if self.base_loss is None:
            with model.disable_adapter():
                self.base_loss = self._loss(model)
        increase = self._loss(model) - self.base_loss
        metrics = {"forgetting_proxy.loss_increase": increase, "forgetting_proxy.base_loss": self.base_loss}
        self.history.append({"step": state.global_step, **metrics})
        if self.sink is not None:
            self.sink(metrics, state.global_step)
        if self.max_increase is None or increase <= self.max_increase:
            self.last_step_below = state.global_step
        elif state.global_step > 0:
            control.should_training_stop = True
            self.stopped_at = state.global_step


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
