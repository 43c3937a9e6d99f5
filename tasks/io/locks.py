"""The registry's read-decide-write under a real Prefect global concurrency limit (one holder per model name).

Two pipeline runs (an on-demand run beside the scheduled one, or trials on a work pool with several workers)
must not both read the same champion and both promote. The limit lives in the Prefect server, so it holds
across processes and machines; it is created (limit 1, active) the first time a model name is registered.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager

from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.concurrency.sync import concurrency
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound
from prefect.variables import Variable

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
def registry_lock(
    model_name: str,
    timeout_seconds: float | None = 3600,
    holder: str = "",
    note: Callable[[str], None] = print,
    note_every: float = 15,
) -> Iterator[None]:
    """Hold the model name's registry slot; waits for another run's registration to finish first, saying every
    `note_every` seconds who holds it (`holder`: what this run is called there) and since when."""
    name = registry_lock_name(model_name)
    ensure_limit(name)
    started = time.monotonic()
    with ExitStack() as held:
        while True:
            wait = (
                note_every
                if timeout_seconds is None
                else min(note_every, timeout_seconds - (time.monotonic() - started))
            )
            try:
                # The slot is a lease the holder renews: a holder killed mid-registration frees it when the lease
                # runs out.
                held.enter_context(
                    concurrency(
                        name, occupy=1, timeout_seconds=max(wait, 0.1), lease_duration=LEASE_SECONDS, strict=True
                    )
                )
                break
            except TimeoutError:
                waited = time.monotonic() - started
                if timeout_seconds is not None and waited >= timeout_seconds:
                    raise
                note(f"waiting {waited:.0f} s for the registry lock of {model_name}: {_holder_of(name)}")
        Variable.set(_holder_variable(name), {"holder": holder or "a run", "since": time.time()}, overwrite=True)
        try:
            yield
        finally:
            Variable.unset(_holder_variable(name))


def _holder_variable(lock_name: str) -> str:
    return re.sub(r"[^a-z0-9_-]", "_", f"{lock_name}-holder".lower())[:255]


def _holder_of(lock_name: str) -> str:
    """Who holds the lock and for how long, as its holder wrote it."""
    found = Variable.get(_holder_variable(lock_name))
    if not isinstance(found, dict):
        return "its holder is not named"
    held = time.time() - float(found.get("since", time.time()))
    return (
        f"held by {found.get('holder')} for {held:.0f} s (a holder that died frees it within its "
        f"{LEASE_SECONDS} s lease)"
    )
