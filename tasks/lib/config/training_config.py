"""Config sections for training: the trainer, the sweep, the Ray cluster and the machine's resources."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from tasks.lib.config.section import Section


class ForgettingProxyConfig(Section):
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


class TrainConfig(Section):
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


class SweepParameter(Section):
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


class SweepConfig(Section):
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


class RayConfig(Section):
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


class ResourcesConfig(Section):
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
