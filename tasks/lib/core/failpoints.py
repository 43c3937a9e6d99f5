"""Named points where the kill tests SIGKILL the process, to prove a rerun converges from there.

Set `QLORA_FAILPOINT=<name>` (e.g. `evaluate`, `register.version-created`, `train.step-3`) and the process kills
itself, with no chance to clean up, exactly when it reaches that point. With `QLORA_FAILPOINT_MARKER=<file>` it fires
once: the first process to reach it creates the file, and one restarted from a checkpoint (a Ray worker Ray
replaced) passes it. Unset (always, outside the tests) it does nothing.
"""

from __future__ import annotations

import os
import signal


def failpoint(name: str) -> None:
    if os.environ.get("QLORA_FAILPOINT") != name:
        return
    marker = os.environ.get("QLORA_FAILPOINT_MARKER")
    if marker:
        try:
            with open(marker, "x"):
                pass
        except FileExistsError:
            return
    os.kill(os.getpid(), signal.SIGKILL)
