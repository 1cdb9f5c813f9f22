"""The CLIP loss against hand-computed values and open_clip's own implementation."""

from __future__ import annotations

import math

import pytest
import torch
from open_clip.loss import ClipLoss

from ablate.core.losses import clip_loss


def test_identity_pairs_hand_computed() -> None:
    # logits = I: each row is CE([1, 0], 0) = log(1 + e^-1), the same in both directions.
    eye = torch.eye(2)
    expected = math.log(1 + math.exp(-1))
    assert clip_loss(eye, eye, torch.tensor(1.0)).item() == pytest.approx(expected, abs=1e-6)


def test_asymmetric_pairs_hand_computed() -> None:
    images = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    texts = torch.tensor([[0.8, 0.6], [0.0, 1.0]])
    # s·I·Tᵀ with s = 2: [[1.6, 0.0], [1.92, 1.6]]
    image_rows = [math.log(1 + math.exp(0.0 - 1.6)), math.log(math.exp(1.92) + math.exp(1.6)) - 1.6]
    # text rows are the columns: [[1.6, 1.92], [0.0, 1.6]]
    text_rows = [math.log(math.exp(1.6) + math.exp(1.92)) - 1.6, math.log(1 + math.exp(0.0 - 1.6))]
    expected = 0.5 * (sum(image_rows) / 2 + sum(text_rows) / 2)
    assert clip_loss(images, texts, torch.tensor(2.0)).item() == pytest.approx(expected, abs=1e-6)


def test_single_pair_gives_zero() -> None:
    feature = torch.nn.functional.normalize(torch.randn(1, 8), dim=-1)
    assert clip_loss(feature, feature, torch.tensor(14.3)).item() == 0.0


def test_invariant_to_permuting_pairs_together() -> None:
    generator = torch.Generator().manual_seed(0)
    images = torch.nn.functional.normalize(torch.randn(6, 16, generator=generator), dim=-1)
    texts = torch.nn.functional.normalize(torch.randn(6, 16, generator=generator), dim=-1)
    order = torch.tensor([3, 0, 5, 1, 4, 2])
    scale = torch.tensor(10.0)
    assert clip_loss(images[order], texts[order], scale).item() == pytest.approx(
        clip_loss(images, texts, scale).item(), abs=1e-6
    )


def test_matches_open_clip_cliploss() -> None:
    generator = torch.Generator().manual_seed(1)
    images = torch.nn.functional.normalize(torch.randn(8, 32, generator=generator), dim=-1)
    texts = torch.nn.functional.normalize(torch.randn(8, 32, generator=generator), dim=-1)
    scale = torch.tensor(math.exp(math.log(1 / 0.07)))
    reference = ClipLoss()(images, texts, scale)
    assert clip_loss(images, texts, scale).item() == pytest.approx(reference.item(), abs=1e-6)


def test_perfect_alignment_at_high_temperature_approaches_zero() -> None:
    eye = torch.eye(4)
    assert clip_loss(eye, eye, torch.tensor(100.0)).item() < 1e-6
