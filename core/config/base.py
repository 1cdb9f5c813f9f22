"""The base of every config section, in its own module so that section models living beside the code they
configure (e.g. `compression.config`) and `config.TrainConfig`, which mounts them, can both import it."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class StrictModel(BaseModel):
    """Base for config sections: unknown keys are rejected and assignments are re-validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, populate_by_name=True)
