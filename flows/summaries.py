"""What the CLI's verbs print: plain-text summaries of their typed results, one function per verb."""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path
from typing import Any


def _mlflow_ui_hints(experiment_id: str, run_id: str, tracking: str | None) -> list[str]:
    """Where the run shows in MLflow's UI: the run's own store (the config's), not whatever `make up` serves. The
    experiment's runs table is asked for as MLflow 3's "Machine learning" view: its UI chooses the view from this
    query parameter (else the browser's last choice, GenAI at first), not from the experiment's kind tag."""
    from tasks.io.tracking import shown_tracking_uri

    uri = shown_tracking_uri(tracking)
    if uri.startswith("http"):
        experiment, view = f"{uri.rstrip('/')}/#/experiments/{experiment_id}", "?workflowType=machine_learning"
        return [f"MLflow UI:      {experiment}/runs/{run_id}{view}", f"MLflow runs:    {experiment}{view}"]
    local = f"`mlflow ui --backend-store-uri {uri}` (or `make up`), then open http://127.0.0.1:5000 (run {run_id})"
    return [f"MLflow UI:      {local}"]


def qlora_program() -> str:
    """This environment's `qlora` as the user can type it where they are: relative below the current directory
    (`.venv/bin/qlora` in the project), else absolute; plain `qlora` when the environment has no such script."""
    program = Path(sys.executable).with_name("qlora")
    if not program.is_file():
        return "qlora"
    try:
        return str(program.relative_to(Path.cwd()))
    except ValueError:
        return str(program)


def resume_command(config_path: str, overrides: list[str], run_id: str) -> str:
    """The command that resumes a run as it was started: its config, every --set override, its run id."""
    sets = [part for override in overrides for part in ("--set", override)]
    return shlex.join([qlora_program(), "run", config_path, *sets, "--run-id", run_id])


def run_summary(result: Any, tracking: str | None = None) -> str:
    """A finished `qlora run`: the task, every gate row, the registry (its aliases as they are now), and where to
    look in the UIs; `tracking`: the config's tracking URI."""
    lines = ["", "=== qlora pipeline finished ==="]
    if result.skipped:
        return "\n".join([*lines, f"skipped: {result.reason}"])
    lines.append(f"run directory:  {result.run_dir}")
    if result.evaluation:
        ev, metric = result.evaluation, result.evaluation.primary_metric
        lines.append(f"target task:    {metric} base {ev.base[metric]:.3f} -> tuned {ev.tuned[metric]:.3f}")
    if result.forgetting:
        gate = result.forgetting.gate
        passed = "passed" if result.forgetting.passed else "not passed"
        lines.append(f"gate:           {gate.verdict.upper()} ({passed})")
        lines += [f"  {row.name:<12} {row.verdict:<12} {row.reason}" for row in [*gate.rows, gate.task]]
    if result.registration:
        reg = result.registration
        where = "nothing registered"
        if reg.registered:
            from tasks.io.registry import current_aliases

            now = current_aliases(reg.model_name, str(reg.version), tracking)
            held = f"aliases now {now}" if now is not None else f"aliases when registered {reg.aliases}"
            where = f"{reg.model_name} v{reg.version} {held}"
        lines.append(f"registry:       {where} ({reg.reason})")
    prefect_url = os.environ.get("PREFECT_API_URL", "").removesuffix("/api")
    if prefect_url:
        lines.append(f"Prefect UI:     {prefect_url}/runs/flow-run/{result.prefect_flow_run_id}")
    else:
        lines.append("Prefect UI:     ran on a temporary server; `make up` keeps the history and serves the UI")
    lines += _mlflow_ui_hints(result.mlflow_experiment_id, result.mlflow_run_id, tracking)
    return "\n".join(lines)


def sweep_summary(result: Any) -> str:
    lines = ["", "=== qlora sweep finished ==="]
    for trial in result.trials:
        gain = "-" if trial.task_gain is None else f"{trial.task_gain:+.1f} pts"
        gate = "gate passed" if trial.gate_passed else f"gate not passed ({trial.state})"
        lines.append(f"  #{trial.number:<3} {trial.values}  task {gain}, {gate}  [{trial.run_id}]")
    return "\n".join([*lines, result.registration])


def check_summary(run_dir: Path, check: Any) -> str:
    lines = [f"run {run_dir}: " + ("registered, verified champion" if check.ok else "NOT a verified champion")]
    lines += [f"  - {problem}" for problem in check.problems]
    if check.wall_seconds is not None:
        steps = ", ".join(f"{name} {seconds:.0f} s" for name, seconds in check.steps.items())
        lines.append(f"wall time {check.wall_seconds:.0f} s; steps: {steps}")
    return "\n".join(lines)


def _cache_state(cached: bool, cache_dir: str) -> str:
    return "already cached" if cached else f"scored and cached in {cache_dir}"


def base_task_summary(result: Any, cached: bool, cache_dir: str) -> str:
    metrics = ", ".join(f"{name} {value:.4f}" for name, value in result.metrics.items())
    return f"base model answers on {result.n_items} test items {_cache_state(cached, cache_dir)}: {metrics}"


def base_scores_summary(scores: dict[str, Any], cached: bool, cache_dir: str) -> str:
    counts = ", ".join(f"{name} n={int(row.n)}" for name, row in scores.items())
    return f"base model benchmark results {_cache_state(cached, cache_dir)}: {counts}"


def benchmarks_table(rows: list[Any]) -> str:
    lines = [f"{'benchmark':<15} {'metric':<16} {'items':>6}  data"]
    lines += [f"{row.name:<15} {row.metric:<16} {row.items or '':>6}  {row.status}" for row in rows]
    lines.append(
        "\nAlso: any lm-eval task name (its data from the hub); your own: forgetting.custom (docs/benchmarks.md)."
    )
    return "\n".join(lines)


def stack_started(urls: dict[str, str]) -> str:
    return (
        f"Prefect UI: {urls['prefect_ui']}\nMLflow UI:  {urls['mlflow']}\nlogs: .stack/*.log\n"
        f"export PREFECT_API_URL={urls['prefect_api']} MLFLOW_TRACKING_URI={urls['mlflow']}"
    )


def stack_status(report: dict[str, dict]) -> str:
    lines = []
    for name, entry in report.items():
        state = f"running (pid {entry['pid']})" if entry["running"] else "stopped"
        if "url" in entry:
            state += f", {entry['url']} {'answers' if entry['healthy'] else 'does not answer'}"
        lines.append(f"{name:<8} {state}" + (f"\n         {entry['problem']}" if "problem" in entry else ""))
    return "\n".join(lines)
