"""Build a model by name: `create_model(name)` and `list_models()` over every registered builder.

The modules that define models are imported here, explicitly, so their `@register_model` decorators have run
before any lookup; the registry itself imports none of them (no import cycle). A name the registry does not
hold but open_clip does (`open_clip.list_models()`: ViT-B-32, ViT-L-14, EVA02-L-14, ...) is built by open_clip's
own factory with random weights, so any architecture of the ecosystem can be a student or a teacher; its
weights come from `core/models/weights.py`.
"""

from __future__ import annotations

import open_clip

from ablate.core.models import mobileclip, towers
from ablate.core.models.clip import CLIP
from ablate.core.models.registry import ModelEntry, UnknownModelError, registered

MODEL_MODULES = (towers, mobileclip)  # the modules whose decorators fill the registry


def list_models() -> list[ModelEntry]:
    return sorted(registered().values(), key=lambda entry: entry.name)


def is_known(name: str) -> bool:
    """Whether `create_model(name)` can build it: a registered name or an open_clip architecture."""
    return name in registered() or name in open_clip.list_models()


def unknown_model_message(name: str) -> str:
    """Why `name` cannot be built, with our names (open_clip's are many: say where to list them)."""
    return (
        f"unknown model {name!r}; available: {', '.join(sorted(registered()))}, "
        "or any open_clip architecture (python -c 'import open_clip; print(open_clip.list_models())')"
    )


def create_model(name: str, **kwargs: float) -> CLIP:
    """Build `name` with random weights. The UnknownModelError does not name a config field: the caller knows
    which one holds the name (`model.name`, `teachers.members[1].model`) and prefixes it."""
    entries = registered()
    if name in entries:
        return entries[name].builder(**kwargs)
    if name in open_clip.list_models():
        return towers.from_open_clip(name, **kwargs)
    raise UnknownModelError(unknown_model_message(name))
