"""Training throughput and peak memory: the pipeline's own training against a plain QLoRA baseline.

Throughput is in REAL tokens per second: the tokens of the training rows (prompt + answer, i.e. every
attended token), never padding. Every variant trains the same rows in the same order (same processed data,
seed, batch size and number of optimizer steps); the first step is a warm-up and is not timed, and periodic
evaluation and checkpoints are scheduled after the timed steps (this measures training steps only).

Variants, each in its own process so its memory peak is its own:
  baseline        what a user plausibly writes from the PEFT/QLoRA docs: 4-bit NF4 base,
                  `prepare_model_for_kbit_training(model)` (its default turns gradient checkpointing on),
                  the same LoRA adapter, HF Trainer, DataCollatorForSeq2Seq padding to the longest row.
  baseline-no-gc  the same with `use_gradient_checkpointing=False`.
  pipeline        tasks.lib.training.train_adapter exactly as the flow calls it (packing, no padding, the
                  shared prompt prefix computed once per batch, the CPU LoRA dropout, the pipeline's training
                  arguments and callbacks).
The processes take turns step by step (a baton), so the timed steps interleave and never overlap: a busy
neighbour on shared cores slows all variants alike, and step i of every variant sees the same rows.

Also measured: the memory of the base weights, fp32 (plain LoRA) vs 4-bit NF4 (QLoRA).

    python -m benchmarks.train_throughput [--quick] [--steps 20] [--config configs/demo.yaml] [--set k=v]
"""

from __future__ import annotations

import multiprocessing as mp
import statistics
import sys
import tempfile
import time
from pathlib import Path
from queue import Empty
from typing import Any

from benchmarks._common import (
    load_run_config,
    parser,
    peak_memory,
    quiet_libraries,
    ratio,
    reset_peak_memory,
    rss_bytes,
    write_results,
)

VARIANTS = ("baseline", "baseline-no-gc", "pipeline")


class Baton:
    """Round-robin turns between processes: only the holder works, so timed steps never overlap."""

    ABORTED = -1

    def __init__(self, context: Any, parties: int):
        self._turn = context.Value("i", 0, lock=False)
        self._condition = context.Condition()
        self.parties = parties

    def wait(self, me: int, timeout: float = 3600.0) -> None:
        with self._condition:
            if not self._condition.wait_for(lambda: self._turn.value in (me, self.ABORTED), timeout):
                raise TimeoutError(f"no turn for benchmark process {me} within {timeout:.0f}s")
            if self._turn.value == self.ABORTED:
                raise RuntimeError("another benchmark process failed")

    def release(self) -> None:
        with self._condition:
            if self._turn.value != self.ABORTED:
                self._turn.value = (self._turn.value + 1) % self.parties
            self._condition.notify_all()

    def abort(self) -> None:
        with self._condition:
            self._turn.value = self.ABORTED
            self._condition.notify_all()


def _lockstep_timer(baton: Baton, me: int):
    """A Trainer callback timing each step from the moment this process got its turn to the step's end,
    then passing the turn on. The last step keeps the turn: the final eval/save must not overlap others.
    It counts the real tokens of the rows each step's forward receives: attention_mask.sum() for padded batches;
    for a packed row, each example's last position + 1 (its own tokens plus any shared prompt prefix it attends
    to, which the pipeline computes once per batch)."""
    import torch
    from transformers import TrainerCallback

    from tasks.lib.modeling.packed_attention import example_bounds

    class LockstepTimer(TrainerCallback):
        def __init__(self) -> None:
            self.seconds: list[float] = []
            self.tokens: list[int] = []
            self.memory: dict[str, float] = {}
            self.rss_at_start_mib = 0.0
            self.gradient_checkpointing = False
            self._started = 0.0
            self._tokens = 0

        def _count(self, module, args, kwargs) -> None:
            mask, ids, positions = kwargs.get("attention_mask"), kwargs.get("input_ids"), kwargs.get("position_ids")
            if mask is not None or positions is None:
                self._tokens += int(mask.sum()) if mask is not None else ids.numel()
                return
            self._tokens += sum(int(positions[0, end - 1]) + 1 for _, end in example_bounds(positions))

        def on_train_begin(self, args, state, control, model=None, **kwargs):
            self.gradient_checkpointing = bool(getattr(model, "is_gradient_checkpointing", False))
            model.register_forward_pre_hook(self._count, with_kwargs=True)
            reset_peak_memory()
            self.rss_at_start_mib = rss_bytes() / 2**20
            self._started = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.seconds.append(time.perf_counter() - self._started)
            self.tokens.append(self._tokens)
            self._tokens = 0
            if state.global_step >= args.max_steps:
                self.memory = peak_memory()
                return
            baton.release()
            baton.wait(me)
            self._started = time.perf_counter()

    return LockstepTimer()


class CountingCollator:
    """Instrumentation around the baseline's collator: the real and the padded tokens of all it batches."""

    def __init__(self, inner: Any):
        self.inner = inner
        self.real_tokens = 0
        self.padded_tokens = 0

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        self.real_tokens += sum(len(feature["input_ids"]) for feature in features)
        batch = self.inner(features)
        self.padded_tokens += batch["input_ids"].numel()
        return batch


def train_baseline(config: Any, data_dir: Path, out_dir: Path, steps: int, checkpointing: bool, timer: Any) -> dict:
    """The plain recipe, written as a user would (nothing from the pipeline but the config's values)."""
    import torch
    from datasets import load_dataset
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        BitsAndBytesConfig,
        DataCollatorForSeq2Seq,
        Trainer,
        TrainingArguments,
    )

    bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    tokenizer = AutoTokenizer.from_pretrained(config.model.name_or_path)
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(
        config.model.name_or_path,
        quantization_config=BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16 if bf16 else torch.float32,
        ),
        device_map="auto",
    )
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=checkpointing)
    lora = config.lora
    model = get_peft_model(
        model,
        LoraConfig(
            r=lora.r,
            lora_alpha=lora.alpha,
            lora_dropout=lora.dropout,
            target_modules=lora.target_modules,
            task_type="CAUSAL_LM",
        ),
    )
    train_set = load_dataset("json", data_files=str(data_dir / "train.jsonl"), split="train")
    collator = CountingCollator(DataCollatorForSeq2Seq(tokenizer, padding="longest"))
    args = TrainingArguments(
        output_dir=str(out_dir),
        per_device_train_batch_size=config.train.batch_size,
        gradient_accumulation_steps=config.train.gradient_accumulation_steps,
        max_steps=steps,
        learning_rate=config.train.learning_rate,
        lr_scheduler_type=config.train.lr_scheduler,
        logging_steps=config.train.logging_steps,
        save_strategy="no",
        bf16=bf16,
        seed=config.seed,
        data_seed=config.seed,
        report_to="none",
        disable_tqdm=True,
    )
    trainer = Trainer(model=model, args=args, train_dataset=train_set, data_collator=collator, callbacks=[timer])
    trainer.train()
    return {
        "padded_tokens": collator.padded_tokens,
        "real_tokens_total": collator.real_tokens,
    }


def train_pipeline(config: Any, data_dir: Path, out_dir: Path, steps: int, timer: Any) -> dict:
    from tasks.io.models import load_base_model, load_tokenizer
    from tasks.lib.training.trainer import train_adapter

    tokenizer = load_tokenizer(config.model)
    result = train_adapter(
        config,
        lambda: load_base_model(config.model, config.quantization),
        tokenizer,
        data_dir,
        out_dir,
        metrics_sink=lambda metrics, step: None,  # the flow logs these to MLflow
        extra_callbacks=[timer],
    )
    assert result.global_step == steps, result.global_step
    return {"packing": config.train.packing}


def run_variant(
    variant: str, me: int, baton: Baton, queue: Any, config_path: str, overrides: list[str], steps: int, work: str
) -> None:
    quiet_libraries()
    try:
        baton.wait(me)  # set-up takes a turn too: loading a model must not overlap another's timed step
        from tasks.data import run_prepare

        schedule = [f"train.{key}={steps}" for key in ("max_steps", "eval_steps", "save_steps")]
        config = load_run_config(config_path, [*overrides, *schedule, "train.early_stopping_patience=null"])
        data_dir = Path(run_prepare(config).processed_dir)
        timer = _lockstep_timer(baton, me)
        out_dir = Path(work) / variant
        if variant == "pipeline":
            info = train_pipeline(config, data_dir, out_dir, steps, timer)
        else:
            info = train_baseline(config, data_dir, out_dir, steps, variant == "baseline", timer)
        queue.put(
            (
                variant,
                {
                    **info,
                    "step_seconds": timer.seconds,
                    "step_real_tokens": timer.tokens,
                    "rss_at_train_start_mib": timer.rss_at_start_mib,
                    "gradient_checkpointing": timer.gradient_checkpointing,
                    **timer.memory,
                },
            )
        )
        baton.release()
    except BaseException as error:
        baton.abort()
        queue.put((variant, {"error": repr(error)}))
        raise


def summarize(raw: dict[str, Any]) -> dict[str, Any]:
    """Steps after the warm-up: real tokens, seconds, real tokens/s (over all timed steps, and the median
    step's, which a neighbour that stalls a few steps on shared cores does not move)."""
    seconds, tokens = raw["step_seconds"][1:], raw["step_real_tokens"][1:]
    summary = {
        "timed_steps": len(seconds),
        "timed_real_tokens": sum(tokens),
        "timed_seconds": sum(seconds),
        "real_tokens_per_second": ratio(sum(tokens), sum(seconds)),
        "median_step_real_tokens_per_second": statistics.median(map(ratio, tokens, seconds)),
        "seconds_per_step": ratio(sum(seconds), len(seconds)),
    }
    return {**summary, **raw}


def base_weight_memory(config: Any) -> dict[str, float]:
    """get_memory_footprint() of the base model as plain LoRA (fp32) and as QLoRA (4-bit NF4) load it."""
    import gc

    from tasks.io.models import load_base_model

    footprints = {}
    for name, enabled in (("qlora_4bit", True), ("lora_fp32", False)):
        model = load_base_model(config.model, config.quantization.model_copy(update={"enabled": enabled}))
        footprints[f"{name}_mib"] = model.get_memory_footprint() / 2**20
        del model
        gc.collect()
    footprints["ratio"] = footprints["qlora_4bit_mib"] / footprints["lora_fp32_mib"]
    return footprints


def main() -> int:
    quiet_libraries()
    arguments = parser(__doc__.splitlines()[0])
    arguments.add_argument("--steps", type=int, help="timed optimizer steps per variant (default 20; quick: 2)")
    arguments.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated subset of {VARIANTS}")
    args = arguments.parse_args()
    variants = [name for name in args.variants.split(",") if name]
    unknown = set(variants) - set(VARIANTS)
    if unknown or "pipeline" not in variants:
        arguments.error(f"--variants must include pipeline and only name {VARIANTS}")
    steps = (args.steps or (2 if args.quick else 20)) + 1  # + the untimed warm-up step
    overrides = [*args.overrides, *(["train.eval_max_rows=8"] if args.quick else [])]
    config = load_run_config(args.config, overrides)

    context = mp.get_context("spawn")
    baton, queue = Baton(context, len(variants)), context.Queue()
    raw: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="qlora-bench-train-") as work:
        processes = [
            context.Process(target=run_variant, args=(name, index, baton, queue, args.config, overrides, steps, work))
            for index, name in enumerate(variants)
        ]
        for process in processes:
            process.start()
        while len(raw) < len(processes):
            try:
                name, result = queue.get(timeout=10)
                raw[name] = result
            except Empty:
                dead = [name for name, process in zip(variants, processes, strict=True) if process.exitcode]
                if dead and queue.empty():  # killed without a word (out of memory?): stop the others too
                    baton.abort()
                    raw.update({name: {"error": "process died"} for name in dead if name not in raw})
                    break
        for process in processes:
            process.join()
    failed = {name: result["error"] for name, result in raw.items() if "error" in result}
    if failed:
        print(f"failed: {failed}", file=sys.stderr)
        return 1

    results = {name: summarize(raw[name]) for name in variants}
    same_rows = len({tuple(result["step_real_tokens"]) for result in results.values()}) == 1
    pipeline = results["pipeline"]
    speedups = {}
    for name in variants:
        if name != "pipeline":
            paired = [
                b / p for b, p in zip(results[name]["step_seconds"][1:], pipeline["step_seconds"][1:], strict=True)
            ]
            speedups[name] = {
                "tokens_per_second_ratio": ratio(
                    pipeline["real_tokens_per_second"], results[name]["real_tokens_per_second"]
                ),
                "median_paired_step_ratio": statistics.median(paired),
            }
    weights = base_weight_memory(config)

    rows = config.train.batch_size * config.train.gradient_accumulation_steps
    print(f"\n{steps - 1} timed steps x {rows} rows (+1 warm-up), same rows for every variant: {same_rows}")
    print(
        f"{'variant':16s} {'real tok/s':>10s} {'median':>7s} {'s/step':>7s} {'peak RSS MiB':>12s} {'RSS at start':>12s}"
    )
    for name in variants:
        result = results[name]
        padding = "packed, none"
        if "padded_tokens" in result:
            result["padding_share"] = 1 - ratio(result["real_tokens_total"], result["padded_tokens"])
            padding = f"{result['padding_share']:.1%} of computed tokens"
        print(
            f"{name:16s} {result['real_tokens_per_second']:10.1f} {result['median_step_real_tokens_per_second']:7.1f} "
            f"{result['seconds_per_step']:7.2f} "
            f"{result['peak_rss_mib']:12.0f} {result['rss_at_train_start_mib']:12.0f}  padding: {padding}"
            f"{', gradient checkpointing' if result['gradient_checkpointing'] else ''}"
        )
    for name, speedup in speedups.items():
        print(
            f"pipeline / {name}: {speedup['tokens_per_second_ratio']:.2f}x real tokens/s "
            f"(median of paired steps {speedup['median_paired_step_ratio']:.2f}x)"
        )
    print(
        f"base weights: QLoRA 4-bit {weights['qlora_4bit_mib']:.0f} MiB vs fp32 LoRA {weights['lora_fp32_mib']:.0f} "
        f"MiB = {weights['ratio']:.2f}x"
    )

    vs = ", ".join(
        f"{s['median_paired_step_ratio']:.2f}x vs {name} [{results[name]['median_step_real_tokens_per_second']:.0f}]"
        for name, s in speedups.items()
    )
    markdown = (
        f"**train_throughput** ({config.name}, {steps - 1} steps x {rows} rows, real = non-padding tokens, "
        f"median of paired steps): pipeline {pipeline['median_step_real_tokens_per_second']:.0f} real tok/s "
        f"({vs}); peak RSS "
        + ", ".join(f"{name} {results[name]['peak_rss_mib']:.0f} MiB" for name in variants)
        + f"; base weights QLoRA {weights['qlora_4bit_mib']:.0f} MiB = {weights['ratio']:.2f}x fp32"
    )
    write_results(
        "train_throughput",
        {
            "config": args.config,
            "overrides": overrides,
            "timed_steps": steps - 1,
            "rows_per_step": rows,
            "real_tokens": "input tokens of the rows (prompt + answer), padding excluded",
            "same_rows": same_rows,
            "variants": results,
            "speedup": speedups,
            "base_weights": weights,
        },
        markdown,
        args.quick,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
