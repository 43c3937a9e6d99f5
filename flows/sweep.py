"""`qlora sweep CONFIG`: a gate-aware hyperparameter search in which every trial is a whole pipeline run.

Optuna (TPE or grid; its study in a real database) proposes the values; each trial is a flow run of the
`qlora-sweep-trial` deployment on a Prefect **process work pool**, so every worker (`prefect worker start --pool
qlora-sweep`, one per machine or GPU) runs trials in parallel. The objective is the trial's best validation loss
(selection data), feasible only when the forgetting gate passed; the test items are never used to choose. Trials
register nothing; the best gate-passing trial then goes through the normal registry rules (champion comparison on
the test items, one look for the whole sweep, lock, round trip). MLflow holds a sweep run with every
trial's pipeline run nested under it, the trials table and the Pareto plot; the same table is a Prefect artifact.
"""

from __future__ import annotations

import math
import secrets
import tempfile
import time
from pathlib import Path

import optuna
from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.client.orchestration import get_client
from prefect.deployments import run_deployment

from flows.serve import deploy_to_pool
from tasks.io.tracking import MlflowTracker, close_run, configure_mlflow, create_run, newest_run
from tasks.lib.config import ConfigError, RunConfig, load_config
from tasks.lib.run.preflight import check_inputs
from tasks.lib.training.search_space import (
    SweepResult,
    TrialOutcome,
    best_feasible,
    grid_space,
    outcome_from_metrics,
    overrides_for,
    pareto_plot,
    suggest,
    trials_markdown,
)
from tasks.pipeline_run import artifact_key

TRIAL_DEPLOYMENT = "qlora-sweep-trial"
POLL_SECONDS = 5


def deploy_trials(config: RunConfig) -> str:
    """The trial deployment on the sweep's work pool; returns its full name."""
    return deploy_to_pool(
        TRIAL_DEPLOYMENT,
        config.sweep.work_pool,
        config.sweep.source,
        tags=["qlora", "sweep", config.name],
        description="One trial of a qlora sweep: a whole pipeline run with the trial's overrides.",
    )


class AskTellGridSampler(optuna.samplers.GridSampler):
    """Optuna's grid sampler, minus its habit of calling study.stop() once the grid is used up: Optuna allows
    that only inside study.optimize(), and the sweep asks and tells itself (it stops after sweep.trials)."""

    def after_trial(self, study, trial, state, values) -> None:
        return None


def open_study(config: RunConfig) -> optuna.Study:
    spec = config.sweep
    storage = spec.storage or f"sqlite:///{(config.runs_dir() / 'optuna.db').resolve()}"
    config.runs_dir().mkdir(parents=True, exist_ok=True)
    if spec.sampler == "grid":
        sampler = AskTellGridSampler(grid_space(spec.parameters), seed=config.seed)
    else:
        # Infeasible trials (gate not passed) inform TPE without being chosen: constraint <= 0 is feasible.
        sampler = optuna.samplers.TPESampler(
            seed=config.seed, constraints_func=lambda trial: trial.user_attrs.get("constraints", (1.0,))
        )
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.create_study(
        study_name=f"{config.name}-sweep", storage=storage, sampler=sampler, direction="minimize", load_if_exists=True
    )


def _read_outcome(experiment_id: str, outcome: TrialOutcome) -> TrialOutcome:
    run = newest_run(experiment_id, {"pipeline": "qlora", "run_id": outcome.run_id})
    if run is None:
        outcome.state = "failed"
        outcome.notes.append("no MLflow run (the flow run failed before training)")
        return outcome
    outcome.mlflow_run_id = run.run_id
    return outcome_from_metrics(outcome, run.metrics, run.tags)


def _finish(study: optuna.Study, trial: optuna.Trial, outcome: TrialOutcome) -> None:
    if outcome.state != "completed" or outcome.validation_loss is None:
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        return
    trial.set_user_attr("constraints", (0.0,) if outcome.gate_passed else (1.0,))
    for key, value in (("run_id", outcome.run_id), ("gate", outcome.verdict)):
        trial.set_user_attr(key, value)
    study.tell(trial, outcome.validation_loss)


def _trial_budget(spec) -> int:
    """`sweep.trials`, or fewer when a grid has fewer points."""
    if spec.sampler == "grid":
        return min(spec.trials, math.prod(len(choices) for choices in grid_space(spec.parameters).values()))
    return spec.trials


def _submit_trial(
    study: optuna.Study, config: RunConfig, config_path: str, overrides: list[str], deployment: str, sweep_run: str
) -> tuple[optuna.Trial, TrialOutcome, str]:
    """Ask Optuna for the next values and start their pipeline run on the work pool (registry off); returns the
    trial, its pending outcome and the flow run's id."""
    trial = study.ask()
    values = suggest(trial, config.sweep.parameters)
    outcome = TrialOutcome(trial.number, values, f"sweep-t{trial.number:03d}-{secrets.token_hex(2)}")
    outcome.run_dir = str(config.runs_dir() / outcome.run_id)
    flow_run = run_deployment(
        name=deployment,
        parameters={
            "config_path": config_path,
            "overrides": [*overrides, *overrides_for(values), "registry.enabled=false"],
            "run_id": outcome.run_id,
            "mlflow_parent_run_id": sweep_run,
        },
        timeout=0,
        tags=["sweep", f"trial-{trial.number}"],
    )
    get_run_logger().info("trial #%d %s -> flow run %s", trial.number, values, flow_run.name)
    return trial, outcome, flow_run.id


def _collect_finished(study: optuna.Study, in_flight: dict, experiment_id: str, timeout_s: float) -> None:
    """Tell Optuna the outcome of every trial whose flow run ended (or ran past `timeout_s`); drop it from
    `in_flight` (flow run id -> (trial, outcome, started))."""
    with get_client(sync_client=True) as prefect:
        for flow_run_id, (trial, outcome, started) in list(in_flight.items()):
            state = prefect.read_flow_run(flow_run_id).state
            timed_out = time.monotonic() - started > timeout_s
            if not (state is not None and state.is_final()) and not timed_out:
                continue
            del in_flight[flow_run_id]
            _read_outcome(experiment_id, outcome)
            if timed_out:
                outcome.state = "failed"
                outcome.notes.append(f"still running after {timeout_s} s")
            _finish(study, trial, outcome)
            get_run_logger().info(
                "trial #%d %s: validation loss %s, gate %s",
                trial.number,
                outcome.state,
                outcome.validation_loss,
                outcome.verdict,
            )


def _register_best(best: TrialOutcome | None, tracker: MlflowTracker) -> str:
    """The best gate-passing trial through the normal registry rules; what happened, in words."""
    from flows.steps import rerun_step

    if best is None:
        return "No trial passed the gate: nothing registered."
    ref = rerun_step("register", Path(best.run_dir), ["registry.enabled=true"])
    tracker.set_tags({"best_run_id": best.run_id})
    best_metrics = {"best.validation_loss": best.validation_loss, "best.task_gain": best.task_gain}
    tracker.log_metrics({key: value for key, value in best_metrics.items() if value is not None})
    if ref.registered:
        return f"Registered as {ref.model_name} v{ref.version} (aliases {ref.aliases})."
    return f"Not registered: {ref.reason}."


def _report(config: RunConfig, tracker: MlflowTracker, outcomes: list[TrialOutcome], best, registration: str) -> None:
    """The trials table and Pareto plot on the sweep's MLflow run, the table as a Prefect artifact."""
    markdown = trials_markdown(outcomes, best, registration)
    with tempfile.TemporaryDirectory() as folder:
        table = Path(folder) / "sweep_trials.md"
        table.write_text(markdown)
        tracker.log_artifact(table)
        tracker.log_artifact(pareto_plot(outcomes, Path(folder) / "sweep_pareto.png"))
    tracker.log_metrics({"trials.feasible": sum(outcome.feasible for outcome in outcomes)})
    create_markdown_artifact(markdown, key=artifact_key(f"{config.name}-sweep"), description="qlora sweep")


@flow(name="qlora-sweep")
def sweep(config_path: str = "configs/demo.yaml", overrides: list[str] | None = None) -> SweepResult:
    """Run `sweep.trials` pipeline trials on the work pool and register the best gate-passing one."""
    overrides = list(overrides or [])
    config = load_config(config_path, overrides)
    if config.sweep is None:
        raise ConfigError(f"{config_path} has no sweep section: say what to search (see docs/sweeps.md)")
    check_inputs(config)
    spec = config.sweep
    deployment = deploy_trials(config)
    study = open_study(config)
    experiment_id = configure_mlflow(config.tracking.uri, config.tracking.experiment, config.tracking.artifact_location)
    tags = {"pipeline": "qlora-sweep", "config_name": config.name, "study": study.study_name}
    sweep_run = create_run(experiment_id, f"{config.name}-sweep-{secrets.token_hex(2)}", tags)
    tracker = MlflowTracker(sweep_run)
    tracker.log_params({"sweep": spec.model_dump_json()})

    outcomes: list[TrialOutcome] = []
    in_flight: dict = {}  # flow run id -> (trial, outcome, started)
    budget = _trial_budget(spec)
    while len(outcomes) < budget or in_flight:
        while len(outcomes) < budget and len(in_flight) < spec.parallel:
            trial, outcome, flow_run_id = _submit_trial(study, config, config_path, overrides, deployment, sweep_run)
            in_flight[flow_run_id] = (trial, outcome, time.monotonic())
            outcomes.append(outcome)
        time.sleep(POLL_SECONDS)
        _collect_finished(study, in_flight, experiment_id, spec.trial_timeout_s)

    best = best_feasible(outcomes)
    registration = _register_best(best, tracker)
    _report(config, tracker, outcomes, best, registration)
    close_run(sweep_run)
    get_run_logger().info("%s", registration)
    best_run_id = best.run_id if best else None
    return SweepResult(sweep_run_id=sweep_run, best_run_id=best_run_id, registration=registration, trials=outcomes)
