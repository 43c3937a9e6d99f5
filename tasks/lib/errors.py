"""The errors a user causes (config, data, a diverging run, a failed check): shown as messages, not tracebacks."""

from __future__ import annotations

from tasks.lib.config import ConfigError
from tasks.lib.data_formats import DataError
from tasks.lib.merge import MergeFidelityError
from tasks.lib.training import TrainingDivergedError

USER_ERRORS = (ConfigError, DataError, TrainingDivergedError, MergeFidelityError)
