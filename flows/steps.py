"""Re-run one step of an existing pipeline run (`qlora evaluate|merge|forgetting|register RUN_DIR`).

Each verb calls the same step function the flow's Prefect task calls, on the run's own config and the results
of the steps before it (their markers in `RUN_DIR/steps/`), logs a new nested MLflow run under the run's parent,
and replaces the step's marker and outputs. Nothing downstream is re-run: a re-merged model is not re-scored
until `qlora forgetting` is run too.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel

from tasks.common import completed_step, mark_completed
from tasks.lib.config import ConfigError, RunConfig, apply_overrides, config_from_dict, read_run_config
from tasks.lib.core.run_layout import RunLayout
from tasks.lib.run.refs import (
    DataRef,
    ForgettingRef,
    MergeRef,
    PipelineResult,
    RegistrationRef,
    RunContext,
    TaskEvalRef,
    TrainRef,
)


@dataclass(frozen=True)
class Step:
    """One step of the pipeline: the name its marker, MLflow step run and CLI verb carry, its typed result, the
    steps whose results it reads, and (for the steps that can be re-run alone) the verb's help."""

    name: str
    result: type[BaseModel]
    needs: tuple[str, ...] = ()
    rerun_help: str | None = None


# The pipeline's steps in the order the flow runs them (flows/finetune.py); the one-step re-runs, the CLI verbs
# and the step markers read this table.
PIPELINE = (
    Step("train", TrainRef),
    Step("evaluate", TaskEvalRef, ("train",), "re-run a run's target-task evaluation (base and tuned, same items)"),
    Step("merge", MergeRef, ("train",), "re-run a run's merge and its check"),
    Step(
        "forgetting", ForgettingRef, ("evaluate",), "re-run a run's forgetting benchmarks and gate on its merged model"
    ),
    Step(
        "register",
        RegistrationRef,
        ("train", "evaluate", "merge", "forgetting"),
        "re-run registration (a run that already registered gets its version back)",
    ),
)
STEP = {step.name: step for step in PIPELINE}
RERUNNABLE = [step for step in PIPELINE if step.rerun_help]


def open_run(run_dir: Path, overrides: list[str] = ()) -> tuple[RunConfig, RunContext]:
    """The run's own config (with `overrides` on top) and its context."""
    from tasks.io.tracking import configure_mlflow

    run_dir = Path(run_dir)
    layout = RunLayout.of(run_dir)
    if not layout.mlflow_marker.is_file():
        raise ConfigError(f"{run_dir} is not a pipeline run directory (no mlflow_run.json)")
    config = read_run_config(run_dir)
    if overrides:
        config = config_from_dict(apply_overrides(config.model_dump(mode="json"), list(overrides)), str(run_dir))
    experiment_id = configure_mlflow(config.tracking.uri, config.tracking.experiment, config.tracking.artifact_location)
    parent = json.loads(layout.mlflow_marker.read_text())["parent_run_id"]
    return config, RunContext(
        run_id=run_dir.name, run_dir=str(run_dir), experiment_id=experiment_id, parent_run_id=parent
    )


def _ref(context: RunContext, step: str):
    ref = completed_step(context, step, STEP[step].result)
    if ref is None:
        raise ConfigError(f"{context.run_dir}: step {step!r} has not completed in this run; run it first")
    return ref


def rerun_step(step: str, run_dir: Path, overrides: list[str] = ()) -> BaseModel:
    """Run `step` again on an existing run directory and record its new result; `overrides` change the run's config
    for this step only (a sweep registers its best trial with `registry.enabled=true`)."""
    from tasks.data import run_prepare
    from tasks.evaluate import run_target_eval
    from tasks.forgetting import run_forgetting_check
    from tasks.merge import run_merge
    from tasks.register import run_registration

    config, context = open_run(run_dir, overrides)
    done = {needed: _ref(context, needed) for needed in STEP[step].needs}
    data: DataRef = run_prepare(config)
    rerun: dict[str, Callable[[], BaseModel]] = {
        "evaluate": lambda: run_target_eval(config, context, data, done["train"]),
        "merge": lambda: run_merge(config, context, data, done["train"]),
        # A run whose task row failed has no merge: the forgetting check then scores the base alone.
        "forgetting": lambda: run_forgetting_check(
            config, context, completed_step(context, "merge", MergeRef), done["evaluate"]
        ),
        "register": lambda: run_registration(
            config,
            context,
            data,
            PipelineResult(
                run_id=context.run_id,
                run_dir=context.run_dir,
                mlflow_run_id=context.parent_run_id,
                data=data,
                train=done["train"],
                evaluation=done["evaluate"],
                merge=done["merge"],
                forgetting=done["forgetting"],
            ),
        ),
    }
    return mark_completed(context, step, rerun[step]())
