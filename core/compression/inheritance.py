"""Weight inheritance from a teacher of the same family (TinyCLIP §3.2; papers.md §2.2, `weight_inherit.py`).

- Manual: every block list (`…blocks.<i>.` / `…resblocks.<i>.`; fastvit's per-stage `stages.<s>.blocks.<i>.` are
  separate lists) is subsampled uniformly, "interval_front": student layer i ← teacher layer i·⌊L_t/L_s⌋; every
  tensor is front-sliced to the student's shape (`teacher[:s0, :s1, …]`), except the packed q/k/v projections,
  which are viewed as (3, H, d_h, d_in) and sliced to the first H_s heads and first d_in_s inputs (d_h must match),
  and a ViT's image position table at another patch grid, which is resampled to the student's grid first;
  single-element tensors (the logit scale, BN counters) are copied whole.
- Automatic: the student IS the teacher with masks on it (`inherit_automatic` returns a trainable copy).
"""

from __future__ import annotations

import copy
import re
from collections import defaultdict

import torch
from timm.layers import resample_abs_pos_embed
from torch import nn

_BLOCK = re.compile(r"^(?P<prefix>(?:.*\.)?(?:blocks|resblocks))\.(?P<index>\d+)\.(?P<rest>.+)$")
_PACKED_QKV = (".qkv.weight", ".qkv.bias", ".in_proj_weight", ".in_proj_bias")


class InheritanceError(ValueError):
    """The teacher cannot give the student a tensor (not the same family, or smaller somewhere)."""


def inherit_automatic(teacher: nn.Module) -> nn.Module:
    """A trainable copy of the teacher, to put masks on (the teacher itself stays the frozen distillation target)."""
    student = copy.deepcopy(teacher)
    student.train()
    for parameter in student.parameters():
        parameter.requires_grad_(True)
    return student


def layer_map(student_keys: list[str], teacher_keys: list[str]) -> dict[str, list[int]]:
    """Per block list (by prefix): the teacher layer index each student layer inherits."""

    def depths(keys: list[str]) -> dict[str, int]:
        found: dict[str, int] = defaultdict(int)
        for key in keys:
            if match := _BLOCK.match(key):
                found[match["prefix"]] = max(found[match["prefix"]], int(match["index"]) + 1)
        return found

    student, teacher = depths(student_keys), depths(teacher_keys)
    mapping = {}
    for prefix, depth in student.items():
        if prefix not in teacher:
            raise InheritanceError(
                f"the teacher has no block list '{prefix}' (is it the same model family? To start from the weights "
                "that do map, e.g. MobileCLIP2-S0 into MobileCLIP-S0, set model.pretrained to the checkpoint)"
            )
        if teacher[prefix] < depth:
            raise InheritanceError(f"'{prefix}': the student has {depth} layers, the teacher only {teacher[prefix]}")
        step = teacher[prefix] // depth
        mapping[prefix] = list(range(0, depth * step, step))
    return mapping


@torch.no_grad()
def inherit_manual(student: nn.Module, teacher: nn.Module) -> dict[str, str]:
    """Load the teacher's subsampled, front-sliced tensors into `student`; returns student key → teacher key."""
    student_state, teacher_state = student.state_dict(), teacher.state_dict()
    layers = layer_map(list(student_state), list(teacher_state))
    sources, inherited = {}, {}
    for key, target in student_state.items():
        source_key = key
        if match := _BLOCK.match(key):
            source_key = f"{match['prefix']}.{layers[match['prefix']][int(match['index'])]}.{match['rest']}"
        if source_key not in teacher_state:
            raise InheritanceError(f"student '{key}' has no teacher counterpart '{source_key}'")
        source = teacher_state[source_key]
        if key.endswith(_PACKED_QKV):
            inherited[key] = _slice_packed_qkv(key, source, target, student, teacher, source_key)
        elif key.endswith("pos_embed") and source.shape[1] != target.shape[1]:
            inherited[key] = _front_slice(key, _resampled_grid(key, source, student, teacher), target.shape)
        elif source.numel() == 1 and target.numel() == 1:
            inherited[key] = source.clone()
        else:
            inherited[key] = _front_slice(key, source, target.shape)
        sources[key] = source_key
    student.load_state_dict(inherited)
    return sources


def _front_slice(key: str, source: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    if source.dim() != len(shape) or any(t < s for t, s in zip(source.shape, shape, strict=True)):
        raise InheritanceError(
            f"'{key}': student shape {tuple(shape)} does not fit in teacher shape {tuple(source.shape)}"
        )
    return source[tuple(slice(0, s) for s in shape)].clone()


def _resampled_grid(key: str, source: torch.Tensor, student: nn.Module, teacher: nn.Module) -> torch.Tensor:
    """A ViT's image position table resampled to the student's patch grid (a student at another resolution, e.g.
    `model.image_size`), as timm resamples it for a new input size. A front slice would give the student the
    teacher's first rows of positions instead of its whole grid, at the wrong places."""
    owner = key.rsplit(".", 1)[0]
    student_vit, teacher_vit = student.get_submodule(owner), teacher.get_submodule(owner)
    if not (hasattr(student_vit, "patch_embed") and hasattr(teacher_vit, "patch_embed")):
        raise InheritanceError(f"'{key}': {source.shape[1]} positions in the teacher, a different number here")
    if student_vit.num_prefix_tokens != teacher_vit.num_prefix_tokens:
        raise InheritanceError(f"'{key}': the student and the teacher have different class/register tokens")
    return resample_abs_pos_embed(
        source,
        new_size=list(student_vit.patch_embed.grid_size),
        old_size=list(teacher_vit.patch_embed.grid_size),
        num_prefix_tokens=teacher_vit.num_prefix_tokens,
    )


def _slice_packed_qkv(
    key: str, source: torch.Tensor, target: torch.Tensor, student: nn.Module, teacher: nn.Module, source_key: str
) -> torch.Tensor:
    owner_path = key.rsplit(".", 2)[0] if ".qkv." in key else key.rsplit(".", 1)[0]
    teacher_path = source_key.rsplit(".", 2)[0] if ".qkv." in key else source_key.rsplit(".", 1)[0]
    head_dim = _head_dim(student.get_submodule(owner_path), target)
    teacher_head_dim = _head_dim(teacher.get_submodule(teacher_path), source)
    if head_dim != teacher_head_dim:
        raise InheritanceError(f"'{key}': head_dim {head_dim} differs from the teacher's {teacher_head_dim}")
    student_heads, teacher_heads = target.shape[0] // (3 * head_dim), source.shape[0] // (3 * head_dim)
    if student_heads > teacher_heads:
        raise InheritanceError(f"'{key}': the student has {student_heads} heads, the teacher only {teacher_heads}")
    if target.dim() == 1:
        return source.view(3, teacher_heads, head_dim)[:, :student_heads].reshape(-1).clone()
    packed = source.view(3, teacher_heads, head_dim, source.shape[1])
    if target.shape[1] > source.shape[1]:
        raise InheritanceError(f"'{key}': input width {target.shape[1]} exceeds the teacher's {source.shape[1]}")
    return packed[:, :student_heads, :, : target.shape[1]].reshape(target.shape).clone()


def _head_dim(attention: nn.Module, packed: torch.Tensor) -> int:
    return packed.shape[0] // (3 * int(attention.num_heads))
