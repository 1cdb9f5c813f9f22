"""Named model configurations, in the spirit of timm's registry: `@register_model` a builder, build by name.

A name is what a study or `model.name` refers to. Builders take the model config's temperature settings and
must not download anything (towers are created with `pretrained=False`). The modules that define models
register themselves here; `factory.py` imports them and builds by name, so this module imports none of them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ablate.core.config.base import ConfigError
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


class UnknownModelError(ConfigError):
    """Raised with the list of valid names, so `model.name: tinyy` is fixable from the message alone."""


def registered() -> dict[str, ModelEntry]:
    """Every registered entry by name (filled once the defining modules are imported, see factory.py)."""
    return _REGISTRY
