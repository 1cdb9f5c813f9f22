"""`build_model(config.model)`: the named model with the config's architecture axes applied.

The registry builds a model by name; the axes (attention kind, sigmoid bias, QK-norm, text-tower shape) are
applied afterwards to whatever towers that name built, so every model, tiny or published, takes every axis.
Attention is converted with the weights it was built with: a sigmoid model starts from exactly the parameters
its softmax twin (same seed) starts from, which keeps paired ablations paired.
"""

from __future__ import annotations

import logging
import math
from dataclasses import replace

from open_clip.transformer import TextTransformer
from open_clip.transformer import VisionTransformer as OpenClipViT
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from ablate.core.config.base import ConfigError
from ablate.core.config.sections import ModelConfig, TextTowerConfig
from ablate.core.merging import apply_token_merging
from ablate.core.models.attention import AttentionSpec, swap_attention
from ablate.core.models.clip import CLIP
from ablate.core.models.factory import create_model
from ablate.core.models.registry import UnknownModelError
from ablate.core.models.text import TextEncoder, TextSpec, spec_of_open_clip
from ablate.core.models.weights import load_weights

log = logging.getLogger("ablate.model")


def attention_spec(config: ModelConfig) -> AttentionSpec:
    return AttentionSpec(kind=config.attention, sigmoid_bias=config.sigmoid_bias, qk_norm=config.qk_norm)


def build_model(config: ModelConfig, pretrained: bool = False) -> CLIP:
    """What the trainer builds for `config.model`; a bad combination is a ConfigError naming the field.

    `pretrained`: load `config.pretrained` (a fresh run; a resumed one reads its checkpoint instead). The weights
    go into the named architecture before the axes are applied, so attention and text-tower conversions carry them.
    """
    try:
        model = create_model(
            config.name, init_logit_scale=config.init_logit_scale, max_logit_scale=config.max_logit_scale
        )
    except UnknownModelError as err:
        raise ConfigError(f"model.name: {err}") from None
    if pretrained and config.pretrained is not None:
        report = load_weights(model, config.name, config.pretrained, "model.pretrained")
        log.log(logging.INFO if report.complete else logging.WARNING, "model.pretrained: %s", report.summary())
    return apply_axes(model, config)


def apply_axes(model: CLIP, config: ModelConfig) -> CLIP:
    """Apply the config's resolution, logit-scale clamp, text-tower shape, attention and token merging to `model`.

    Separate from building so that a student that is not built by name (TinyCLIP's automatic inheritance
    trains a copy of its teacher) takes the same axes as one that is: otherwise `model.image_size` or
    `model.attention` would be dropped without a word, and a resume (which rebuilds by name) would train a
    different model from the one the run started with."""
    spec = attention_spec(config)
    model.max_log_scale = math.log(config.max_logit_scale)
    if config.image_size is not None and config.image_size != model.inputs.image_size:
        _resize_images(model, config.image_size, config.name)
    try:
        model.text = _text_tower(model.text, config.text, spec)
        if not spec.is_default:
            swap_attention(model.visual, spec)
        if config.token_merging is not None and config.token_merging.enabled:
            model.token_merging = apply_token_merging(model, config.token_merging)  # last: it wraps the attention
    except ValueError as err:
        raise ConfigError(f"model ({config.name}): {err}") from None
    return model


def _resize_images(model: CLIP, size: int, name: str) -> None:
    """`model.image_size`: feed the image tower `size` px images (the data pipeline reads `model.inputs`).
    Convolutional towers (MCi, FastViT) take any size; timm ViTs resample their position embeddings; open_clip's
    own ViT keeps a fixed table, so it is refused here, naming the field, rather than failing at the first step."""
    trunk = getattr(model.visual, "trunk", model.visual)  # open_clip wraps timm towers in TimmModel.trunk
    if isinstance(trunk, OpenClipViT):
        raise ConfigError(
            f"model.image_size: {name}'s image tower (open_clip VisionTransformer) has a fixed position table; "
            f"it takes only its native {model.inputs.image_size} px, not {size}"
        )
    if isinstance(trunk, VisionTransformer):
        trunk.set_input_size(img_size=(size, size))
    model.inputs = replace(model.inputs, image_size=size)


def _text_tower(text: nn.Module, options: TextTowerConfig, attention: AttentionSpec) -> nn.Module:
    changes = options.model_dump(exclude_none=True)
    if not changes and attention.is_default:
        return text  # open_clip's own tower stays untouched for the default model
    if isinstance(text, TextEncoder):
        base = text.spec
    elif isinstance(text, TextTransformer):
        if not changes:
            return TextEncoder.from_open_clip(text, attention)
        base = spec_of_open_clip(text, attention)
    else:
        raise ValueError(f"text tower {type(text).__name__} takes no architecture options")
    if not changes:
        return text.with_attention(attention)
    device = next(text.parameters()).device
    return TextEncoder(_with_changes(base, changes, attention)).to(device)


def _with_changes(base: TextSpec, changes: dict, attention: AttentionSpec) -> TextSpec:
    """Apply model.text.* to a spec; `layers` alone keeps the Base/MCt kind (all attend, or as many as before)."""
    if "layers" in changes and "attention_layers" not in changes and base.attention_layers is not None:
        changes = {**changes, "attention_layers": min(base.attention_layers, changes["layers"])}
    try:
        return replace(base, **changes, attention=attention)
    except ValueError as err:
        raise ValueError(f"model.text {changes}: {err}") from None
