"""Build a model by name: `create_model(name)` and `list_models()` over every registered builder.

The modules that define models are imported here, explicitly, so their `@register_model` decorators have run
before any lookup; the registry itself imports none of them (no import cycle).
"""

from __future__ import annotations

from ablate.core.models import mobileclip, towers
from ablate.core.models.clip import CLIP
from ablate.core.models.registry import ModelEntry, UnknownModelError, registered

MODEL_MODULES = (towers, mobileclip)  # the modules whose decorators fill the registry


def list_models() -> list[ModelEntry]:
    return sorted(registered().values(), key=lambda entry: entry.name)


def create_model(name: str, **kwargs: float) -> CLIP:
    entries = registered()
    if name not in entries:
        raise UnknownModelError(f"model.name: unknown model {name!r}; available: {', '.join(sorted(entries))}")
    return entries[name].builder(**kwargs)
