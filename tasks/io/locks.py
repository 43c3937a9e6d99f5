"""The registry's read-decide-write under a real Prefect global concurrency limit (one holder per model name).

Two pipeline runs (an on-demand run beside the scheduled one, or trials on a work pool with several workers)
must not both read the same champion and both promote. The limit lives in the Prefect server, so it holds
across processes and machines; it is created (limit 1, active) the first time a model name is registered.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.concurrency.sync import concurrency
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

LEASE_SECONDS = 60


def registry_lock_name(model_name: str) -> str:
    return f"registry-{model_name}"


def ensure_limit(name: str, limit: int = 1) -> None:
    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            try:
                client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=limit))
            except ObjectAlreadyExists:  # another run created it first
                pass


@contextmanager
def registry_lock(model_name: str, timeout_seconds: float | None = 3600) -> Iterator[None]:
    """Hold the model name's registry slot; waits for another run's registration to finish first."""
    name = registry_lock_name(model_name)
    ensure_limit(name)
    # The slot is a lease the holder renews: a holder killed mid-registration frees it when the lease runs out.
    with concurrency(name, occupy=1, timeout_seconds=timeout_seconds, lease_duration=LEASE_SECONDS, strict=True):
        yield
