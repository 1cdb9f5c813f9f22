"""Token merging: ToMe's matching on hand-built tokens, exactness invariants on real towers, reversibility."""

from __future__ import annotations

import pytest
import timm
import torch
from open_clip.transformer import TextTransformer

from ablate.core.merging import MergeSchedule, TokenMergingConfig, apply_token_merging, token_merging
from ablate.core.merging.matching import bipartite_soft_matching, merge_wavg
from ablate.core.models.attention import AttentionSpec, swap_attention


def _vit(**kwargs) -> torch.nn.Module:
    torch.manual_seed(0)
    args = dict(img_size=32, patch_size=8, embed_dim=32, depth=3, num_heads=4, num_classes=8)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, **{**args, **kwargs}).eval()


def _uniform_vit(**kwargs) -> torch.nn.Module:
    """Zero positional embedding + a constant image: all 16 patch tokens are identical at every depth."""
    vit = _vit(**kwargs)
    with torch.no_grad():
        vit.pos_embed.zero_()
    return vit


def test_matching_on_hand_built_tokens() -> None:
    # A = tokens 0, 2, 4; B = tokens 1, 3, 5. Token 2 equals token 5 and token 4 equals token 1 exactly;
    # token 0 is orthogonal to every B token, so with r = 2 it is the one A token left unmerged.
    metric = torch.tensor([[[1.0, 0, 0], [0, 1, 0], [0, 0, 1], [0, 1, 1], [0, 1, 0], [0, 0, 1]]])
    matching = bipartite_soft_matching(metric, r=2)
    assert matching.unm_idx.flatten().tolist() == [0]
    pairs = zip(matching.src_idx.flatten().tolist(), matching.dst_idx.flatten().tolist(), strict=True)
    assert sorted(pairs) == [(1, 2), (2, 0)]
    values = torch.arange(6, dtype=torch.float32).reshape(1, 6, 1)  # token i carries value i
    merged, size = merge_wavg(matching, values, None)
    # [unmerged A: token 0] + [B: (1+4)/2, 3, (5+2)/2]
    assert merged.flatten().tolist() == [0.0, 2.5, 3.0, 3.5]
    assert size.flatten().tolist() == [1.0, 2.0, 1.0, 2.0]
    assert matching.unmerge(merged).flatten().tolist() == [0.0, 2.5, 3.5, 3.0, 2.5, 3.5]


def test_matching_respects_protection_groups_and_the_half_cap() -> None:
    torch.manual_seed(1)
    metric = torch.randn(2, 10, 4)
    metric[:, 1] = metric[:, 0]  # the best pair of all, but token 0 is protected
    protected = torch.zeros(2, 10, dtype=torch.bool)
    protected[:, 0] = True
    group = torch.tensor([[0] * 6 + [1] * 4] * 2)
    matching = bipartite_soft_matching(metric, r=100, protected=protected, group=group, num_protected=1)
    sources = (2 * matching.src_idx).flatten(1)
    destinations = (2 * matching.dst_idx + 1).flatten(1)
    assert matching.r <= 4  # at most half of the unprotected tokens
    assert not (sources == 0).any() and not (destinations == 0).any()
    assert torch.equal(group.gather(1, sources), group.gather(1, destinations))


def test_schedule_follows_tome_parse_r() -> None:
    assert MergeSchedule(r=4).per_layer(3) == [4, 4, 4]
    # ToMe: low = int(8·1.5) = 12, high = 2·8 − 12 = 4, step (4 − 12)/4 = −2; the mean stays r
    assert MergeSchedule(r=8, inflect=-0.5).per_layer(5) == [12, 10, 8, 6, 4]
    assert MergeSchedule(r=[1, 2]).per_layer(4) == [1, 2, 0, 0]
    with pytest.raises(ValueError, match="r must be >= 0"):
        MergeSchedule(r=[1, -1])
    with pytest.raises(ValueError, match="3 layers but the tower has 2"):
        MergeSchedule(r=[1, 1, 1]).per_layer(2)


@pytest.mark.parametrize("layer_scale", [None, 0.5])
def test_merging_identical_tokens_is_exact_with_proportional_attention(layer_scale: float | None) -> None:
    """Merged copies of a token, weighted by size, are the same computation as the copies: outputs must match.

    With LayerScale this also catches ToMe's timm patch, which skips ls1/ls2 (papers.md §7 item 8)."""
    vit = _uniform_vit(init_values=layer_scale)
    image = torch.ones(2, 3, 32, 32)
    with torch.no_grad():
        exact = vit(image)
        with token_merging(vit, MergeSchedule(r=3)):
            merged = vit(image)
        with token_merging(vit, MergeSchedule(r=3, proportional_attention=False)):
            unweighted = vit(image)
    torch.testing.assert_close(merged, exact, atol=1e-5, rtol=1e-5)
    assert (unweighted - exact).abs().max() > 1e-3  # without sizes the class token over-attends to merged tokens


def test_average_pooling_is_size_weighted() -> None:
    vit = _uniform_vit(global_pool="avg", class_token=False)
    image = torch.ones(1, 3, 32, 32)
    with torch.no_grad():
        exact = vit(image)
        with token_merging(vit, MergeSchedule(r=4)):
            merged = vit(image)
    torch.testing.assert_close(merged, exact, atol=1e-5, rtol=1e-5)


def test_sigmoid_attention_modules_are_merged_exactly() -> None:
    vit = _uniform_vit()
    assert swap_attention(vit, AttentionSpec(kind="sigmoid")) == 3
    image = torch.ones(2, 3, 32, 32)
    with torch.no_grad():
        exact = vit(image)
        with token_merging(vit, MergeSchedule(r=3)):
            merged = vit(image)
    torch.testing.assert_close(merged, exact, atol=1e-5, rtol=1e-5)


def test_tokens_are_removed_per_schedule_and_removal_restores_the_model() -> None:
    vit = _vit()
    image = torch.randn(2, 3, 32, 32)
    widths: list[int] = []
    hooks = [
        block.mlp.register_forward_hook(lambda _m, inp, _o: widths.append(inp[0].shape[1])) for block in vit.blocks
    ]
    with torch.no_grad():
        exact = vit(image)
        handle = apply_token_merging(vit, MergeSchedule(r=[2, 3, 1]))
        changed = vit(image)
        handle.remove()
        restored = vit(image)
    for hook in hooks:
        hook.remove()
    assert widths[3:6] == [17 - 2, 17 - 5, 17 - 6]  # CLS + 16 patches, r applied before each MLP
    assert not torch.equal(changed, exact)
    assert torch.equal(restored, exact)
    assert all("forward" not in block.__dict__ for block in vit.blocks) and "forward" not in vit.__dict__


def test_zero_schedule_changes_nothing_and_training_mode_is_off_by_default() -> None:
    vit = _vit()
    image = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        exact = vit(image)
        with token_merging(vit, MergeSchedule(r=0)) as handle:
            assert torch.equal(vit(image), exact) and handle.patched == []
        with token_merging(vit, MergeSchedule(r=[0, 0, 4])):
            # the last block merges after its attention; its MLP works per token and the class token is never
            # merged, so the class-token output is bit-identical
            assert torch.equal(vit(image), exact)
        with token_merging(vit, MergeSchedule(r=[0, 4, 0])):
            out = vit(image)
            vit.train()  # no dropout in this ViT, so train mode computes the same function
            assert torch.equal(vit(image), exact)  # merging is off in train mode unless during_training
            vit.eval()
    assert not torch.equal(out, exact)
    vit.train()
    with token_merging(vit, TokenMergingConfig(image=MergeSchedule(r=4), during_training=True)):
        loss = vit(image).square().sum()
    loss.backward()  # merging during training keeps gradients flowing
    assert vit.patch_embed.proj.weight.grad.abs().sum() > 0


def test_pruning_keeps_the_class_token_and_drops_r_tokens() -> None:
    vit = _vit()
    widths: list[int] = []
    hook = vit.blocks[2].mlp.register_forward_hook(lambda _m, inp, _o: widths.append(inp[0].shape[1]))
    with torch.no_grad(), token_merging(vit, MergeSchedule(r=2, mode="prune")):
        vit(torch.randn(2, 3, 32, 32))
    hook.remove()
    assert widths == [17 - 6]


def _text(causal: bool) -> TextTransformer:
    torch.manual_seed(0)
    return TextTransformer(
        context_length=16, vocab_size=100, width=32, heads=4, layers=2, output_dim=8, no_causal_mask=not causal
    ).eval()


def _tokens() -> torch.Tensor:
    tokens = torch.zeros(2, 16, dtype=torch.long)
    tokens[0, :6] = torch.tensor([98, 5, 5, 5, 5, 99])  # SOT, a word four times, EOT (the argmax), padding
    tokens[1, :8] = torch.tensor([98, 5, 5, 5, 5, 5, 5, 99])
    return tokens


def test_text_merging_of_identical_tokens_is_exact_and_eot_is_read() -> None:
    text = _text(causal=False)
    with torch.no_grad():
        text.positional_embedding.zero_()  # repeated words and paddings are exact copies
        exact = text(_tokens())
        with token_merging(text, TokenMergingConfig(text=MergeSchedule(r=3))) as handle:
            merged = text(_tokens())
    assert handle.patched == ["TextTransformer: r=[3, 3] (merge)"]
    torch.testing.assert_close(merged, exact, atol=1e-5, rtol=1e-5)


def test_causal_text_merging_never_moves_content_into_padding() -> None:
    """Under a causal mask nothing after EOT reaches it, so merges confined to padding leave the output exact;
    a content token merged into padding would vanish from EOT's view and change it."""
    text = _text(causal=True)
    tokens = torch.zeros(2, 16, dtype=torch.long)
    tokens[:, :3] = torch.tensor([98, 7, 99])  # SOT, one word, EOT: content (besides EOT) can merge only once
    model = type("Pair", (torch.nn.Module,), {})()
    model.visual, model.text = torch.nn.Identity(), text
    with torch.no_grad():
        exact = text(tokens)
        with token_merging(model, TokenMergingConfig(text=MergeSchedule(r=[6, 0]))):
            merged = text(tokens)
    torch.testing.assert_close(merged, exact, atol=1e-6, rtol=1e-6)


def test_mci_attention_stage_merges_and_unmerges_exactly_on_identical_tokens() -> None:
    model = timm.create_model("fastvit_mci0", pretrained=False, num_classes=0).eval()
    stage = model.stages[3]
    x = torch.randn(1, stage.blocks[0].norm.num_features, 1, 1).expand(1, -1, 4, 4).contiguous()
    with torch.no_grad():
        exact = stage.blocks[0].token_mixer(x)
        with token_merging(model, MergeSchedule(r=[5, 5])) as handle:
            merged = stage.blocks[0].token_mixer(x)
            changed = model(torch.randn(1, 3, 64, 64))
        baseline = model(torch.randn(1, 3, 64, 64))
    assert handle.patched == ["FastVit attention blocks: r=[5, 5] (merge-attend-unmerge)"]
    torch.testing.assert_close(merged, exact, atol=1e-5, rtol=1e-5)
    assert changed.shape == baseline.shape
    with pytest.raises(ValueError, match="holes"):
        apply_token_merging(model, MergeSchedule(r=2, mode="prune"))


def test_unsupported_towers_are_named() -> None:
    with pytest.raises(ValueError, match="no timm VisionTransformer or FastViT found in Linear"):
        apply_token_merging(torch.nn.Linear(2, 2), MergeSchedule(r=1))
