"""Model factory: `factory.create_model(name)` builds a `CLIP` dual encoder; `factory.list_models()` names what
exists. This package root stays light (no timm/open_clip import) so that light modules can name its types."""

from ablate.core.models.clip import CLIP, InputSpec, parameter_counts
from ablate.core.models.registry import UnknownModelError, register_model

__all__ = ["CLIP", "InputSpec", "UnknownModelError", "parameter_counts", "register_model"]
