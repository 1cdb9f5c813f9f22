"""The model factory: tiny towers for CPU work, the published MobileCLIP pairings without any download."""

from __future__ import annotations

import math

import pytest
import torch
from open_clip.transformer import VisionTransformer as OpenClipViT

from ablate.core.config.base import ConfigError
from ablate.core.config.sections import ModelConfig
from ablate.core.models import UnknownModelError, parameter_counts
from ablate.core.models.build import _resize_images, build_model
from ablate.core.models.factory import create_model, list_models


def test_tiny_outputs_are_unit_vectors() -> None:
    model = create_model("tiny")
    images = torch.randn(3, 3, 64, 64)
    tokens = torch.randint(0, 49407, (3, 32))
    image_features, text_features, scale = model(images, tokens)
    assert image_features.shape == text_features.shape == (3, 128)
    assert torch.allclose(image_features.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert torch.allclose(text_features.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert scale.item() == pytest.approx(1 / 0.07, rel=1e-5)


def test_logit_scale_is_clamped_to_ln_100() -> None:
    model = create_model("tiny")
    with torch.no_grad():
        model.logit_scale.fill_(10.0)
    model.clamp_logit_scale()
    assert model.logit_scale.item() == pytest.approx(math.log(100))
    with torch.no_grad():
        model.logit_scale.fill_(-1.0)
    model.clamp_logit_scale()
    assert model.logit_scale.item() == 0.0


def test_parameter_counts_add_up() -> None:
    counts = parameter_counts(create_model("tiny"))
    assert counts["total"] == counts["image"] + counts["text"] + 1  # + the temperature


def test_mobileclip2_s0_builds_offline(no_network: None) -> None:
    model = create_model("MobileCLIP2-S0")
    counts = parameter_counts(model)
    assert counts["image"] == pytest.approx(11.41e6, rel=0.01)  # papers.md §6.2, measured with open_clip 3.3
    assert counts["text"] == pytest.approx(63.43e6, rel=0.01)
    assert model.inputs.image_size == 256 and model.inputs.context_length == 77
    assert model.inputs.mean == (0.0, 0.0, 0.0)  # MobileCLIP v1/v2-S0 images are not mean/std normalised


def test_registry_lists_mobileclip_family_and_rejects_unknown_names() -> None:
    names = {entry.name for entry in list_models()}
    assert {"tiny", "small", "MobileCLIP-S1", "MobileCLIP2-S0", "MobileCLIP-B", "MobileCLIP-S0"} <= names
    assert {"mci-tiny", "mct-tiny", "mobileclip-tiny"} <= names
    with pytest.raises(UnknownModelError, match=r"tinyy.*available: .*tiny"):
        create_model("tinyy")


def test_image_size_trains_a_model_below_its_native_resolution() -> None:
    vit = build_model(ModelConfig(name="tiny", image_size=32))  # ViT 64 px / 8: position table resampled to 4x4
    assert vit.inputs.image_size == 32 and vit.visual.pos_embed.shape[1] == 1 + 4 * 4
    assert vit.encode_image(torch.zeros(2, 3, 32, 32)).shape == (2, 128)
    conv = build_model(ModelConfig(name="mobileclip-tiny", image_size=96))  # MCi-style convolutions: any size
    assert conv.inputs.image_size == 96 and conv.encode_image(torch.zeros(2, 3, 96, 96)).shape == (2, 128)
    assert build_model(ModelConfig(name="tiny")).inputs.image_size == 64  # unset: the model's own


def test_image_size_is_refused_for_a_fixed_position_table() -> None:
    model = build_model(ModelConfig(name="tiny"))
    model.visual = OpenClipViT(image_size=64, patch_size=8, width=32, layers=1, heads=2, mlp_ratio=2, output_dim=128)
    with pytest.raises(ConfigError, match=r"model\.image_size: tiny's image tower .* only its native 64 px, not 32"):
        _resize_images(model, 32, "tiny")
