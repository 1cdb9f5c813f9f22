"""Named model configurations, in the spirit of timm's registry: `@register_model` a builder, build by name.

A name is what a study or `model.name` refers to. Builders take the model config's temperature settings and
must not download anything (towers are created with `pretrained=False`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ablate.core.models.clip import CLIP

Builder = Callable[..., CLIP]


@dataclass(frozen=True)
class ModelEntry:
    name: str
    builder: Builder
    description: str


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(name: str, description: str) -> Callable[[Builder], Builder]:
    def decorate(builder: Builder) -> Builder:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is registered twice")
        _REGISTRY[name] = ModelEntry(name, builder, description)
        return builder

    return decorate


class UnknownModelError(ValueError):
    """Raised with the list of valid names, so `model.name: tinyy` is fixable from the message alone."""


def list_models() -> list[ModelEntry]:
    _load_builtin_models()
    return sorted(_REGISTRY.values(), key=lambda entry: entry.name)


def create_model(name: str, **kwargs: float) -> CLIP:
    _load_builtin_models()
    if name not in _REGISTRY:
        valid = ", ".join(sorted(_REGISTRY))
        raise UnknownModelError(f"model.name: unknown model {name!r}; available: {valid}")
    return _REGISTRY[name].builder(**kwargs)


def _load_builtin_models() -> None:
    """Import the modules whose decorators fill the registry (deferred to keep `import ablate.core` light)."""
    from ablate.core.models import mobileclip, towers  # noqa: F401
