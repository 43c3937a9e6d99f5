"""Prefect's own detection of dead flow runs: every flow run sends heartbeats; one that stops is marked Crashed.

A SIGKILLed or OOM-killed `qlora run` cannot report its end. The flow engine emits `prefect.flow-run.heartbeat`
every PREFECT_FLOWS_HEARTBEAT_FREQUENCY seconds (180 by default) while a run is alive; this automation (the one
Prefect documents for "zombie" flow runs) moves a run to CRASHED when a heartbeat is not followed by another
heartbeat or a terminal state within a few heartbeat intervals. `qlora serve` (and so `qlora stack up`) installs it.
"""

from __future__ import annotations

from datetime import timedelta

from prefect.automations import Automation
from prefect.client.schemas.objects import StateType
from prefect.events.actions import ChangeFlowRunState
from prefect.events.schemas.automations import EventTrigger, Posture
from prefect.events.schemas.events import ResourceSpecification
from prefect.settings import get_current_settings

CRASH_DETECTION = "qlora: mark flow runs without heartbeats as crashed"
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
    """Create the automation, or bring an existing one (same name) up to date; idempotent."""
    wanted = crash_detection(within_seconds)
    try:
        existing = Automation.read(name=CRASH_DETECTION)
    except ValueError:
        return wanted.create()
    wanted.id = existing.id
    wanted.update()
    return wanted
