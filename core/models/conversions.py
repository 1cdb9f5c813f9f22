"""Key maps from published text-tower layouts onto our MCt/Base `TextEncoder` (core/models/text.py), the towers
open_clip does not have, so that `weights.load_weights` can load them by name.

- Apple's ml-mobileclip MCt (`text_encoder.*` of `mobileclip_s0.pt`): the same blocks under other names
  (`transformer.<i>.token_mixer.mixer.rbr_conv.0.conv` is our `blocks.<i>.token_mixer.mixer_conv`, ...). Checked
  output for output against Apple's own code (tests/data/make_apple_mct_reference.py).
- open_clip's TextTransformer (`text.transformer.resblocks.<j>.*`, e.g. MobileCLIP2-S0's 12-layer Base text) into
  an encoder with fewer attention blocks (MobileCLIP-S0's MCt has 4 between two Text-RepMixers): attention block
  k takes layer k·⌊L/a⌋ (TinyCLIP's "interval_front", as compression/inheritance.py subsamples), the embeddings,
  final norm and projection carry over, and the Text-RepMixer blocks, which have no counterpart, stay as built
  (the load report lists them as missing).
"""

from __future__ import annotations

import re

import torch
from torch import nn

from ablate.core.models.text import TextEncoder, open_clip_text_state_to_ours

APPLE_TEXT = "text_encoder."
_APPLE_MCT_SIGNATURE = re.compile(r"^text_encoder\.transformer\.\d+\.token_mixer\.mixer\.rbr_conv\.0\.conv\.weight$")
_APPLE_RENAMES = (
    ("projection_layer", "text_projection"),
    ("embedding_layer.", "token_embedding."),
    ("positional_embedding.pos_embed.pos_embed", "positional_embedding"),
    ("final_layer_norm.", "ln_final."),
    ("transformer.", "blocks."),
    (".pre_norm_mha.0.", ".ln_1."),
    (".pre_norm_mha.1.qkv_proj.", ".attn.qkv."),
    (".pre_norm_mha.1.out_proj.", ".attn.proj."),
    (".pre_norm_ffn.0.", ".ln_2."),
    (".pre_norm_ffn.1.", ".mlp.fc1."),
    (".pre_norm_ffn.4.", ".mlp.fc2."),
    (".token_mixer.norm.rbr_skip.", ".token_mixer.norm."),
    (".token_mixer.mixer.rbr_skip.", ".token_mixer.mixer_skip."),
    (".token_mixer.mixer.rbr_conv.0.conv.", ".token_mixer.mixer_conv."),
    (".token_mixer.mixer.rbr_conv.0.bn.", ".token_mixer.mixer_bn."),
    (".convffn.conv.conv.", ".mlp.conv."),
    (".convffn.conv.bn.", ".mlp.bn."),
    (".convffn.fc", ".mlp.fc"),
)
_OPEN_CLIP_LAYER = re.compile(r"^text\.transformer\.resblocks\.(\d+)\.(.+)$")


def is_apple_mct(state: dict[str, torch.Tensor]) -> bool:
    """Whether `state` holds an ml-mobileclip MCt text tower (Text-RepMixer blocks under `text_encoder.`)."""
    return any(_APPLE_MCT_SIGNATURE.match(key) for key in state)


def apple_mct_to_ours(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename the `text_encoder.*` tensors of an ml-mobileclip MCt checkpoint to ours (`text.*`); other keys (the
    image tower, the logit scale) are left for open_clip's converter."""
    converted = {}
    for key, value in state.items():
        if not key.startswith(APPLE_TEXT):
            converted[key] = value
            continue
        key = key.removeprefix(APPLE_TEXT)
        for old, new in _APPLE_RENAMES:
            key = key.replace(old, new)
        if key == "positional_embedding":
            value = value.reshape(value.shape[-2], value.shape[-1])  # Apple stores it as (1, 1, context, width)
        converted[f"text.{key}"] = value
    return converted


def open_clip_text_into_encoder(text: nn.Module, state: dict[str, torch.Tensor]) -> tuple[dict, list[str]]:
    """Map an open_clip text tower's layers onto a TextEncoder's attention blocks (subsampled when it has fewer);
    returns the state and notes saying which layer went where. Other towers and states pass through unchanged."""
    layers = {int(match[1]) for key in state if (match := _OPEN_CLIP_LAYER.match(key))}
    if not isinstance(text, TextEncoder) or not layers:
        return state, []
    attending = [index for index, kind in enumerate(text.spec.layout()) if kind == "attention"]
    depth = max(layers) + 1
    if not attending or depth < len(attending):
        return state, [f"text: {depth} open_clip layers cannot fill {len(attending)} attention blocks"]
    step = depth // len(attending)  # 1 for a Base encoder of the same depth: layer i is block i
    sources = {block: k * step for k, block in enumerate(attending)}
    taken = {layer: block for block, layer in sources.items()}
    kept, layer_state = {}, {}
    for key, value in state.items():
        match = _OPEN_CLIP_LAYER.match(key)
        if match is not None and int(match[1]) in taken:
            layer_state[f"text.transformer.resblocks.{taken[int(match[1])]}.{match[2]}"] = value
        else:
            kept[key] = value  # untaken layers keep their names and are reported as unexpected
    notes = [f"text: open_clip layer {layer} -> block {block}" for block, layer in sorted(sources.items())]
    return kept | open_clip_text_state_to_ours(layer_state), notes
