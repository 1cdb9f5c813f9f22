"""One line per tower and one row per model for `ablate models`: what each name builds, and how big it is.

Models are built on the meta device (shapes without storage), so listing the 300 M-parameter pairings costs
well under a second each and allocates nothing.
"""

from __future__ import annotations

import torch
from open_clip.transformer import TextTransformer
from timm.models.fastvit import FastVit
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from ablate.core.models.efficiency import parameter_breakdown
from ablate.core.models.factory import create_model
from ablate.core.models.registry import ModelEntry
from ablate.core.models.text import TextEncoder


def describe_tower(tower: nn.Module) -> str:
    """Short labels: "MCi 64→512 [2,6,10,2]", "ViT 768×12", "MCt 512 RAAAAR k11", "Base 512×12 causal"."""
    trunk = getattr(tower, "trunk", tower)  # open_clip wraps timm image towers in TimmModel.trunk
    if isinstance(trunk, FastVit):
        widths = [info["num_chs"] for info in trunk.feature_info]
        depths = ",".join(str(len(stage.blocks)) for stage in trunk.stages)
        return f"MCi {widths[0]}→{widths[-1]} [{depths}]"
    if isinstance(trunk, VisionTransformer):
        return f"ViT {trunk.embed_dim}×{len(trunk.blocks)}"
    if isinstance(trunk, TextEncoder):
        spec = trunk.spec
        causal = " causal" if spec.causal else ""
        if spec.kind == "base":
            return f"Base {spec.width}×{spec.layers}{causal}"
        blocks = "".join("A" if kind == "attention" else "R" for kind in spec.layout())
        return f"MCt {spec.width} {blocks} k{spec.kernel_size}"
    if isinstance(trunk, TextTransformer):
        causal = " causal" if trunk.attn_mask is not None else ""
        return f"Base {trunk.width}×{len(trunk.transformer.resblocks)}{causal} (open_clip)"
    return type(trunk).__name__


def model_summary(entry: ModelEntry) -> dict[str, object]:
    with torch.device("meta"):
        model = create_model(entry.name)
    return {
        "name": entry.name,
        "description": entry.description,
        "image_tower": describe_tower(model.visual),
        "text_tower": describe_tower(model.text),
        **parameter_breakdown(model),
        "image_size": model.inputs.image_size,
        "context_length": model.inputs.context_length,
    }
