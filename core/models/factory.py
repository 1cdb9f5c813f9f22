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
    """Whether `create_model(name)` can build it: a registered name or a usable open_clip architecture."""
    return name in registered() or (name in open_clip.list_models() and _open_clip_problem(name) is None)


def _open_clip_problem(name: str) -> str | None:
    """Why an open_clip architecture cannot be a student or teacher here (None: it can). Every model is fed CLIP's
    BPE tokens (open_clip's SimpleTokenizer: the data pipeline, the teachers and zero-shot prompts share it), and
    the trainer needs a dual encoder's two embeddings."""
    config = open_clip.get_model_config(name) or {}
    text = config.get("text_cfg", {})
    if tokenizer := text.get("hf_tokenizer_name") or text.get("hf_model_name"):
        return f"open_clip's {name} reads {tokenizer}'s tokens, and ablate feeds every model CLIP's BPE tokens"
    if "multimodal_cfg" in config:
        return f"open_clip's {name} is a CoCa captioner, not a dual encoder"
    return None


def unknown_model_message(name: str) -> str:
    """Why `name` cannot be built, with our names (open_clip's are many: say where to list them)."""
    if name in open_clip.list_models() and (problem := _open_clip_problem(name)):
        return f"model {name!r} is not supported: {problem}"
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
    if is_known(name):
        return towers.from_open_clip(name, **kwargs)
    raise UnknownModelError(unknown_model_message(name))
