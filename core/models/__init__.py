"""Model factory: `create_model(name)` builds a `CLIP` dual encoder; `list_models()` names what exists."""

from ablate.core.models.clip import CLIP, InputSpec, parameter_counts
from ablate.core.models.registry import UnknownModelError, create_model, list_models, register_model

__all__ = [
    "CLIP",
    "InputSpec",
    "UnknownModelError",
    "create_model",
    "list_models",
    "parameter_counts",
    "register_model",
]
