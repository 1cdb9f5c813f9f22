"""MobileCLIP towers: parameter counts against papers.md, Base = open_clip, Text-RepMixer by hand, reparameterisation
of every tower kind, and the model-config axes reaching the towers."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from open_clip.transformer import TextTransformer
from torch import nn

from ablate.core.config.base import ConfigError
from ablate.core.config.sections import ModelConfig
from ablate.core.models.attention import Attention, AttentionSpec
from ablate.core.models.build import build_model
from ablate.core.models.efficiency import fixed_threads, parameter_breakdown
from ablate.core.models.factory import create_model
from ablate.core.models.reparam import count_reparameterizable, reparameterize
from ablate.core.models.text import TextEncoder, TextRepMixer, TextSpec


@pytest.fixture(autouse=True, scope="module")
def single_thread() -> Iterator[None]:
    """One torch thread: on a shared 2-core machine, 2 threads wait on each other at every small op."""
    with fixed_threads(1):
        yield


def meta_counts(name: str) -> dict[str, int]:
    with torch.device("meta"):
        return parameter_breakdown(create_model(name))


@pytest.mark.parametrize(
    ("name", "image_m", "text_m"),
    [
        ("MobileCLIP-S0", 11.41, 42.44),  # papers.md §1.4: MCi0 11.41 M, MCt 42.44 M [measured]
        ("MobileCLIP-S1", 21.54, 63.43),  # MCi1, Base
        ("MobileCLIP-S2", 35.82, 63.43),  # MCi2, Base
        ("MobileCLIP-B", 86.35, 63.43),  # vit_base_mci_224, Base
    ],
)
def test_full_size_pairings_match_measured_parameter_counts(name: str, image_m: float, text_m: float) -> None:
    counts = meta_counts(name)
    assert counts["image"] / 1e6 == pytest.approx(image_m, abs=0.005)
    assert counts["text"] / 1e6 == pytest.approx(text_m, abs=0.005)
    assert counts["token_embedding"] == 49408 * 512  # 25.3 M of the text tower (papers.md §1.4)


@pytest.mark.parametrize(("attention_layers", "params_m"), [(6, 44.5), (4, 42.4), (2, 40.4), (1, 39.3), (0, 38.3)])
def test_mct_attention_layer_count_matches_table_5(attention_layers: int, params_m: float) -> None:
    """MobileCLIP Tab 5: a 6-layer hybrid with 6/4/2/1/0 attention layers has 44.5/42.4/40.4/39.3/38.3 M."""
    with torch.device("meta"):
        encoder = TextEncoder(TextSpec(layers=6, attention_layers=attention_layers))
    assert sum(p.numel() for p in encoder.parameters()) / 1e6 == pytest.approx(params_m, abs=0.05)


def test_mct_s0_layout_is_repmixer_four_attention_repmixer() -> None:
    assert TextSpec(layers=6, attention_layers=4).layout() == ["repmixer"] + ["attention"] * 4 + ["repmixer"]
    assert TextSpec(layers=6, attention_layers=1).layout() == ["repmixer"] * 2 + ["attention"] + ["repmixer"] * 3


@pytest.mark.parametrize("causal", [True, False])
def test_base_encoder_reproduces_open_clip_text_transformer(causal: bool) -> None:
    """The Base encoder is open_clip's TextTransformer block for block: same weights, same outputs."""
    reference = TextTransformer(
        context_length=16, width=64, heads=4, layers=2, output_dim=32, no_causal_mask=not causal
    )
    ours = TextEncoder.from_open_clip(reference, AttentionSpec())
    tokens = torch.randint(1, 49406, (3, 16))
    tokens[:, 9] = 49407
    with torch.no_grad():
        assert torch.allclose(ours(tokens), reference(tokens), atol=1e-6)
    assert ours.spec.causal is causal


def _set_batchnorm(bn: nn.BatchNorm2d, gamma: float, beta: float, mean: float, var: float) -> None:
    bn.eps = 0.0
    bn.weight.data.fill_(gamma)
    bn.bias.data.fill_(beta)
    bn.running_mean.fill_(mean)
    bn.running_var.fill_(var)


def test_text_repmixer_by_hand_and_after_folding() -> None:
    """x + γ(BN_mix(conv(x)) + BN_skip(x) − BN_norm(x)) for one channel, kernel 3, x = [1, 2, 3]:
    conv w = [1, 2, 3] with zero padding gives [8, 14, 8]; BN_mix(c) = c + 0.5; BN_skip(x) = x − 1; BN_norm(x) =
    x + 2; γ = 0.5, so out = x + 0.5·[5.5, 11.5, 5.5] = [3.75, 7.75, 5.75]. Folded: W = [0.5, 2, 1.5], b = −1.25."""
    mixer = TextRepMixer(dim=1, kernel_size=3).eval()
    mixer.mixer_conv.weight.data = torch.tensor([1.0, 2.0, 3.0]).reshape(1, 1, 1, 3)
    _set_batchnorm(mixer.mixer_bn, gamma=2, beta=1, mean=0.5, var=4)
    _set_batchnorm(mixer.mixer_skip, gamma=1, beta=0, mean=1, var=1)
    _set_batchnorm(mixer.norm, gamma=3, beta=2, mean=0, var=9)
    mixer.layer_scale.data.fill_(0.5)
    x = torch.tensor([1.0, 2.0, 3.0]).reshape(1, 1, 1, 3)
    expected = torch.tensor([3.75, 7.75, 5.75])
    with torch.no_grad():
        assert torch.allclose(mixer(x).flatten(), expected)
        mixer.reparameterize()
        assert torch.allclose(mixer.reparam_conv.weight.flatten(), torch.tensor([0.5, 2.0, 1.5]))
        assert mixer.reparam_conv.bias.item() == pytest.approx(-1.25)
        assert torch.allclose(mixer(x).flatten(), expected)
    assert not hasattr(mixer, "mixer_conv") and not hasattr(mixer, "norm")


@torch.no_grad()
def make_branches_matter(model: nn.Module, seed: int = 0) -> None:
    """Give every BatchNorm non-trivial statistics and every layer scale an O(1) value, so a wrong fold shows
    up in the outputs (at init the RepMixer branches are scaled by 1e-5 and BNs are identities)."""
    generator = torch.Generator().manual_seed(seed)

    def noise(tensor: torch.Tensor, low: float, high: float) -> torch.Tensor:
        return low + (high - low) * torch.rand(tensor.shape, generator=generator)

    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.copy_(noise(module.running_mean, -0.5, 0.5))
            module.running_var.copy_(noise(module.running_var, 0.5, 2.0))
            module.weight.copy_(noise(module.weight, 0.5, 1.5))
            module.bias.copy_(noise(module.bias, -0.3, 0.3))
        for name, parameter in module.named_parameters(recurse=False):
            if name in ("gamma", "layer_scale"):
                parameter.copy_(noise(parameter, 0.2, 0.6))


@pytest.mark.parametrize(
    ("name", "tower", "folds"),
    [
        ("mci-tiny", "visual", True),  # MobileOne stem, RepMixer, RepCPE, ReparamLargeKernelConv, ConvFFN BN
        ("mct-tiny", "text", True),  # Text-RepMixer and its ConvFFN
        ("tiny", "visual", False),  # ViT: nothing to fold
        ("tiny", "text", False),  # open_clip Base text: nothing to fold
    ],
)
def test_reparameterised_towers_equal_train_time_towers(name: str, tower: str, folds: bool) -> None:
    torch.manual_seed(0)
    train_time = getattr(create_model(name), tower)
    make_branches_matter(train_time)
    train_time.eval()
    inference = reparameterize(train_time)
    inputs = torch.rand(3, 3, 64, 64) if tower == "visual" else torch.randint(1, 49407, (3, 32))
    with torch.no_grad():
        expected, actual = train_time(inputs), inference(inputs)
    assert (expected - actual).abs().max().item() < 1e-5 * max(1.0, expected.abs().max().item())
    assert count_reparameterizable(inference) == 0
    fewer = sum(p.numel() for p in inference.parameters()) < sum(p.numel() for p in train_time.parameters())
    assert fewer is folds
    assert not any(isinstance(m, nn.BatchNorm2d) for m in inference.modules()) or name == "mci-tiny"


def test_default_model_config_builds_todays_models_unchanged() -> None:
    torch.manual_seed(3)
    built = build_model(ModelConfig(name="tiny"))
    torch.manual_seed(3)
    reference = create_model("tiny")
    assert isinstance(built.text, TextTransformer)  # open_clip's tower untouched for the softmax default
    assert built.state_dict().keys() == reference.state_dict().keys()
    assert all(torch.equal(value, reference.state_dict()[key]) for key, value in built.state_dict().items())


@pytest.mark.parametrize(("name", "expected_blocks"), [("tiny", 4 + 3), ("mobileclip-tiny", 1 + 2)])
def test_sigmoid_reaches_every_attention_block_from_the_same_weights(name: str, expected_blocks: int) -> None:
    torch.manual_seed(1)
    softmax = build_model(ModelConfig(name=name))
    torch.manual_seed(1)
    sigmoid = build_model(ModelConfig(name=name, attention="sigmoid", qk_norm=True))
    blocks = [m for m in sigmoid.modules() if isinstance(m, Attention)]
    assert len(blocks) == expected_blocks
    assert all(block.kind == "sigmoid" and isinstance(block.q_norm, nn.LayerNorm) for block in blocks)
    assert not any(isinstance(m, nn.MultiheadAttention) for m in sigmoid.modules())
    # same initial weights wherever the softmax twin has them (open_clip names are mapped onto timm's)
    qkv_softmax = [m.qkv.weight for m in softmax.visual.modules() if hasattr(m, "qkv")]
    qkv_sigmoid = [m.qkv.weight for m in sigmoid.visual.modules() if hasattr(m, "qkv")]
    assert all(torch.equal(a, b) for a, b in zip(qkv_softmax, qkv_sigmoid, strict=True))


def test_text_tower_options_rebuild_the_text_encoder() -> None:
    model = build_model(ModelConfig(name="mct-tiny", text={"attention_layers": 0, "kernel_size": 3}))
    assert model.text.spec.layout() == ["repmixer"] * 4 and model.text.spec.kernel_size == 3
    base = build_model(ModelConfig(name="tiny", text={"layers": 5}))
    assert base.text.spec.layout() == ["attention"] * 5 and base.text.spec.causal  # tiny's text stays causal
    with pytest.raises(ConfigError, match=r"model \(mct-tiny\).*causal"):
        build_model(ModelConfig(name="mct-tiny", text={"causal": True}))


def test_masks_find_attention_and_mlp_by_their_contract() -> None:
    """The compression contract: attention exposes qkv/proj/num_heads/head_dim, MLPs fc1/fc2 — in every tower."""
    model = build_model(ModelConfig(name="mobileclip-tiny", attention="sigmoid"))
    attention = [m for m in model.modules() if hasattr(m, "qkv")]
    assert attention
    for module in attention:
        assert isinstance(module.qkv, nn.Linear) and isinstance(module.proj, nn.Linear)
        assert module.qkv.out_features == 3 * module.num_heads * module.head_dim == 3 * module.proj.in_features
    mlps = [m for m in model.text.modules() if hasattr(m, "fc1")]
    assert len(mlps) == 4  # two ConvFFNs (1×1 convs) and two transformer MLPs (linear)
