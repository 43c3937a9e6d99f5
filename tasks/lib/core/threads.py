"""torch's CPU threads: each pipeline process takes its share of the cores among the pipeline processes running on
the machine now, so that concurrent runs (sweep trials on one worker machine, two `qlora run`s) do not each start as
many threads as there are cores and slow one another several-fold.

A process holds a share from `hold_share()` until it exits: a file named by its pid in a machine-wide folder. `fit()`,
called between steps by the thread doing the work (OpenMP thread counts are per thread), sets torch's threads to
cores // live holders, so shares grow back when another run ends. A configured count replaces the share.
"""

from __future__ import annotations

import atexit
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

DEFAULT_HOLDERS_DIR = Path(tempfile.gettempdir()) / "qlora-core-shares"
FIT_INTERVAL_S = 1.0  # between two looks at the holders folder


def machine_cores() -> int:
    """Cores this process may run on (its CPU affinity: a container's or taskset's limit, not the host's)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def live_holders(holders_dir: Path) -> int:
    """Processes holding a share now; the files of processes that died (killed runs) are removed."""
    count = 0
    for entry in holders_dir.glob("*"):
        if entry.name.isdigit() and _alive(int(entry.name)):
            count += 1
        else:
            entry.unlink(missing_ok=True)
    return count


@dataclass
class CoreShare:
    holders_dir: Path
    configured: int | None = None  # a fixed thread count (config `resources.cpu_threads`); None: the share
    last_fit: float = 0.0

    def threads(self) -> int:
        if self.configured is not None:
            return self.configured
        return max(1, machine_cores() // max(1, live_holders(self.holders_dir)))

    def fit(self, now: float | None = None) -> int:
        import torch

        now = time.monotonic() if now is None else now
        if now - self.last_fit >= FIT_INTERVAL_S or self.last_fit == 0.0:
            self.last_fit = now
            wanted = self.threads()
            if torch.get_num_threads() != wanted:
                torch.set_num_threads(wanted)
        return torch.get_num_threads()

    def release(self) -> None:
        (self.holders_dir / str(os.getpid())).unlink(missing_ok=True)


_held: CoreShare | None = None


def hold_share(configured: int | None = None, holders_dir: Path = DEFAULT_HOLDERS_DIR) -> CoreShare:
    """This process's share, held until it exits; torch's threads are fitted to it at once."""
    global _held
    if _held is None or _held.holders_dir != holders_dir:
        holders_dir.mkdir(parents=True, exist_ok=True)
        (holders_dir / str(os.getpid())).touch()
        _held = CoreShare(holders_dir)
        atexit.register(_held.release)
    _held.configured = configured
    _held.last_fit = 0.0
    _held.fit()
    return _held


def fit() -> int | None:
    """Fit torch's threads in the calling thread to this process's share now; None where no share is held."""
    return None if _held is None else _held.fit()
