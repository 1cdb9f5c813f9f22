"""Training losses, written to read like the papers (shared/research/papers.md §6.1, §8 B).

Conventions follow open_clip's `ClipLoss` exactly: features arrive L2-normalised from the model, `logit_scale`
is the multiplier exp(θ) (already exponentiated), each direction's cross-entropy is averaged over rows and the
loss is the mean of the two directions, so a batch of one gives exactly 0.

The distillation losses (MobileCLIP §1.2, TinyCLIP §2.1) keep those conventions and the ones of the reference code
checked in papers.md §9: the teacher's row softmax is a soft target for a soft cross-entropy (not KL: the teacher
entropy is not subtracted, which leaves the gradient unchanged), every term is a mean over rows, and no feature is
re-normalised inside a loss.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Columns:
    """The whole (global) batch's features, when the features passed to a loss are only rows
    `offset : offset + b` of it: one process's share of a multi-process batch (core/training/distributed.py).

    Each loss then scores its local rows against every column, as open_clip's ClipLoss with `local_loss=True`:
    every row of the global logit matrices belongs to exactly one process, so the mean over processes of these
    row means is the single-process loss on the global batch. Without `Columns` the rows are the whole batch.
    """

    image: torch.Tensor  # [N, d], N = world size × b
    text: torch.Tensor  # [N, d]
    offset: int = 0  # index of the first local row in the global batch


def clip_logits(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    logit_scale: torch.Tensor,
    columns: Columns | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """logits_per_image = s·I·Tᵀ and logits_per_text = s·T·Iᵀ (its transpose); with `columns`, the local rows
    against the global batch's columns: s·I·T_allᵀ and s·T·I_allᵀ."""
    if columns is not None:
        return logit_scale * image_features @ columns.text.T, logit_scale * text_features @ columns.image.T
    logits_per_image = logit_scale * image_features @ text_features.T
    return logits_per_image, logits_per_image.T


def clip_loss(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    logit_scale: torch.Tensor,
    columns: Columns | None = None,
) -> torch.Tensor:
    """L_CLIP = ½[CE(s·I·Tᵀ, y) + CE(s·T·Iᵀ, y)] with y = arange(b): the i-th image matches the i-th text.

    open_clip's ClipLoss; with `columns` its `local_loss` form, whose labels are shifted to the local rows.
    """
    logits_per_image, logits_per_text = clip_logits(image_features, text_features, logit_scale, columns)
    offset = columns.offset if columns is not None else 0
    labels = torch.arange(offset, offset + logits_per_image.shape[0], device=logits_per_image.device)
    return 0.5 * (F.cross_entropy(logits_per_image, labels) + F.cross_entropy(logits_per_text, labels))


def mobileclip_distill_loss(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    logit_scale: torch.Tensor,
    teacher_image: torch.Tensor,
    teacher_text: torch.Tensor,
    teacher_dims: Sequence[int],
    teacher_scales: Sequence[float],
    average_after_softmax: bool = True,
    columns: Columns | None = None,
    teacher_columns: Columns | None = None,
) -> torch.Tensor:
    """MobileCLIP's L_Distill = ½(L^I2T + L^T2I) against a K-teacher ensemble [papers.md §1.2, §8 B].

    L^I2T = −(1/b) Σ_i Σ_j P^I2T_ij · log softmax_row(s·Φ_I Φ_Tᵀ)_ij, with the target
    P^I2T = (1/K) Σ_k softmax_row(s_k·Ψ^k_I Ψ^kᵀ_T); L^T2I is the same with texts as rows. Averaging the softmaxes
    is what makes this the paper's (1/K) Σ_k KL(p_k ‖ q) up to the teacher entropies, a constant (§1.2, §7 item 5).

    `teacher_image` / `teacher_text` are the stored concatenations [b, Σ d_k] of the teachers' unit-norm embeddings,
    cut into per-teacher slices by `teacher_dims` (e.g. [768, 768]); `teacher_scales` holds one logit multiplier
    per teacher: [100, 100] for DataCompDR, [70, 60] for the MobileCLIP2 DFN teachers (§7 item 4).

    `average_after_softmax=False` is the reference code's other path: the full stored vectors act as one teacher,
    so one scale s multiplies s·(cos_1 + … + cos_K) before a single softmax and `teacher_dims` is ignored (§9).
    The patch's quirks are not reproduced (§9): scales are never broadcast or defaulted, and dims must cover the
    stored width exactly.

    `columns` / `teacher_columns` (both or neither): the global batch's student and teacher features when these
    are one process's rows of it; every term is a row mean, so rows split across processes exactly.
    """
    _check_features(image_features, text_features, teacher_image, teacher_text)
    if (columns is None) != (teacher_columns is None):
        raise ValueError("columns and teacher_columns go together: both (a multi-process batch) or neither")
    target_i2t, target_t2i = _teacher_targets(
        teacher_image, teacher_text, teacher_dims, teacher_scales, average_after_softmax, teacher_columns
    )
    logits_per_image, logits_per_text = clip_logits(image_features, text_features, logit_scale, columns)
    return 0.5 * (F.cross_entropy(logits_per_image, target_i2t) + F.cross_entropy(logits_per_text, target_t2i))


@dataclass(frozen=True)
class MobileCLIPLoss:
    """The terms of Eq. 3, unweighted, for logging; `total` is the one to back-propagate."""

    clip_real: torch.Tensor
    clip_syn: torch.Tensor
    distill_real: torch.Tensor
    distill_syn: torch.Tensor
    total: torch.Tensor


def mobileclip_total_loss(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    syn_text_features: torch.Tensor,
    logit_scale: torch.Tensor,
    teacher_image: torch.Tensor,
    teacher_text: torch.Tensor,
    teacher_syn_text: torch.Tensor,
    teacher_dims: Sequence[int],
    teacher_scales: Sequence[float],
    lam: float,
    average_after_softmax: bool = True,
) -> MobileCLIPLoss:
    """Σ_{B ∈ {B_real, B_syn}} L_Total(B), with L_Total(B) = (1−λ)·L_CLIP(B) + λ·L_Distill(B) [papers.md §1.2 Eq. 2–3].

    Both batches share the student image features and the teacher image embeddings; B_real pairs them with the
    ground-truth captions, B_syn with the synthetic ones. The halves are added with no ½ and each has its own
    contrastive term, grouped as the reference code does (§9): (1−λ)(CLIP_real + CLIP_syn) + λ(KD_real + KD_syn).
    λ is 1.0 for the S* models and 0.75 for ViT-B (§7 item 1).
    """
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"lam (λ, the distillation weight) must be in [0, 1], got {lam}")
    teachers = (teacher_dims, teacher_scales, average_after_softmax)
    # The distillation terms come first: they check every shape and say which argument is wrong.
    distill_real = mobileclip_distill_loss(
        image_features, text_features, logit_scale, teacher_image, teacher_text, *teachers
    )
    distill_syn = mobileclip_distill_loss(
        image_features, syn_text_features, logit_scale, teacher_image, teacher_syn_text, *teachers
    )
    clip_real = clip_loss(image_features, text_features, logit_scale)
    clip_syn = clip_loss(image_features, syn_text_features, logit_scale)
    total = combined_loss(clip_real + clip_syn, distill_real + distill_syn, None, lam, alpha=0.0)
    return MobileCLIPLoss(clip_real, clip_syn, distill_real, distill_syn, total)


def combined_loss(
    clip: torch.Tensor,
    distill: torch.Tensor | None,
    sparsity: torch.Tensor | None,
    lam: float,
    alpha: float,
) -> torch.Tensor:
    """The research's objective, L = (1−λ)·L_CLIP + λ·((1−α)·L_distill + α·L_sparsity).

    `clip` and `distill` are already summed over the caption batches (Eq. 3: B_real + B_syn); the sparsity term
    is a property of the model, counted once. λ = 0 is exactly the CLIP loss (no teacher is read) and α = 0 is
    MobileCLIP's L_Total. A weight that is zero never multiplies a missing term, so a plain run needs no
    teachers. `sparsity` is None outside a compression stage's mask phase, where there is no constraint to
    enforce and the term is 0: the distillation keeps its weight λ(1−α), so α means the same in every phase.
    """
    if not (0.0 <= lam <= 1.0 and 0.0 <= alpha <= 1.0):
        raise ValueError(f"λ and α must lie in [0, 1], got λ={lam}, α={alpha}")
    total = (1.0 - lam) * clip if lam < 1.0 else clip.new_zeros(())
    if lam > 0.0 and alpha < 1.0:
        if distill is None:
            raise ValueError(f"λ={lam} and α={alpha} weight a distillation term, but there are no teacher embeddings")
        total = total + lam * (1.0 - alpha) * distill
    if lam > 0.0 and alpha > 0.0 and sparsity is not None:
        total = total + lam * alpha * sparsity
    return total


def affinity_mimicking_loss(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    teacher_image: torch.Tensor,
    teacher_text: torch.Tensor,
    temperature: float = 1 / 50,
    teacher_dims: Sequence[int] | None = None,
    columns: Columns | None = None,
    teacher_columns: Columns | None = None,
) -> torch.Tensor:
    """TinyCLIP's affinity mimicking, ½[CE(A^s_I2T ← A^t_I2T) + CE(A^s_T2I ← A^t_T2I)] [papers.md §2.1, §8 B].

    The affinities are row softmaxes of I·Tᵀ/τ with τ fixed (1/50 in TinyCLIP) for teacher AND student: the
    reference code pins the student's logit scale to 50 as well. That is MobileCLIP's distillation with
    s = s_k = 1/τ, so it is computed by it. Without `teacher_dims` the teacher is one embedding pair (TinyCLIP's
    single teacher); with them the stored vectors are K teachers' slices and the target is the mean of their
    affinities (average after softmax, as for MobileCLIP's ensemble).
    """
    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a positive finite number, got {temperature}")
    scale = 1.0 / temperature
    ensemble = teacher_dims is not None and len(teacher_dims) > 1
    return mobileclip_distill_loss(
        image_features,
        text_features,
        image_features.new_tensor(scale),
        teacher_image,
        teacher_text,
        teacher_dims=list(teacher_dims) if ensemble else (),  # one pair: taken whole by the single-softmax path
        teacher_scales=[scale] * (len(teacher_dims) if ensemble else 1),
        average_after_softmax=ensemble,
        columns=columns,
        teacher_columns=teacher_columns,
    )


def _teacher_targets(
    teacher_image: torch.Tensor,
    teacher_text: torch.Tensor,
    teacher_dims: Sequence[int],
    teacher_scales: Sequence[float],
    average_after_softmax: bool,
    columns: Columns | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(P^I2T, P^T2I): the mean over teachers of the row softmaxes of s_k·Ψ^k_I Ψ^kᵀ_T and its transpose.

    Without averaging the full vectors are a single teacher (K = 1). The targets are detached: the teacher is a
    fixed target, never trained by this loss, even when its tensors are shared with the student. With `columns`
    the rows are local and the columns the global batch's, each cut into the same per-teacher slices.
    """
    scales = [float(scale) for scale in teacher_scales]
    if not all(math.isfinite(scale) and scale > 0 for scale in scales):
        raise ValueError(f"teacher_scales must be positive finite multipliers, got {scales}")
    if average_after_softmax:
        dims = [int(dim) for dim in teacher_dims]
        if not dims or any(dim <= 0 for dim in dims) or sum(dims) != teacher_image.shape[1]:
            raise ValueError(
                f"teacher_dims must be positive and sum to the stored teacher width {teacher_image.shape[1]}, "
                f"got {dims}"
            )
        if len(scales) != len(dims):
            raise ValueError(
                f"teacher_scales needs one scale per teacher: {len(dims)} teachers (teacher_dims={dims}), got {scales}"
            )
        image_slices, text_slices = teacher_image.split(dims, dim=1), teacher_text.split(dims, dim=1)
        column_slices: list[Columns | None] = [None] * len(dims)
        if columns is not None:
            split = zip(columns.image.split(dims, dim=1), columns.text.split(dims, dim=1), strict=True)
            column_slices = [Columns(image, text, columns.offset) for image, text in split]
    else:
        if len(scales) != 1:
            raise ValueError(
                "teacher_scales must hold exactly one scale when average_after_softmax=False (the concatenated "
                f"vectors are one teacher), got {scales}"
            )
        image_slices, text_slices, column_slices = (teacher_image,), (teacher_text,), [columns]
    logits = [
        clip_logits(image, text, image.new_tensor(scale), column)
        for image, text, scale, column in zip(image_slices, text_slices, scales, column_slices, strict=True)
    ]
    target_i2t = torch.stack([logits_i2t.softmax(dim=1) for logits_i2t, _ in logits]).mean(dim=0)
    target_t2i = torch.stack([logits_t2i.softmax(dim=1) for _, logits_t2i in logits]).mean(dim=0)
    return target_i2t.detach(), target_t2i.detach()


def _check_features(
    image_features: torch.Tensor, text_features: torch.Tensor, teacher_image: torch.Tensor, teacher_text: torch.Tensor
) -> None:
    """Shapes the distillation losses need, with errors that name the argument and the values."""
    named = {
        "image_features": image_features,
        "text_features": text_features,
        "teacher_image": teacher_image,
        "teacher_text": teacher_text,
    }
    for name, tensor in named.items():
        if tensor.ndim != 2:
            raise ValueError(f"{name} must be a [batch, dim] matrix, got shape {tuple(tensor.shape)}")
    if text_features.shape != image_features.shape:
        raise ValueError(
            f"text_features shape {tuple(text_features.shape)} must equal image_features shape "
            f"{tuple(image_features.shape)}"
        )
    if teacher_text.shape != teacher_image.shape:
        raise ValueError(
            f"teacher_text shape {tuple(teacher_text.shape)} must equal teacher_image shape "
            f"{tuple(teacher_image.shape)}"
        )
    if teacher_image.shape[0] != image_features.shape[0]:
        raise ValueError(
            f"teacher_image batch size {teacher_image.shape[0]} must equal image_features batch size "
            f"{image_features.shape[0]}"
        )
