"""The small typed results steps hand to each other: paths, hashes and metrics, never models."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from tasks.lib.gate.gate_result import GateResult, GateRow
from tasks.lib.modeling.merge_check import MergeCheck


class RunContext(BaseModel):
    """Where one pipeline run writes, and the MLflow run every step nests under."""

    run_id: str
    run_dir: str
    experiment_id: str
    parent_run_id: str


class DataRef(BaseModel):
    processed_dir: str
    fingerprint: str
    raw_version: str
    stats: dict[str, Any]
    reused: bool


class TrainRef(BaseModel):
    adapter_dir: str
    mlflow_run_id: str
    global_step: int
    resumed_from_step: int | None
    first_eval_loss: float | None
    best_eval_loss: float | None
    trainable_params: int
    tokens_per_second: float
    adapter_model_id: str = ""  # the MLflow logged model of the adapter


class TaskEvalRef(BaseModel):
    base: dict[str, float]
    tuned: dict[str, float]
    primary_metric: str
    n_items: int
    markdown: str
    mlflow_run_id: str
    item_ids: list[str] = Field(default_factory=list)  # the test items, in order
    test_fingerprint: str = ""  # identifies those items (ids and conversations): champion comparisons pair on it
    base_correct: list[bool] = Field(default_factory=list)  # per item: the answer is the reference
    tuned_correct: list[bool] = Field(default_factory=list)
    base_scores: list[float] = Field(default_factory=list)  # per item, the primary metric: the paired task test
    tuned_scores: list[float] = Field(default_factory=list)
    task: GateRow  # the gate's task row, decided once by the evaluation: tuned against base on these items
    base_cached: bool = False  # the base's answers came from the base-score cache (`qlora score-base`)

    def paired_scores(self) -> tuple[list[float], list[float]]:
        """(base, tuned) per-item results the task row and promotion compare (right/wrong from older runs)."""
        if self.base_scores and self.tuned_scores:
            return self.base_scores, self.tuned_scores
        return [float(c) for c in self.base_correct], [float(c) for c in self.tuned_correct]


class ForgettingRef(BaseModel):
    gate: GateResult
    markdown: str
    base_scores_cached: bool
    mlflow_run_id: str

    @property
    def passed(self) -> bool:
        return self.gate.passed


class MergeRef(BaseModel):
    merged_dir: str
    strategy: str
    fidelity: MergeCheck
    mlflow_run_id: str


class RegistrationRef(BaseModel):
    registered: bool
    model_name: str
    version: str | None
    aliases: list[str]
    reason: str
    round_trip: dict[str, float] | None = None  # the registered version against the merged model


class PipelineResult(BaseModel):
    run_id: str
    run_dir: str
    mlflow_run_id: str
    mlflow_experiment_id: str = ""
    prefect_flow_run_id: str = ""
    skipped: bool = False
    reason: str = ""
    data: DataRef | None = None
    train: TrainRef | None = None
    evaluation: TaskEvalRef | None = None
    forgetting: ForgettingRef | None = None
    merge: MergeRef | None = None
    registration: RegistrationRef | None = None
