"""The base of every config section and the error every config problem becomes, in their own module so that
section models living beside the code they configure (e.g. `compression.config`), `sections.TrainConfig`, which
mounts them, and everything that checks a config can import them without importing each other."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class StrictModel(BaseModel):
    """Base for config sections: unknown keys are rejected and assignments are re-validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, populate_by_name=True)


class ConfigError(ValueError):
    """A configuration problem, already phrased for the user (source, field path, value, what is wrong)."""
