"""Trainer callbacks: stopping on divergence, metrics to the tracker, the forgetting proxy on general text."""

from __future__ import annotations

import math
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import (
    PreTrainedTokenizerBase,
    TrainerCallback,
)

from tasks.lib.core import threads
from tasks.lib.core.errors import UserError
from tasks.lib.core.failpoints import failpoint
from tasks.lib.training.collators import TokenCountingCollator

MetricsSink = Callable[[Mapping[str, float], int], None]


class TrainingDivergedError(UserError, RuntimeError):
    """The loss or the adapter weights stopped being finite; the last good checkpoint is kept."""


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
