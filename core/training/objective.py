"""One training step's loss from one batch: where the config's λ, α and `distill` meet the loss functions.

A batch holds uint8 images, C caption sets of tokens ([B, C, L]: C = 2 for MobileCLIP's B_real + B_syn) and,
when reinforced, the teachers' embeddings of the same image view and captions. The student's text tower runs
once over all C·B captions (as the reference `DRClipLoss` does), each caption set gives one contrastive and one
distillation term, and `losses.combined_loss` weighs their sums:

    L = (1-λ)·Σ_B L_CLIP(B) + λ·((1-α)·Σ_B L_distill(B) + α·L_sparsity)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ablate.core import losses
from ablate.core.config.sections import LossConfig
from ablate.core.data.pixels import to_model_input
from ablate.core.data.reinforcement_store import TeacherLayout
from ablate.core.models import CLIP
from ablate.core.teachers.ensemble import TeacherEnsemble
from ablate.core.training.distributed import ProcessGroup


@dataclass
class TeacherSource:
    """Where a batch's teacher embeddings come from: stored in the batch, or an ensemble run on it (online)."""

    layout: TeacherLayout
    online: TeacherEnsemble | None = None

    def embeddings(self, batch: dict[str, torch.Tensor], tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(teacher image [B, K·d], teacher texts [C, B, K·d]) for `tokens` [C, B, L]."""
        if self.online is None:
            return batch["teacher_image"].float(), batch["teacher_text"].float().transpose(0, 1)
        captions, size, length = tokens.shape
        texts = self.online.encode_tokens(tokens.reshape(captions * size, length))
        return self.online.encode_images(batch["image"]), texts.view(captions, size, -1)


def distillation(
    loss: LossConfig,
    layout: TeacherLayout,
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    logit_scale: torch.Tensor,
    teacher_image: torch.Tensor,
    teacher_text: torch.Tensor,
    columns: losses.Columns | None = None,
    teacher_columns: losses.Columns | None = None,
) -> torch.Tensor:
    """L_distill for one caption set: MobileCLIP's KD (student temperature) or TinyCLIP's affinity mimicking."""
    if loss.distill == "tinyclip":
        return losses.affinity_mimicking_loss(
            image_features,
            text_features,
            teacher_image,
            teacher_text,
            loss.affinity_temperature,
            layout.dims if loss.average_after_softmax else None,
            columns,
            teacher_columns,
        )
    scales = layout.logit_scales if loss.average_after_softmax else layout.logit_scales[:1]
    return losses.mobileclip_distill_loss(
        image_features,
        text_features,
        logit_scale,
        teacher_image,
        teacher_text,
        layout.dims,
        scales,
        loss.average_after_softmax,
        columns,
        teacher_columns,
    )


def global_columns(group: ProcessGroup, image: torch.Tensor, texts: torch.Tensor) -> list[losses.Columns | None]:
    """Per caption set, the global batch's image and text features this rank's rows are scored against (None in
    a single process, where the rows are the whole batch)."""
    if not group.distributed:
        return [None] * len(texts)
    images, offset = group.gather(image), group.rank * image.shape[0]
    return [losses.Columns(images, group.gather(text), offset) for text in texts]


def compute_loss(
    model: CLIP,
    batch: dict[str, torch.Tensor],
    loss: LossConfig,
    teachers: TeacherSource | None = None,
    sparsity: torch.Tensor | None = None,
    group: ProcessGroup = ProcessGroup(),
) -> dict[str, torch.Tensor]:
    """Named terms; "loss" is what is optimised, the others are logged beside it (unweighted). In a group of
    several processes each term is this rank's share: their mean over ranks is the global batch's term."""
    tokens = batch["tokens"].transpose(0, 1)  # [C, B, L]
    captions, size, length = tokens.shape
    images = to_model_input(batch["image"], model.inputs)
    image_features, text_features, logit_scale = model(images, tokens.reshape(captions * size, length))
    image_features, text_features = image_features.float(), text_features.float().view(captions, size, -1)
    columns = global_columns(group, image_features, text_features)
    terms = {
        "clip": sum(
            losses.clip_loss(image_features, text, logit_scale, column)
            for text, column in zip(text_features, columns, strict=True)
        )
    }
    distill = None
    weighted = loss.lambda_ > 0 and loss.alpha < 1
    if teachers is not None and (weighted or teachers.online is None):  # online teachers only run when they count
        with torch.set_grad_enabled(weighted and torch.is_grad_enabled()):  # logged at λ = 0, never trained
            teacher_image, teacher_texts = teachers.embeddings(batch, tokens)
            teacher_columns = global_columns(group, teacher_image.detach(), teacher_texts.detach())
            distill = sum(
                distillation(
                    loss, teachers.layout, image_features, text, logit_scale, teacher_image, teacher_text, *pair
                )
                for text, teacher_text, pair in zip(
                    text_features, teacher_texts, zip(columns, teacher_columns, strict=True), strict=True
                )
            )
        terms["distill"] = distill
    if sparsity is not None:
        terms["sparsity"] = sparsity
    terms["loss"] = losses.combined_loss(terms["clip"], distill, sparsity, loss.lambda_, loss.alpha)
    return terms
