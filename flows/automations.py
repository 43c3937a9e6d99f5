"""Prefect's own detection of dead flow runs: every flow run sends heartbeats; one that stops is marked Crashed,
and its MLflow runs are closed.

A SIGKILLed or OOM-killed `qlora run` cannot report its end. The flow engine emits `prefect.flow-run.heartbeat`
every PREFECT_FLOWS_HEARTBEAT_FREQUENCY seconds (180 by default) while a run is alive; the first automation (the
one Prefect documents for "zombie" flow runs) moves a run to CRASHED when a heartbeat is not followed by another
heartbeat or a terminal state within a few heartbeat intervals. The second reacts to a pipeline flow run turning
CRASHED (by that automation, or by a resume) by running the `close_crashed_run` deployment, which closes the
attempt's MLflow runs as KILLED, so nothing of a run nobody resumes stays RUNNING. `qlora serve` (and so
`qlora stack up`) installs both and serves that deployment.
"""

from __future__ import annotations

from datetime import timedelta
from uuid import UUID

from prefect import flow, get_run_logger
from prefect.automations import Automation
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import StateType
from prefect.events.actions import ChangeFlowRunState, RunDeployment
from prefect.events.schemas.automations import EventTrigger, Posture
from prefect.events.schemas.events import ResourceSpecification
from prefect.settings import get_current_settings

from flows.finetune import finetune
from tasks.lib.config import load_config
from tasks.lib.core.errors import UserError
from tasks.pipeline_run import close_crashed_attempt

CRASH_DETECTION = "qlora: mark flow runs without heartbeats as crashed"
CLOSE_CRASHED = "qlora: close a crashed pipeline run's MLflow runs"
CLOSE_CRASHED_DEPLOYMENT = "qlora-close-crashed"
MISSED_HEARTBEATS = 3


def crash_detection(within_seconds: float | None = None) -> Automation:
    frequency = get_current_settings().flows.heartbeat_frequency or 180
    within = within_seconds or frequency * MISSED_HEARTBEATS
    return Automation(
        name=CRASH_DETECTION,
        description=f"A flow run with no heartbeat for {within:.0f} s died without reporting it (kill, OOM).",
        trigger=EventTrigger(
            after={"prefect.flow-run.heartbeat"},
            expect={
                "prefect.flow-run.heartbeat",
                "prefect.flow-run.Completed",
                "prefect.flow-run.Failed",
                "prefect.flow-run.Cancelled",
                "prefect.flow-run.Crashed",
            },
            match=ResourceSpecification({"prefect.resource.id": ["prefect.flow-run.*"]}),
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=timedelta(seconds=within),
        ),
        actions=[
            ChangeFlowRunState(state=StateType.CRASHED, message=f"no heartbeat for {within:.0f} s: the process died")
        ],
    )


def install_crash_detection(within_seconds: float | None = None) -> Automation:
    return _install(crash_detection(within_seconds))


@flow(name="qlora-close-crashed-run")
def close_crashed_run(flow_run_id: str) -> list[str]:
    """Close, as KILLED, the MLflow runs of the pipeline attempt whose flow run crashed (`prefect.flow-run.<id>`
    or the bare id); returns the MLflow run ids closed."""
    logger = get_run_logger()
    flow_run_id = flow_run_id.removeprefix("prefect.flow-run.")
    with get_client(sync_client=True) as client:
        parameters = client.read_flow_run(UUID(flow_run_id)).parameters
    try:
        config = load_config(parameters["config_path"], parameters.get("overrides") or [])
    except (KeyError, UserError) as error:
        logger.warning(
            "flow run %s: its config cannot be read (%s); its MLflow runs stay as they are", flow_run_id, error
        )
        return []
    closed = close_crashed_attempt(config, flow_run_id)
    logger.info("flow run %s crashed: closed %d MLflow run(s) as KILLED: %s", flow_run_id, len(closed), closed)
    return closed


def close_crashed_runs(deployment_id: UUID) -> Automation:
    return Automation(
        name=CLOSE_CRASHED,
        description="A pipeline flow run turned CRASHED: close its MLflow runs (KILLED) through the "
        f"{CLOSE_CRASHED_DEPLOYMENT} deployment.",
        trigger=EventTrigger(
            expect={"prefect.flow-run.Crashed"},
            match=ResourceSpecification({"prefect.resource.id": ["prefect.flow-run.*"]}),
            match_related=ResourceSpecification(
                {"prefect.resource.role": "flow", "prefect.resource.name": finetune.name}
            ),
            posture=Posture.Reactive,
            threshold=1,
        ),
        actions=[
            RunDeployment(
                source="selected", deployment_id=deployment_id, parameters={"flow_run_id": "{{ event.resource.id }}"}
            )
        ],
    )


def install_close_crashed_runs(deployment_id: UUID) -> Automation:
    return _install(close_crashed_runs(deployment_id))


def _install(wanted: Automation) -> Automation:
    """Create the automation, or bring an existing one (same name) up to date; idempotent."""
    try:
        existing = Automation.read(name=wanted.name)
    except ValueError:
        return wanted.create()
    wanted.id = existing.id
    wanted.update()
    return wanted
