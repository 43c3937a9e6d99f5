"""The Prefect flow runs of a pipeline run's attempts: a resume ends the killed attempt's flow run at once, instead
of leaving it "Running" in the UI until the crash-detection automation notices the missing heartbeats."""

from __future__ import annotations

import logging


def _logger() -> logging.Logger | logging.LoggerAdapter:
    """The flow run's logger (the Prefect UI shows it) inside a flow, else this module's."""
    from prefect import get_run_logger
    from prefect.exceptions import MissingContextError

    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger(__name__)


def current_flow_run_id() -> str | None:
    """The flow run this code runs in, or None outside a flow."""
    import prefect.runtime

    return str(prefect.runtime.flow_run.id) if prefect.runtime.flow_run.id else None


def end_killed_flow_run(flow_run_id: str, message: str) -> bool:
    """Mark a flow run whose process is gone Crashed, unless it already ended; True when it was marked.

    Best effort: the killed attempt may have run against another Prefect server (a temporary one), which this
    process cannot reach or which no longer knows the run; then its state is left to that server."""
    from prefect.client.orchestration import get_client
    from prefect.states import Crashed

    try:
        with get_client(sync_client=True) as client:
            state = client.read_flow_run(flow_run_id).state
            if state is not None and state.is_final():
                return False
            client.set_flow_run_state(flow_run_id, Crashed(message=message), force=True)
    except Exception as error:  # an unreachable server or an unknown id must not stop the resume
        _logger().info("the killed attempt's flow run %s was left as it is: %s", flow_run_id, error)
        return False
    _logger().warning("flow run %s marked Crashed: %s", flow_run_id, message)
    return True
