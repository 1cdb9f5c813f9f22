"""What a tower offers to the masks: attention layers (heads), FFNs (units) and, for transformer towers, the
residual stream (hidden dims). Found by duck typing, never by class name, so new modules that keep the shapes
(a sigmoid-attention block, an MCt text encoder) are covered without changes here.

- Attention: a module with `qkv` (nn.Linear) + `proj` (nn.Linear) + `num_heads` (timm ViT / fastvit MHSA and
  look-alikes), or an `nn.MultiheadAttention` (open_clip's ResidualAttentionBlock).
- FFN: `fc1` + `fc2` (nn.Linear or 1×1 nn.Conv2d, fc1's outputs are fc2's inputs) with nothing learnable between
  them (a `norm`/`bn` that is not Identity or a `gate` means it is not a plain FFN, e.g. squeeze-excitation), or
  open_clip's `c_fc` + `c_proj`.
- Hidden stream: a timm VisionTransformer (`patch_embed`, `blocks`, `norm`) or an open_clip TextTransformer
  (`token_embedding`, `transformer.resblocks`, `ln_final`). Knowing the stream means knowing every tensor that
  writes to it (embeddings, branch outputs), reads it (projections) or is indexed by it (LayerNorms,
  LayerScales), which is family knowledge; other towers have no hidden mask and say so.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal

from torch import nn

MaskKind = Literal["heads", "intermediate", "hidden"]
MASK_KINDS: tuple[MaskKind, ...] = ("heads", "intermediate", "hidden")


class StructureError(ValueError):
    """A tower lacks the structure a mask kind needs, or has a form the pruner cannot keep exact."""


@dataclass(frozen=True)
class TensorRef:
    """One tensor attribute (`owner.name`) and the axis that runs over the hidden dimensions."""

    owner: nn.Module
    name: str
    axis: int


@dataclass(eq=False)
class AttentionLayer:
    path: str
    module: nn.Module

    @property
    def is_mha(self) -> bool:
        return isinstance(self.module, nn.MultiheadAttention)

    @property
    def out_proj(self) -> nn.Linear:
        return self.module.out_proj if self.is_mha else self.module.proj

    @property
    def num_heads(self) -> int:
        return int(self.module.num_heads)

    @property
    def head_dim(self) -> int:
        if self.is_mha:
            return self.module.in_proj_weight.shape[0] // (3 * self.num_heads)
        return self.module.qkv.out_features // (3 * self.num_heads)

    @property
    def parameters(self) -> int:
        """Parameters of the input and output projections (what a head is charged for; §9)."""
        if self.is_mha:
            tensors = [self.module.in_proj_weight, self.module.in_proj_bias]
        else:
            tensors = [self.module.qkv.weight, self.module.qkv.bias]
        tensors += [self.out_proj.weight, self.out_proj.bias]
        return sum(t.numel() for t in tensors if t is not None)


@dataclass(eq=False)
class MlpLayer:
    path: str
    module: nn.Module
    fc1: nn.Module
    fc2: nn.Module

    @property
    def units(self) -> int:
        return self.fc1.weight.shape[0]

    @property
    def parameters(self) -> int:
        return sum(p.numel() for m in (self.fc1, self.fc2) for p in (m.weight, m.bias) if p is not None)


@dataclass(eq=False)
class HiddenStream:
    """The residual stream of a transformer tower, width `width`.

    `entry` is the module whose (first) input is the stream at its start (a forward pre-hook scales it by the hidden
    mask); `entry_writers` are the tensors that produce that input (the mask is folded into them at pruning);
    `norms` are the LayerNorms over the stream (computed over kept dims only while masked); `sliced` are tensors
    indexed by the stream that are only sliced (embeddings behind a pre-norm, LayerScale gains, output
    projections); `width_attrs` are integer attributes equal to the width that pruning updates.
    """

    width: int
    entry: nn.Module
    entry_writers: list[TensorRef]
    norms: list[nn.LayerNorm]
    sliced: list[TensorRef]
    width_attrs: list[tuple[nn.Module, str]] = field(default_factory=list)


@dataclass(eq=False)
class TowerStructure:
    name: str
    module: nn.Module
    attention: list[AttentionLayer]
    mlp: list[MlpLayer]
    hidden: HiddenStream | None
    problems: dict[str, str] = field(default_factory=dict)  # mask kind -> why the tower's form is unsupported

    def offers(self, kind: MaskKind) -> bool:
        """Whether masks of `kind` can sit on this tower (what `auto` mask lists pick)."""
        try:
            self.require(kind)
        except StructureError:
            return False
        return True

    def require(self, kind: MaskKind) -> None:
        """Raise a StructureError naming the tower and mask kind if the tower has nothing to mask for it."""
        what = type(self.module).__name__
        if kind in self.problems:
            raise StructureError(
                f"{self.name}_masks: '{kind}' on the {self.name} tower ({what}): {self.problems[kind]}"
            )
        if kind == "heads" and not self.attention:
            raise StructureError(
                f"{self.name}_masks: 'heads' requested but the {self.name} tower ({what}) has no attention layer "
                "(a module with qkv + proj + num_heads, or nn.MultiheadAttention)"
            )
        if kind == "intermediate" and not self.mlp:
            raise StructureError(
                f"{self.name}_masks: 'intermediate' requested but the {self.name} tower ({what}) has no FFN "
                "(fc1 + fc2 as Linear or 1x1 Conv2d, or c_fc + c_proj)"
            )
        if kind == "hidden" and self.hidden is None:
            raise StructureError(
                f"{self.name}_masks: 'hidden' requested but the {self.name} tower ({what}) has no residual stream "
                "the hidden mask supports (a timm VisionTransformer or an open_clip TextTransformer)"
            )

    def summary(self) -> dict[str, object]:
        return {
            "attention": {a.path: a.num_heads for a in self.attention},
            "mlp": {m.path: m.units for m in self.mlp},
            "hidden": self.hidden.width if self.hidden else None,
        }


def discover(tower: nn.Module, name: str) -> TowerStructure:
    """The tower's prunable structure. Unsupported forms are recorded, and raised only for the kinds they block."""
    attention: list[AttentionLayer] = []
    mlp: list[MlpLayer] = []
    problems: dict[str, str] = {}
    for path, module in tower.named_modules():
        if _is_attention(module):
            attention.append(AttentionLayer(path, module))
            if (problem := _attention_problem(module)) is not None:
                problems["heads"] = problems["hidden"] = f"{path}: {problem}"
        elif (pair := _ffn_pair(module)) is not None:
            mlp.append(MlpLayer(path, module, *pair))
    inside_sites = {id(m) for site in (*attention, *mlp) for m in site.module.modules()}
    try:
        hidden = _vit_stream(tower, inside_sites) or _text_stream(tower, inside_sites)
    except StructureError as err:
        hidden, problems["hidden"] = None, str(err)
    return TowerStructure(name, tower, attention, mlp, hidden, problems)


def _is_attention(module: nn.Module) -> bool:
    if isinstance(module, nn.MultiheadAttention):
        return True
    qkv, proj = getattr(module, "qkv", None), getattr(module, "proj", None)
    return isinstance(qkv, nn.Linear) and isinstance(proj, nn.Linear) and hasattr(module, "num_heads")


def _attention_problem(module: nn.Module) -> str | None:
    if isinstance(module, nn.MultiheadAttention):
        if not module._qkv_same_embed_dim or module.bias_k is not None or module.add_zero_attn:
            return "nn.MultiheadAttention with separate q/k/v dims, bias_k/v or add_zero_attn is not supported"
        return None
    if module.qkv.out_features % (3 * module.num_heads):
        return f"qkv width {module.qkv.out_features} is not 3 × num_heads ({module.num_heads}) × head_dim"
    if not _is_identity(getattr(module, "norm", None)) or getattr(module, "gate", None) is not None:
        return "a norm or gate on the concatenated head outputs changes when heads are dropped"
    return None


def _ffn_pair(module: nn.Module) -> tuple[nn.Module, nn.Module] | None:
    for first, second in (("fc1", "fc2"), ("c_fc", "c_proj")):
        fc1, fc2 = getattr(module, first, None), getattr(module, second, None)
        if not (_is_pointwise(fc1) and _is_pointwise(fc2)) or type(fc1) is not type(fc2):
            continue
        if fc1.weight.shape[0] != fc2.weight.shape[1] or hasattr(module, "gate"):
            continue
        if not (_is_identity(getattr(module, "norm", None)) and _is_identity(getattr(module, "bn", None))):
            continue
        return fc1, fc2
    return None


def _is_pointwise(module: object) -> bool:
    if isinstance(module, nn.Linear):
        return True
    return (
        isinstance(module, nn.Conv2d)
        and module.kernel_size == (1, 1)
        and module.groups == 1
        and module.stride == (1, 1)
        and module.padding in ((0, 0), "valid")
    )


def _is_identity(module: object) -> bool:
    return module is None or isinstance(module, nn.Identity)


def _stream_norms(tower: nn.Module, width: int, inside_sites: set[int]) -> list[nn.LayerNorm]:
    return [
        m
        for m in tower.modules()
        if isinstance(m, nn.LayerNorm) and tuple(m.normalized_shape) == (width,) and id(m) not in inside_sites
    ]


def _layer_scales(blocks: Iterator[nn.Module], width: int, inside_sites: set[int]) -> list[TensorRef]:
    refs = []
    for block in blocks:
        for m in block.modules():
            gamma = getattr(m, "gamma", None)
            if id(m) not in inside_sites and isinstance(gamma, nn.Parameter) and tuple(gamma.shape) == (width,):
                refs.append(TensorRef(m, "gamma", 0))
    return refs


def _vit_stream(tower: nn.Module, inside_sites: set[int]) -> HiddenStream | None:
    patch_embed, blocks = getattr(tower, "patch_embed", None), getattr(tower, "blocks", None)
    if not (isinstance(getattr(patch_embed, "proj", None), nn.Conv2d) and isinstance(blocks, nn.Sequential)):
        return None
    width = patch_embed.proj.out_channels
    if getattr(tower, "attn_pool", None) is not None or not _is_identity(getattr(patch_embed, "norm", None)):
        raise StructureError("hidden masks need token/avg pooling (no attn_pool) and no patch-embedding norm")
    embeddings = [TensorRef(patch_embed.proj, "weight", 0)]
    embeddings += [TensorRef(patch_embed.proj, "bias", 0)] if patch_embed.proj.bias is not None else []
    embeddings += [
        TensorRef(tower, name, -1)
        for name in ("cls_token", "reg_token", "pos_embed")
        if getattr(tower, name, None) is not None
    ]
    sliced = _layer_scales(iter(blocks), width, inside_sites)
    head = getattr(tower, "head", None)
    if isinstance(head, nn.Linear):
        sliced.append(TensorRef(head, "weight", 1))
    norm_pre = getattr(tower, "norm_pre", None)
    if isinstance(norm_pre, nn.LayerNorm):  # a pre-norm produces the stream: the mask folds into its affine
        if norm_pre.weight is None:
            raise StructureError("hidden masks need a pre-norm with an affine gain to fold the mask into")
        entry_writers = [TensorRef(norm_pre, n, 0) for n in ("weight", "bias") if getattr(norm_pre, n) is not None]
        sliced += embeddings
    else:
        entry_writers = embeddings
    attrs = [(tower, a) for a in ("embed_dim", "num_features", "head_hidden_size") if getattr(tower, a, None) == width]
    norms = _stream_norms(tower, width, inside_sites)
    # the first block, not `blocks`: with gradient checkpointing timm runs the blocks without calling the Sequential
    return HiddenStream(width, blocks[0], entry_writers, norms, sliced, attrs)


def _text_stream(tower: nn.Module, inside_sites: set[int]) -> HiddenStream | None:
    embedding, transformer = getattr(tower, "token_embedding", None), getattr(tower, "transformer", None)
    if not (isinstance(embedding, nn.Embedding) and hasattr(transformer, "resblocks") and hasattr(tower, "ln_final")):
        return None
    width = embedding.embedding_dim
    entry_writers = [TensorRef(embedding, "weight", 1), TensorRef(tower, "positional_embedding", -1)]
    if getattr(tower, "cls_emb", None) is not None:
        entry_writers.append(TensorRef(tower, "cls_emb", -1))
    sliced = _layer_scales(iter(transformer.resblocks), width, inside_sites)
    projection = getattr(tower, "text_projection", None)
    if isinstance(projection, nn.Linear):
        sliced.append(TensorRef(projection, "weight", 1))
    elif isinstance(projection, nn.Parameter):
        sliced.append(TensorRef(tower, "text_projection", 0))
    attrs = [(m, "width") for m in (tower, transformer) if getattr(m, "width", None) == width]
    norms = _stream_norms(tower, width, inside_sites)
    return HiddenStream(width, transformer, entry_writers, norms, sliced, attrs)
