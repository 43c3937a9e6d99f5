"""Did a finished pipeline run end the way the product promises? Used by CI on the demo and by `qlora check-run`.

A run passes when its gates passed, it registered a version, that version's registry round trip was verified,
and the registry's `champion` alias points at it. The step timings come from the run's MLflow step runs.
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from tasks.io.tracking import shown_tracking_uri
from tasks.io.versioning import cpu_name, git_commit
from tasks.lib.config import RunConfig, read_run_config
from tasks.lib.core.run_layout import RunLayout
from tasks.lib.gate.promotion import CHAMPION
from tasks.lib.run.refs import PipelineResult
from tasks.lib.run.run_report import pipeline_markdown


@dataclass
class RunCheck:
    problems: list[str] = field(default_factory=list)
    steps: dict[str, float] = field(default_factory=dict)  # step name -> seconds
    wall_seconds: float | None = None

    @property
    def ok(self) -> bool:
        return not self.problems


def load_run(run_dir: Path) -> tuple[RunConfig, PipelineResult]:
    run_dir = Path(run_dir)
    config = read_run_config(run_dir)
    result = PipelineResult.model_validate_json(RunLayout.of(run_dir).result_file.read_text())
    return config, result


def outcome_problems(result: PipelineResult) -> list[str]:
    """What keeps this run from being a verified, registered champion (pure: reads the result only)."""
    problems = []
    if result.forgetting is None:
        problems.append("the run has no gate result (it did not get past evaluation)")
    elif not result.forgetting.passed:
        verdict = result.forgetting.gate.verdict
        problems.append(f"the gate did not pass (verdict: {verdict})")
    registration = result.registration
    if registration is None or not registration.registered:
        problems.append(f"nothing registered ({registration.reason if registration else 'no registration step'})")
    else:
        if CHAMPION not in registration.aliases:
            problems.append(f"v{registration.version} did not become champion ({registration.reason})")
        if not registration.round_trip:
            problems.append(f"v{registration.version}'s registry round trip was not verified")
    return problems


def check_run(run_dir: Path) -> RunCheck:
    """Outcome checks plus the registry's own view and the step timings from MLflow."""
    from tasks.io.registry import champion
    from tasks.io.tracking import child_runs, configure_mlflow, get_run

    config, result = load_run(run_dir)
    check = RunCheck(problems=outcome_problems(result))
    configure_mlflow(config.tracking.uri, config.tracking.experiment, config.tracking.artifact_location)
    if result.registration and result.registration.registered:
        current = champion(result.registration.model_name)
        version, tags = current if current else (None, {})
        if str(version) != str(result.registration.version):
            check.problems.append(f"the registry's champion is v{version}, not v{result.registration.version}")
        if tags.get("round_trip") != "verified":
            check.problems.append(f"the champion v{version} is not tagged round_trip=verified")
    parent = get_run(result.mlflow_run_id)
    check.wall_seconds = parent.seconds
    for child in child_runs(parent.experiment_id, parent.run_id):
        if child.seconds is not None:
            check.steps[child.name] = child.seconds
    return check


def machine_description() -> str:
    return f"{cpu_name()}, {os.cpu_count()} cores, {platform.system()} {platform.release()}"


def run_report(run_dir: Path, check: RunCheck) -> str:
    """The committed demo report: provenance, timings and the run's own pipeline report."""
    config, result = load_run(run_dir)
    lines = [
        f"# Demo run report: `{config.name}` run `{result.run_id}`",
        "",
        f"- written {datetime.now(UTC):%Y-%m-%d %H:%M UTC} from `{run_dir}` by `make demo-report`",
        f"- commit `{git_commit()}`; machine: {machine_description()}",
        f"- outcome: {'registered, verified champion' if check.ok else '; '.join(check.problems)}",
        f"- wall time: {check.wall_seconds:.0f} s" if check.wall_seconds else "- wall time: unknown",
        "",
        "| step | seconds |",
        "|---|---|",
        *[f"| {name} | {seconds:.0f} |" for name, seconds in check.steps.items()],
        "",
        pipeline_markdown(config, result, shown_tracking_uri(config.tracking.uri)).replace(
            "# QLoRA pipeline", "## QLoRA pipeline", 1
        ),
    ]
    return "\n".join(lines) + "\n"
