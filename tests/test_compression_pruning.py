"""Prune-to-dense is exact: the masked model (deterministic masks) and the dense pruned model compute the same
function, on a ViT + text transformer pair and on a MobileCLIP-style hybrid; a pruned model can be masked again."""

from __future__ import annotations

import copy
from functools import partial

import pytest
import timm
import torch
from open_clip.transformer import TextTransformer
from test_compression import hybrid_pair, one_stage
from torch import nn

from ablate.core.compression import CompressionConfig, Compressor, apply_prune_record
from ablate.core.compression.attention import ModularMultiheadAttention, NarrowFastVitAttention
from ablate.core.compression.structure import StructureError, discover
from ablate.core.models.clip import CLIP, InputSpec
from ablate.core.models.factory import create_model


def randomise_gates(compressor: Compressor, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for gate in compressor.gates:
            gate.log_alpha.copy_(torch.randn(gate.size, generator=generator) * 3)


def perturb(model: nn.Module, seed: int = 0) -> nn.Module:
    """Move every parameter off its init (zero biases, unit LayerNorm gains) so that folding each one is tested."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.02)
    return model


def inputs(model: CLIP, vocab: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    size, length = model.inputs.image_size, model.inputs.context_length
    return torch.randn(3, 3, size, size, generator=generator), torch.randint(1, vocab, (3, length), generator=generator)


@torch.no_grad()
def tower_outputs(model: CLIP, images: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    model.eval()
    return model.visual(images), model.text(tokens)


def relative_gap(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest difference relative to the output's scale (tower outputs here are O(1e-2) to O(1))."""
    return ((a - b).abs().max() / a.abs().max()).item()


def assert_same_function(masked: CLIP, dense: CLIP, images: torch.Tensor, tokens: torch.Tensor) -> None:
    for a, b in zip(tower_outputs(masked, images, tokens), tower_outputs(dense, images, tokens), strict=True):
        assert relative_gap(a, b) < 1e-5


def assert_masks_matter(compressor: Compressor, images: torch.Tensor, tokens: torch.Tensor) -> None:
    masked = tower_outputs(compressor.model, images, tokens)
    compressor.detach()
    plain = tower_outputs(compressor.model, images, tokens)
    compressor.attach()
    for a, b in zip(masked, plain, strict=True):
        assert relative_gap(a, b) > 1e-2


def test_vit_text_pair_pruned_matches_masked_over_two_stages() -> None:
    torch.manual_seed(0)
    model = perturb(create_model("tiny")).eval()
    images, tokens = inputs(model, 49408)
    config = CompressionConfig(
        stages=[
            {"target_sparsity": 0.25, "steps": 4, "mask_steps": 2},
            {"target_sparsity": 0.5, "steps": 4, "mask_steps": 2},
        ]
    )
    first = Compressor(model, config, stage=0)
    randomise_gates(first, seed=0)
    assert_masks_matter(first, images, tokens)
    dense, result = first.prune()
    assert_same_function(model, dense, images, tokens)

    visual, text = dense.visual, dense.text
    assert type(visual.blocks[0].attn) is type(model.visual.blocks[0].attn)  # timm Attention, narrower
    assert isinstance(text.transformer.resblocks[0].attn, ModularMultiheadAttention)
    assert visual.embed_dim == len(result.record["image"]["hidden"]) < 128
    assert result.counts["total"] < sum(p.numel() for p in model.parameters())
    assert 0 < result.counts["realised_sparsity"] < 1

    second = Compressor(dense, config, stage=1, reference=first.reference)  # masks on the pruned model
    # p is measured against the original model: with all gates on it starts near the realised stage-1 sparsity
    assert second.expected_sparsity().item() == pytest.approx(result.counts["realised_sparsity"], abs=0.01)
    randomise_gates(second, seed=1)
    denser, second_result = second.prune()
    assert_same_function(dense, denser, images, tokens)
    assert second_result.counts["prunable"] < result.counts["prunable"]

    rebuilt = apply_prune_record(apply_prune_record(create_model("tiny"), result.record), second_result.record)
    rebuilt.load_state_dict(denser.state_dict())
    assert_same_function(denser, rebuilt, images, tokens)


def test_hybrid_pruned_matches_masked() -> None:
    torch.manual_seed(0)
    model = perturb(hybrid_pair()).eval()
    images, tokens = inputs(model, 1000)
    compressor = Compressor(model, one_stage(image_masks=["heads", "intermediate"]))
    randomise_gates(compressor, seed=2)
    assert_masks_matter(compressor, images, tokens)
    dense, result = compressor.prune()
    assert_same_function(model, dense, images, tokens)
    attention = dense.visual.stages[3].blocks[0].token_mixer
    assert isinstance(attention, NarrowFastVitAttention)
    assert attention.num_heads == len(result.record["image"]["heads"]["stages.3.blocks.0.token_mixer"]) < 4
    assert dense.visual.stages[0].blocks[0].mlp.fc1.out_channels < 48
    # the pruned hybrid can be masked again (fastvit attention already narrow)
    again = Compressor(dense, one_stage(image_masks=["heads", "intermediate"]))
    randomise_gates(again, seed=3)
    assert_same_function(dense, again.prune()[0], images, tokens)


def test_mask_phase_step_trains_gates_and_leaves_state_dict_keys_alone() -> None:
    model = create_model("tiny").train()
    keys = set(model.state_dict())
    compressor = Compressor(model, one_stage())
    assert set(model.state_dict()) == keys
    assert not {id(p) for p in compressor.parameters()} & {id(p) for p in model.parameters()}
    images, tokens = inputs(model, 49408)
    image_features, text_features, scale = model(images, tokens)
    contrastive = (scale * image_features @ text_features.T).logsumexp(1).mean()
    loss = contrastive + compressor.sparsity_terms(0)["loss_sparsity"]
    loss.backward()
    assert all(gate.log_alpha.grad is not None and gate.log_alpha.grad.abs().sum() > 0 for gate in compressor.gates)
    assert model.visual.blocks[0].attn.qkv.weight.grad is not None


def test_compressor_checkpoint_round_trip_and_mismatch() -> None:
    model = create_model("tiny")
    compressor = Compressor(model, one_stage())
    randomise_gates(compressor, seed=4)
    state = compressor.state_dict()
    compressor.detach()
    restored = Compressor(model, one_stage())
    restored.load_state_dict(state)
    for a, b in zip(compressor.gates, restored.gates, strict=True):
        assert torch.equal(a.log_alpha, b.log_alpha)
    metrics = restored.log_metrics()
    assert "compression/image/blocks.0.attn/heads_kept" in metrics and "compression/text/hidden_kept" in metrics
    restored.detach()
    other = Compressor(model, one_stage(text_masks=["heads"]))
    try:
        other.load_state_dict(state)
    except (RuntimeError, ValueError) as err:
        assert "sites" in str(err) or "size mismatch" in str(err) or "Unexpected" in str(err)
    else:
        raise AssertionError("a checkpoint of another mask layout loaded silently")


def test_detach_restores_the_unmasked_function() -> None:
    model = create_model("tiny").eval()
    images, tokens = inputs(model, 49408)
    before = tower_outputs(model, images, tokens)
    compressor = Compressor(model, one_stage())
    randomise_gates(compressor, seed=5)
    compressor.detach()
    for a, b in zip(before, tower_outputs(model, images, tokens), strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    assert isinstance(model.text.transformer.resblocks[0].attn, nn.MultiheadAttention)


@pytest.mark.parametrize("batch_first", [True, False])
def test_modular_multihead_attention_matches_torch(batch_first: bool) -> None:
    torch.manual_seed(0)
    reference = nn.MultiheadAttention(32, 4, batch_first=batch_first).eval()
    modular = copy.deepcopy(reference)
    modular.__class__ = ModularMultiheadAttention
    x = torch.randn(2, 5, 32) if batch_first else torch.randn(5, 2, 32)
    causal = torch.full((5, 5), float("-inf")).triu(1)
    padding = torch.tensor([[False] * 5, [False, False, False, True, True]])
    for kwargs in (
        {"attn_mask": causal, "need_weights": False},
        {"key_padding_mask": padding, "need_weights": True},
        {"attn_mask": causal.isinf(), "key_padding_mask": padding, "need_weights": True, "average_attn_weights": False},
    ):
        expected, expected_weights = reference(x, x, x, **kwargs)
        out, weights = modular(x, x, x, **kwargs)
        torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)
        if kwargs["need_weights"]:
            torch.testing.assert_close(weights, expected_weights, atol=1e-6, rtol=0)


def test_vit_with_pre_norm_pruned_matches_masked() -> None:
    """A pre-norm (timm `pre_norm=True`, as in CLIP ViTs) writes the stream: its affine is folded once, not
    also sliced again as one of the stream's LayerNorms."""
    torch.manual_seed(0)
    visual = timm.create_model(
        "vit_tiny_patch16_224",
        img_size=64,
        patch_size=8,
        embed_dim=64,
        depth=2,
        num_heads=2,
        num_classes=32,
        pre_norm=True,
    )
    text = TextTransformer(context_length=16, vocab_size=1000, width=32, heads=2, layers=1, output_dim=32)
    model = perturb(CLIP(visual, text, InputSpec(64, 16, (0.5,) * 3, (0.5,) * 3))).eval()
    images, tokens = inputs(model, 1000)
    compressor = Compressor(model, one_stage(image_masks=["heads", "intermediate", "hidden"]))
    randomise_gates(compressor, seed=4)
    assert_masks_matter(compressor, images, tokens)
    dense, result = compressor.prune()
    kept = len(result.record["image"]["hidden"])
    assert dense.visual.norm_pre.weight.shape == (kept,) and kept < 64
    assert_same_function(model, dense, images, tokens)

    # Without an affine gain the mask has nowhere to fold: hidden masks are refused, naming why.
    plain = timm.create_model(
        "vit_tiny_patch16_224",
        img_size=64,
        patch_size=8,
        embed_dim=64,
        depth=1,
        num_heads=2,
        pre_norm=True,
        norm_layer=partial(nn.LayerNorm, elementwise_affine=False),
    )
    with pytest.raises(StructureError, match="pre-norm with an affine gain"):
        discover(plain, "image").require("hidden")
