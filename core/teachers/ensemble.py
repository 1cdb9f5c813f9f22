"""A frozen ensemble of K CLIP teachers, each with its own distillation temperature (papers.md §1.1–1.2).

The ensemble's output for an image or a caption is the concatenation [Ψ¹ ‖ … ‖ Ψᴷ] of the teachers' L2-normalised
embeddings, exactly the vector DataCompDR stores, so stored and online distillation feed the loss the same
tensor. `dims` says where each teacher's slice ends and `logit_scales` holds the multipliers 1/τ_k (100 for
DataCompDR's teachers, 70/60 for MobileCLIP2's).

A teacher is any model the factory builds (ours, or an open_clip architecture such as ViT-L-14) with weights named
as open_clip names them (`core/models/weights.py`: a file, a run folder of ours, `hf-hub:org/repo`, or a pretrained
tag read from the local Hugging Face cache). A teacher must load completely: a missing tensor would distil from
random weights.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ablate.core.config.base import ConfigError
from ablate.core.config.sections import TeacherSpec
from ablate.core.data.pixels import to_model_input
from ablate.core.data.tokenizer import clip_tokenizer
from ablate.core.models import CLIP, UnknownModelError
from ablate.core.models.factory import create_model, is_known, unknown_model_message
from ablate.core.models.weights import load_weights, resolve_weights


def load_teacher(spec: TeacherSpec, where: str = "teacher") -> CLIP:
    """Build `spec.model` and load all of its weights; frozen and in eval mode. `where` names the config field
    holding the spec (`teachers.members[1]`), so an error points at the value to fix."""
    try:
        model = create_model(spec.model)
    except UnknownModelError as err:
        raise ConfigError(f"{where}.model: {err}") from None
    report = load_weights(model, spec.model, spec.checkpoint, f"{where}.checkpoint")
    if not report.complete:
        raise ConfigError(
            f"{where}.checkpoint: {spec.checkpoint!r} does not fit model {spec.model!r}: {report.summary()}"
        )
    return model.eval().requires_grad_(False)


def check_teacher(spec: TeacherSpec, where: str = "teacher") -> None:
    """What `load_teacher` would refuse, found without building the model: an unknown architecture, or weights
    that cannot be found (for dry runs and command lines, before minutes of work start)."""
    if not is_known(spec.model):
        raise ConfigError(f"{where}.model: {unknown_model_message(spec.model)}")
    resolve_weights(spec.model, spec.checkpoint, f"{where}.checkpoint")


def embedding_dim(model: CLIP) -> int:
    """Width of the model's joint embedding, found by encoding one caption (towers do not agree on a name)."""
    with torch.no_grad():
        return model.encode_text(torch.zeros(1, model.inputs.context_length, dtype=torch.long)).shape[-1]


class TeacherEnsemble(nn.Module):
    """K frozen teachers -> concatenated unit-norm embeddings; never trained, never in train mode."""

    def __init__(self, members: Sequence[CLIP], logit_scales: Sequence[float], names: Sequence[str]) -> None:
        super().__init__()
        if not members or len(members) != len(logit_scales):
            raise ValueError(f"need one logit scale per teacher, got {len(members)} teachers, {list(logit_scales)}")
        self.members = nn.ModuleList(members).eval().requires_grad_(False)
        self.logit_scales = [float(scale) for scale in logit_scales]
        self.names = list(names)
        self.dims = [embedding_dim(member) for member in members]
        self.tokenizers = [clip_tokenizer(member.inputs.context_length) for member in members]

    @classmethod
    def load(cls, specs: Sequence[TeacherSpec], where: str = "teachers.members") -> TeacherEnsemble:
        members = [load_teacher(spec, f"{where}[{index}]") for index, spec in enumerate(specs)]
        return cls(members, [spec.logit_scale for spec in specs], [spec.model for spec in specs])

    def train(self, mode: bool = True) -> TeacherEnsemble:
        return super().train(False)  # teachers stay in eval mode whatever the student does

    @property
    def width(self) -> int:
        return sum(self.dims)

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
        """uint8 [B, 3, H, W] (one batch for all, resized per teacher) or one batch per teacher -> [B, Σ d_k]."""
        batches = [images] * len(self.members) if isinstance(images, torch.Tensor) else list(images)
        return torch.cat(
            [
                member.encode_image(to_model_input(batch, member.inputs)).float()
                for member, batch in zip(self.members, batches, strict=True)
            ],
            dim=1,
        )

    @torch.no_grad()
    def encode_texts(self, texts: Sequence[str], device: torch.device | str = "cpu") -> torch.Tensor:
        """Captions -> [B, Σ d_k], each teacher with its own tokenizer context."""
        return torch.cat(
            [
                member.encode_text(tokenizer(list(texts)).to(device)).float()
                for member, tokenizer in zip(self.members, self.tokenizers, strict=True)
            ],
            dim=1,
        )

    @torch.no_grad()
    def encode_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """The student's CLIP-BPE tokens -> [B, Σ d_k], fitted to each teacher's context length."""
        return torch.cat(
            [
                member.encode_text(fit_context(tokens, member.inputs.context_length, tokenizer.eot_token_id)).float()
                for member, tokenizer in zip(self.members, self.tokenizers, strict=True)
            ],
            dim=1,
        )


def fit_context(tokens: torch.Tensor, context_length: int, eot_token_id: int) -> torch.Tensor:
    """Pad with zeros, or truncate keeping end-of-text last, as open_clip's tokenizer does for long captions."""
    if tokens.shape[1] >= context_length:
        fitted = tokens[:, :context_length].clone()
        cut = tokens[:, context_length:].ne(0).any(dim=1)
        fitted[:, -1] = torch.where(cut, eot_token_id, fitted[:, -1])  # no host sync, unlike boolean indexing
        return fitted
    return torch.nn.functional.pad(tokens, (0, context_length - tokens.shape[1]))
