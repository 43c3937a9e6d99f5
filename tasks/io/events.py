"""The custom Prefect event that starts retraining when a data set has a new version.

`qlora data-updated CONFIG` emits it (after `dvc add` / `dvc push`, or from any script); the scheduled-retraining
deployment (flows/serve.py) has a trigger on it, next to its cron schedule.
"""

from __future__ import annotations

DATA_UPDATED = "qlora.data.updated"


def data_resource_id(config_name: str) -> str:
    """The resource an event names: the data set of one config."""
    return f"qlora.data.{config_name}"


def emit_data_updated(config_name: str, data_version: str, source: str) -> str:
    """Send the event to the Prefect API in use and wait until it is delivered; returns the event id."""
    from prefect.events import emit_event
    from prefect.events.worker import EventsWorker

    event = emit_event(
        DATA_UPDATED,
        resource={
            "prefect.resource.id": data_resource_id(config_name),
            "prefect.resource.name": source,
            "qlora.data-version": data_version,
        },
        payload={"data_version": data_version, "source": source},
    )
    if event is None:
        raise RuntimeError("Prefect did not accept the event: is PREFECT_API_URL set (or `make up` running)?")
    EventsWorker.drain_all()  # a short-lived command must not exit with the event still queued
    return str(event.id)
