"""The base every config section shares, and the error an invalid config raises."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from tasks.lib.core.errors import UserError


class ConfigError(UserError, ValueError):
    """A user-caused configuration problem; the message names every offending key."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)
