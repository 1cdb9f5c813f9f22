"""MCi/MCt pairings: MobileCLIP-S0 (absent from open_clip) and CPU-sized models built from the same blocks.

The tiny family isolates one tower at a time against `tiny` (ViT 4×128 + open_clip text 3×128, 64 px, ctx 32):
`mci-tiny` swaps in an MCi-style image tower, `mct-tiny` an MCt-style text tower, `mobileclip-tiny` both. The
MCi-style tower is timm's FastViT-MCi0 recipe (MobileOne stem, RepMixer stages 1–3, RepCPE + attention in
stage 4, ConvFFN ratio 3, SE in the last two downsamplings, 2× conv_exp head) at widths 16–128, one block per
stage except two in stage 3. At 64 px its attention stage sees 2×2 = 4 tokens.
"""

from __future__ import annotations

import timm
import torch
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from torch import nn

from ablate.core.models.clip import CLIP, InputSpec
from ablate.core.models.registry import register_model
from ablate.core.models.text import TextEncoder, TextSpec
from ablate.core.models.towers import from_open_clip, tiny_text_tower, tiny_vit_tower

TINY_EMBED_DIM = 128
TINY_IMAGE_SIZE = 64
TINY_CONTEXT = 32

MCT_S0 = TextSpec(width=512, heads=8, layers=6, attention_layers=4, kernel_size=11, context_length=77)
MCT_TINY = TextSpec(
    width=128,
    heads=4,
    layers=4,
    attention_layers=2,
    kernel_size=11,
    context_length=TINY_CONTEXT,
    output_dim=TINY_EMBED_DIM,
)


def mci_tiny_tower(embed_dim: int = TINY_EMBED_DIM) -> nn.Module:
    """FastViT-MCi blocks at CPU size: widths (16, 32, 64, 128), blocks (1, 1, 2, 1), head_dim 32 (4 heads)."""
    return timm.create_model(
        "fastvit_mci0",  # block recipe; widths and depths overridden below
        pretrained=False,
        embed_dims=(16, 32, 64, 128),
        layers=(1, 1, 2, 1),
        num_classes=embed_dim,
    )


def _tiny_inputs() -> InputSpec:
    return InputSpec(TINY_IMAGE_SIZE, TINY_CONTEXT, OPENAI_DATASET_MEAN, OPENAI_DATASET_STD)


@register_model("mci-tiny", "MCi-style FastViT 16-128 (RepMixer + attention stage) + tiny's text: image-tower axis")
def mci_tiny(**scale: float) -> CLIP:
    return CLIP(mci_tiny_tower(), tiny_text_tower(), _tiny_inputs(), **scale)


@register_model("mct-tiny", "tiny's ViT + MCt text 128-wide [RepMixer, 2 attention, RepMixer], k=11: text axis")
def mct_tiny(**scale: float) -> CLIP:
    return CLIP(tiny_vit_tower(), TextEncoder(MCT_TINY), _tiny_inputs(), **scale)


@register_model("mobileclip-tiny", "MCi-style image + MCt text at CPU size (mci-tiny's image, mct-tiny's text)")
def mobileclip_tiny(**scale: float) -> CLIP:
    return CLIP(mci_tiny_tower(), TextEncoder(MCT_TINY), _tiny_inputs(), **scale)


@register_model("MobileCLIP-S0", "MCi0 + MCt (S0 text: RepMixer, 4 attention, RepMixer; 42.4 M), 256 px, 0/1 norm")
def mobileclip_s0(**scale: float) -> CLIP:
    """The paper's S0 pairing (MC §5). open_clip has no MCt, so its MobileCLIP2-S0 config pairs MCi0 with the
    12-layer Base text (63.4 M) although the MobileCLIP2 README lists 42.4 M (papers.md §7.6); this is the MCt
    one. The image tower and preprocessing are MobileCLIP2-S0's (fastvit_mci0, avg pool, linear to 512, 0/1)."""
    reference = from_open_clip("MobileCLIP2-S0", **scale)
    device = torch.get_default_device()
    return CLIP(reference.visual, TextEncoder(MCT_S0).to(device), reference.inputs, **scale)
