"""Text encoders of MobileCLIP (papers.md §1.4): the Base transformer and the MCt hybrid.

MCt = [Text-RepMixer]·r₁ + [Transformer]·a + [Text-RepMixer]·r₂ over one residual stream (S0: 1 + 4 + 1 at
width 512, kernel 11; 42.44 M parameters). A Text-RepMixer block works in the "BC1S" layout, the sequence as a
(B, C, 1, S) image, so its token mixer is a depthwise 1×k convolution:
    x ← x + γ_mix ⊙ (BN(DWConv₁ₓₖ(x)) + BN_skip(x) − BN_norm(x)),   x ← x + γ ⊙ ConvFFN(x),
ConvFFN = depthwise 1×k conv + BN → 1×1 (C → 4C) → GELU → 1×1 (4C → C); both γ start at 1e-5. At inference the
token mixer folds into one 1×k depthwise conv with W = I + γ_mix(W_mix + W_skip − W_norm) (`reparameterize`).

Base is the same encoder with every block attending (a = depth). Its init and layout follow open_clip's
TextTransformer exactly, so `TextEncoder.from_open_clip` reproduces an open_clip text tower output for output;
that is how attention variants reach the published pairings. Pooling takes the EOT token (highest id).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
from open_clip.transformer import TextTransformer
from timm.layers import LayerScale, Mlp, trunc_normal_
from torch import nn

from ablate.core.models.attention import Attention, AttentionSpec
from ablate.core.models.reparam import fold_batchnorm, fused_conv, identity_kernel

CLIP_VOCAB_SIZE = 49408  # open_clip's SimpleTokenizer (CLIP BPE), bundled in the wheel


@dataclass(frozen=True)
class TextSpec:
    """Shape of a text encoder. `attention_layers` None means all `layers` attend (Base); fewer makes an MCt
    hybrid whose remaining layers are Text-RepMixer blocks, half (rounded down) before the attention layers and
    the rest after (the S0 layout 1 + 4 + 1; MobileCLIP Tab 5 varies this count in a 6-layer encoder)."""

    width: int = 512
    heads: int = 8
    layers: int = 12
    attention_layers: int | None = None
    kernel_size: int = 11
    mlp_ratio: float = 4.0
    context_length: int = 77
    vocab_size: int = CLIP_VOCAB_SIZE
    output_dim: int = 512
    causal: bool = False
    pad_mask: bool = False
    pad_id: int = 0
    layer_scale: float | None = None  # on transformer blocks (open_clip's ls_init_value); RepMixer keeps 1e-5
    attention: AttentionSpec = field(default_factory=AttentionSpec)

    def __post_init__(self) -> None:
        problems = []
        if self.width % self.heads:
            problems.append(f"width {self.width} is not divisible by heads {self.heads}")
        if not 0 <= self.num_attention_layers <= self.layers:
            problems.append(f"attention_layers {self.attention_layers} is not within 0..layers ({self.layers})")
        if self.kernel_size < 1 or self.kernel_size % 2 == 0:
            problems.append(f"kernel_size {self.kernel_size} must be odd and positive (centred 1×k token mixing)")
        if self.causal and self.num_attention_layers < self.layers:
            problems.append("causal masking with Text-RepMixer layers: a 1×k conv sees later tokens anyway")
        if self.causal and self.pad_mask:
            problems.append("pad_mask applies to bidirectional encoders only (as open_clip's use_pad_mask)")
        if problems:
            raise ValueError("text encoder: " + "; ".join(problems))

    @property
    def num_attention_layers(self) -> int:
        return self.layers if self.attention_layers is None else self.attention_layers

    @property
    def kind(self) -> str:
        return "base" if self.num_attention_layers == self.layers else "mct"

    def layout(self) -> list[str]:
        """Block kinds in order, e.g. ['repmixer', 'attention' × 4, 'repmixer'] for S0."""
        convs = self.layers - self.num_attention_layers
        before = convs // 2
        return ["repmixer"] * before + ["attention"] * self.num_attention_layers + ["repmixer"] * (convs - before)


class TransformerBlock(nn.Module):
    """Pre-norm block as open_clip's ResidualAttentionBlock, with timm-layout attention and MLP."""

    def __init__(self, spec: TextSpec) -> None:
        super().__init__()
        width = spec.width
        self.ln_1 = nn.LayerNorm(width)
        self.attn = Attention(width, spec.heads, spec.attention, qkv_bias=True)
        self.ls_1 = LayerScale(width, spec.layer_scale) if spec.layer_scale is not None else nn.Identity()
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = Mlp(width, int(width * spec.mlp_ratio), act_layer=nn.GELU)
        self.ls_2 = LayerScale(width, spec.layer_scale) if spec.layer_scale is not None else nn.Identity()

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None) -> torch.Tensor:
        x = x + self.ls_1(self.attn(self.ln_1(x), attn_mask=attn_mask))
        return x + self.ls_2(self.mlp(self.ln_2(x)))


class TextRepMixer(nn.Module):
    """Reparameterisable 1×k depthwise token mixer on (B, C, 1, S)."""

    def __init__(self, dim: int, kernel_size: int, layer_scale_init: float = 1e-5) -> None:
        super().__init__()
        self.kernel = (1, kernel_size)
        self.norm = nn.BatchNorm2d(dim)  # the subtracted branch: BN of the input itself
        self.mixer_conv = nn.Conv2d(dim, dim, self.kernel, padding=(0, kernel_size // 2), groups=dim, bias=False)
        self.mixer_bn = nn.BatchNorm2d(dim)
        self.mixer_skip = nn.BatchNorm2d(dim)
        self.layer_scale = nn.Parameter(torch.full((dim, 1, 1), layer_scale_init))
        self.reparam_conv: nn.Conv2d | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.reparam_conv is not None:
            return self.reparam_conv(x)
        mixed = self.mixer_bn(self.mixer_conv(x)) + self.mixer_skip(x)
        return x + self.layer_scale * (mixed - self.norm(x))

    @torch.no_grad()
    def reparameterize(self) -> None:
        if self.reparam_conv is not None:
            return
        channels = self.mixer_conv.out_channels
        identity = identity_kernel(channels, self.kernel, self.mixer_conv.weight)
        w_conv, b_conv = fold_batchnorm(self.mixer_conv.weight, self.mixer_bn)
        w_skip, b_skip = fold_batchnorm(identity, self.mixer_skip)
        w_norm, b_norm = fold_batchnorm(identity, self.norm)
        gamma = self.layer_scale.reshape(-1, 1, 1, 1)
        weight = identity + gamma * (w_conv + w_skip - w_norm)
        bias = self.layer_scale.reshape(-1) * (b_conv + b_skip - b_norm)
        self.reparam_conv = fused_conv(self.mixer_conv, weight, bias)
        for name in ("norm", "mixer_conv", "mixer_bn", "mixer_skip", "layer_scale"):
            delattr(self, name)


class TextConvFFN(nn.Module):
    """Depthwise 1×k conv + BN, then the 1×1 MLP (`fc1`, `fc2` as 1×1 convs, the masks' FFN interface)."""

    def __init__(self, dim: int, hidden: int, kernel_size: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(dim, dim, (1, kernel_size), padding=(0, kernel_size // 2), groups=dim, bias=False)
        self.bn = nn.BatchNorm2d(dim)
        self.fc1 = nn.Conv2d(dim, hidden, 1)
        self.act = nn.GELU()
        self.fc2 = nn.Conv2d(hidden, dim, 1)
        self.reparam_conv: nn.Conv2d | None = None
        for conv in (self.conv, self.fc1, self.fc2):
            trunc_normal_(conv.weight, std=0.02)
            if conv.bias is not None:
                nn.init.zeros_(conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.reparam_conv(x) if self.reparam_conv is not None else self.bn(self.conv(x))
        return self.fc2(self.act(self.fc1(x)))

    @torch.no_grad()
    def reparameterize(self) -> None:
        if self.reparam_conv is None:
            self.reparam_conv = fused_conv(self.conv, *fold_batchnorm(self.conv.weight, self.bn))
            del self.conv, self.bn


class TextRepMixerBlock(nn.Module):
    """Token mixer + ConvFFN in BC1S; takes and returns (B, S, C) like the transformer blocks around it."""

    def __init__(self, spec: TextSpec, layer_scale_init: float = 1e-5) -> None:
        super().__init__()
        self.token_mixer = TextRepMixer(spec.width, spec.kernel_size, layer_scale_init)
        self.mlp = TextConvFFN(spec.width, int(spec.width * spec.mlp_ratio), spec.kernel_size)
        self.layer_scale = nn.Parameter(torch.full((spec.width, 1, 1), layer_scale_init))

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = self.token_mixer(x.transpose(1, 2).unsqueeze(2))
        x = x + self.layer_scale * self.mlp(x)
        return x.squeeze(2).transpose(1, 2)


class TextEncoder(nn.Module):
    """Token ids (B, S) → (B, output_dim): embeddings, Base or MCt blocks, final LayerNorm, EOT pooling,
    projection. `spec` is kept so the tower can be rebuilt with other options."""

    def __init__(self, spec: TextSpec) -> None:
        super().__init__()
        self.spec = spec
        self.token_embedding = nn.Embedding(spec.vocab_size, spec.width)
        self.positional_embedding = nn.Parameter(torch.empty(spec.context_length, spec.width))
        self.blocks = nn.ModuleList(
            TransformerBlock(spec) if kind == "attention" else TextRepMixerBlock(spec) for kind in spec.layout()
        )
        self.ln_final = nn.LayerNorm(spec.width)
        self.text_projection = nn.Parameter(torch.empty(spec.width, spec.output_dim))
        if spec.causal:
            causal = torch.ones(spec.context_length, spec.context_length, dtype=torch.bool).tril()
            self.register_buffer("causal_mask", causal, persistent=False)
        else:
            self.causal_mask = None
        self._init_parameters()

    def _init_parameters(self) -> None:
        """open_clip's TextTransformer.init_parameters, block for block (depth = all blocks)."""
        width = self.spec.width
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        proj_std = width**-0.5 * (2 * self.spec.layers) ** -0.5
        for block in self.blocks:
            if isinstance(block, TransformerBlock):
                nn.init.normal_(block.attn.qkv.weight, std=width**-0.5)
                nn.init.zeros_(block.attn.qkv.bias)
                nn.init.normal_(block.attn.proj.weight, std=proj_std)
                nn.init.zeros_(block.attn.proj.bias)
                nn.init.normal_(block.mlp.fc1.weight, std=(2 * width) ** -0.5)
                nn.init.normal_(block.mlp.fc2.weight, std=proj_std)
        nn.init.normal_(self.text_projection, std=width**-0.5)

    def attention_mask(self, tokens: torch.Tensor) -> torch.Tensor | None:
        """Bool mask, True = may attend: causal (S, S), or valid keys (B, 1, 1, S) with `pad_mask`."""
        length = tokens.shape[1]
        if self.causal_mask is not None:
            return self.causal_mask[:length, :length]
        if self.spec.pad_mask:
            return (tokens != self.spec.pad_id)[:, None, None, :]
        return None

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.token_embedding(tokens) + self.positional_embedding[: tokens.shape[1]]
        mask = self.attention_mask(tokens)
        for block in self.blocks:
            x = block(x, mask)
        x = self.ln_final(x)
        pooled = x[torch.arange(x.shape[0], device=x.device), tokens.argmax(dim=-1)]
        return pooled @ self.text_projection

    def with_attention(self, attention: AttentionSpec) -> TextEncoder:
        """A copy with other attention, same weights (new parameters such as QK-norm start at their init)."""
        twin = TextEncoder(replace(self.spec, attention=attention))
        _load_compatible(twin, self.state_dict(), source="TextEncoder")
        return twin.to(self.positional_embedding.device)

    @classmethod
    def from_open_clip(cls, text: TextTransformer, attention: AttentionSpec) -> TextEncoder:
        """open_clip's TextTransformer rebuilt as a Base TextEncoder with the same weights and outputs."""
        encoder = cls(spec_of_open_clip(text, attention))
        _load_compatible(encoder, open_clip_text_state_to_ours(text.state_dict()), source="open_clip TextTransformer")
        return encoder.to(text.positional_embedding.device)


def spec_of_open_clip(text: TextTransformer, attention: AttentionSpec) -> TextSpec:
    """The TextSpec of an open_clip text tower, or a ValueError naming what this encoder does not reproduce."""
    blocks = text.transformer.resblocks
    unsupported = [
        reason
        for reason, present in (
            ("a class token", text.cls_emb is not None),
            (f"pool_type {text.pool_type!r}", text.pool_type != "argmax"),
            ("a linear projection layer", not isinstance(text.text_projection, nn.Parameter)),
            ("custom attention blocks", not all(isinstance(b.attn, nn.MultiheadAttention) for b in blocks)),
            ("a non-GELU MLP", not all(type(b.mlp.gelu) is nn.GELU for b in blocks)),
        )
        if present
    ]
    if unsupported:
        raise ValueError(f"open_clip text tower with {', '.join(unsupported)} cannot be converted")
    layer_scale = blocks[0].ls_1.gamma.flatten()[0].item() if hasattr(blocks[0].ls_1, "gamma") else None
    return TextSpec(
        width=text.width,
        heads=text.heads,
        layers=len(blocks),
        mlp_ratio=blocks[0].mlp.c_fc.out_features / text.width,
        context_length=text.context_length,
        vocab_size=text.vocab_size,
        output_dim=text.output_dim,
        causal=text.attn_mask is not None,
        pad_mask=text.use_pad_mask,
        pad_id=text.pad_id,
        layer_scale=layer_scale,
        attention=attention,
    )


def open_clip_text_state_to_ours(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename open_clip keys: resblocks.i.attn.in_proj_* → blocks.i.attn.qkv.*, out_proj → proj, c_fc/c_proj →
    fc1/fc2. nn.MultiheadAttention stores q, k, v concatenated with heads contiguous, timm's layout."""
    renames = (
        ("transformer.resblocks.", "blocks."),
        (".attn.in_proj_weight", ".attn.qkv.weight"),
        (".attn.in_proj_bias", ".attn.qkv.bias"),
        (".attn.out_proj.", ".attn.proj."),
        (".mlp.c_fc.", ".mlp.fc1."),
        (".mlp.c_proj.", ".mlp.fc2."),
    )
    renamed = {}
    for key, value in state.items():
        for old, new in renames:
            key = key.replace(old, new)
        renamed[key] = value
    return renamed


def _load_compatible(target: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load every weight of `state`; only parameters the new attention adds (QK-norm, bias offset) may be new."""

    def added(key: str) -> bool:
        return any(f".{name}" in key for name in ("q_norm", "k_norm", "bias_offset"))

    missing, unexpected = target.load_state_dict({k: v for k, v in state.items() if not added(k)}, strict=False)
    unexplained = [key for key in missing if not added(key)]
    if unexplained or unexpected:
        raise ValueError(f"{source}: weights do not map onto TextEncoder ({unexplained=}, {unexpected=})")
