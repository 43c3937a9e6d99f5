"""The errors a user can cause or must act on (config, data, a diverging run, a failed check, the registry).

Every such exception class derives from `UserError`, so the CLI (and the flow) show them as one line, not a
traceback. This module imports nothing: any module can use it.
"""


class UserError(Exception):
    """An error whose message tells the user what to change; shown without a traceback."""
