"""The built-in model zoo: CPU-sized pairs for tests and the bundled benchmark, and the published
MobileCLIP / MobileCLIP2 pairings exactly as open_clip defines them (random init, no download).

Image towers come from timm, text towers from open_clip's `TextTransformer`, so later work (masks, sigmoid
attention, token merging) sees the same module types whether the model is tiny or real.
"""

from __future__ import annotations

import logging

import open_clip
import timm
import torch
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from open_clip.transformer import TextTransformer
from torch import nn

from ablate.core.models.clip import CLIP, InputSpec
from ablate.core.models.registry import register_model
from ablate.core.models.text import CLIP_VOCAB_SIZE


def vit_tower(*, embed_dim: int, image_size: int, patch_size: int, width: int, depth: int, heads: int) -> nn.Module:
    """A timm ViT image tower (class-token pooling, linear head as projection)."""
    return timm.create_model(
        "vit_tiny_patch16_224",  # block/norm layout only; every size below overrides it
        pretrained=False,
        img_size=image_size,
        patch_size=patch_size,
        embed_dim=width,
        depth=depth,
        num_heads=heads,
        num_classes=embed_dim,
    )


def tiny_vit_tower() -> nn.Module:
    """`tiny`'s image tower: ViT 64 px / 8, 4 × 128, 4 heads, 128-d output."""
    return vit_tower(embed_dim=128, image_size=64, patch_size=8, width=128, depth=4, heads=4)


def tiny_text_tower() -> nn.Module:
    """`tiny`'s text tower: open_clip's causal TextTransformer, 3 × 128, 4 heads, context 32, 128-d output."""
    return TextTransformer(context_length=32, vocab_size=CLIP_VOCAB_SIZE, width=128, heads=4, layers=3, output_dim=128)


def _vit_text_pair(
    *,
    embed_dim: int,
    image_size: int,
    patch_size: int,
    vision_width: int,
    vision_depth: int,
    vision_heads: int,
    context_length: int,
    text_width: int,
    text_depth: int,
    text_heads: int,
    **scale: float,
) -> CLIP:
    """A timm ViT image tower + a causal open_clip text transformer."""
    visual = vit_tower(
        embed_dim=embed_dim,
        image_size=image_size,
        patch_size=patch_size,
        width=vision_width,
        depth=vision_depth,
        heads=vision_heads,
    )
    text = TextTransformer(
        context_length=context_length,
        vocab_size=CLIP_VOCAB_SIZE,
        width=text_width,
        heads=text_heads,
        layers=text_depth,
        output_dim=embed_dim,
    )
    inputs = InputSpec(image_size, context_length, OPENAI_DATASET_MEAN, OPENAI_DATASET_STD)
    return CLIP(visual, text, inputs, **scale)


@register_model("tiny", "ViT 64px/8, 4x128 + text 3x128, ctx 32, 128-d: the CPU student for tests and demos")
def tiny(**scale: float) -> CLIP:
    return _vit_text_pair(
        embed_dim=128,
        image_size=64,
        patch_size=8,
        vision_width=128,
        vision_depth=4,
        vision_heads=4,
        context_length=32,
        text_width=128,
        text_depth=3,
        text_heads=4,
        **scale,
    )


@register_model("small", "ViT 64px/8, 6x256 + text 4x256, ctx 32, 256-d: a CPU model ~8x tiny's towers")
def small(**scale: float) -> CLIP:
    return _vit_text_pair(
        embed_dim=256,
        image_size=64,
        patch_size=8,
        vision_width=256,
        vision_depth=6,
        vision_heads=8,
        context_length=32,
        text_width=256,
        text_depth=4,
        text_heads=8,
        **scale,
    )


def from_open_clip(name: str, **scale: float) -> CLIP:
    """Wrap an open_clip architecture (random init) in our CLIP, keeping its towers and preprocessing.

    Built on the current default device, so `with torch.device("meta")` sizes a model without allocating it.
    """
    config = open_clip.get_model_config(name)
    root_logger = logging.getLogger()
    was_disabled, root_logger.disabled = root_logger.disabled, True
    try:  # open_clip warns "No pretrained weights loaded" on the root logger; random init is the intent here
        reference = open_clip.create_model(
            name, pretrained=None, force_custom_text=True, device=torch.get_default_device()
        )
    finally:
        root_logger.disabled = was_disabled
    tags = open_clip.list_pretrained_tags_by_model(name)  # its first tag's preprocessing; none: OpenAI's
    preprocess = open_clip.get_pretrained_cfg(name, tags[0]) if tags else {}
    size = config["vision_cfg"]["image_size"]
    inputs = InputSpec(
        image_size=int(size if isinstance(size, int) else size[0]),
        context_length=int(config["text_cfg"].get("context_length", 77)),
        mean=tuple(preprocess.get("mean", OPENAI_DATASET_MEAN)),
        std=tuple(preprocess.get("std", OPENAI_DATASET_STD)),
    )
    return CLIP(reference.visual, reference.text, inputs, **scale)


def _register_open_clip_family() -> None:
    for name in open_clip.list_models():
        if name.startswith(("MobileCLIP-", "MobileCLIP2-")):
            register_model(name, f"open_clip architecture {name} (random init)")(
                lambda _name=name, **scale: from_open_clip(_name, **scale)
            )


_register_open_clip_family()
