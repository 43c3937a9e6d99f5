"""The errors a user can cause or must act on (config, data, a diverging run, a failed check, the registry).

Every such exception class derives from `UserError`, so the CLI (and the flow) show them as one line, not a
traceback. This module imports nothing: any module can use it.
"""

import errno
from enum import IntEnum


class ExitCode(IntEnum):
    """What the `qlora` command's exit status means."""

    OK = 0  # done: registered, skipped as unchanged, or the registry is disabled
    USER_ERROR = 1  # bad input (a file, a path, a stack that is not running)
    CONFIG_REFUSED = 2
    GATE_NOT_PASSED = 3  # nothing registered
    NOT_REGISTERED = 4  # the gate passed, but nothing was registered or it is not a verified champion
    UNEXPECTED = 5  # not a user error: one line on the terminal, the traceback in a file


class UserError(Exception):
    """An error whose message tells the user what to change; shown without a traceback."""


_PERMANENT_ERRNOS = frozenset(
    {errno.ENOENT, errno.EACCES, errno.EPERM, errno.EISDIR, errno.ENOTDIR, errno.ENAMETOOLONG}
)


def cannot_heal(error: BaseException) -> bool:
    """True when running the same code again would fail the same way: bad input, a missing file or package, a model
    a library cannot load (its OSError carries no errno). Retrying those (Prefect task retries, Ray's replacement
    workers) only delays the message; a lost connection, a timeout or a dead peer process may heal."""
    if isinstance(error, UserError | ImportError | SyntaxError):
        return True
    if isinstance(error, ConnectionError | TimeoutError) or not isinstance(error, OSError):
        return False
    if type(error).__module__.split(".")[0] in ("requests", "urllib3", "httpx"):  # a network library's OSError
        return False
    return error.errno is None or error.errno in _PERMANENT_ERRNOS
