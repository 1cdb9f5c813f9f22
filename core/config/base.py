"""The base of every config section and the error every config problem becomes, in their own module so that
section models living beside the code they configure (e.g. `compression.config`), `sections.TrainConfig`, which
mounts them, and everything that checks a config can import them without importing each other."""

from __future__ import annotations

import reprlib
from typing import Any

from pydantic import BaseModel, ConfigDict


class StrictModel(BaseModel):
    """Base for config sections: unknown keys are rejected and assignments are re-validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, populate_by_name=True)


class ConfigError(ValueError):
    """A configuration problem, already phrased for the user (source, field path, value, what is wrong)."""


_SHORT = reprlib.Repr()
_SHORT.maxlevel, _SHORT.maxstring, _SHORT.maxother, _SHORT.maxlong = 2, 60, 60, 40
_SHORT.maxdict = _SHORT.maxlist = _SHORT.maxtuple = _SHORT.maxset = 4


def excerpt(value: Any, limit: int = 80) -> str:
    """`repr(value)`, short: an error message quotes what was given, never all of it. reprlib bounds the work as
    well as the text, so even a value of millions of elements costs microseconds to describe."""
    text = _SHORT.repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
