"""The errors a user can cause or must act on (config, data, a diverging run, a failed check, the registry).

Every such exception class derives from `UserError`, so the CLI (and the flow) show them as one line, not a
traceback. This module imports nothing: any module can use it.
"""

from enum import IntEnum


class ExitCode(IntEnum):
    """What the `qlora` command's exit status means."""

    OK = 0  # done: registered, skipped as unchanged, or the registry is disabled
    USER_ERROR = 1  # bad input (a file, a path, a stack that is not running)
    CONFIG_REFUSED = 2
    GATE_NOT_PASSED = 3  # nothing registered
    NOT_REGISTERED = 4  # the gate passed, but nothing was registered or it is not a verified champion


class UserError(Exception):
    """An error whose message tells the user what to change; shown without a traceback."""
