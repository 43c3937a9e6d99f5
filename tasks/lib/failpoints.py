"""Named points where the kill tests SIGKILL the process, to prove a rerun converges from there.

Set `QLORA_FAILPOINT=<name>` (e.g. `evaluate`, `register.version-created`) and the process kills itself, with
no chance to clean up, exactly when it reaches that point. Unset (always, outside the tests) it does nothing.
"""

from __future__ import annotations

import os
import signal


def failpoint(name: str) -> None:
    if os.environ.get("QLORA_FAILPOINT") == name:
        os.kill(os.getpid(), signal.SIGKILL)
