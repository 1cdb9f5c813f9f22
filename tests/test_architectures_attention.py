"""Sigmoid attention (papers.md §4, §8 F): the formula by hand, masks, the −ln n bias and init output norms."""

from __future__ import annotations

import math
from collections.abc import Iterator

import pytest
import torch

from ablate.core.models.attention import Attention, AttentionSpec, SpatialAttention, sigmoid_attention, swap_attention
from ablate.core.models.efficiency import fixed_threads
from ablate.core.models.text import TextEncoder, TextSpec


@pytest.fixture(autouse=True, scope="module")
def single_thread() -> Iterator[None]:
    """One torch thread: on a shared 2-core machine, 2 threads wait on each other at every small op."""
    with fixed_threads(1):
        yield


def test_sigmoid_attention_by_hand() -> None:
    """One head, d = 4 (scale 1/2), two keys: logits q·k/2 + b = [1 − ln 2, −1 − ln 2]; out = Σ σ(·)·v."""
    q = torch.tensor([[[1.0, 1.0, 0.0, 0.0]]])
    k = torch.tensor([[[1.0, 1.0, 0.0, 0.0], [-1.0, -1.0, 0.0, 0.0]]])
    v = torch.tensor([[[2.0, 0.0, 0.0, 0.0], [0.0, 4.0, 0.0, 0.0]]])
    b = -math.log(2)
    w1, w2 = 1 / (1 + math.exp(-(1 + b))), 1 / (1 + math.exp(-(-1 + b)))
    out = sigmoid_attention(q, k, v, scale=0.5, bias=b)
    assert out.flatten().tolist() == pytest.approx([2 * w1, 4 * w2, 0, 0], rel=1e-6)
    # masked keys get weight exactly 0, not a renormalised share: bool (True = attend) and additive −inf alike
    keep_first = torch.tensor([[True, False]])
    expected = [2 * w1, 0.0, 0, 0]
    assert sigmoid_attention(q, k, v, 0.5, b, keep_first).flatten().tolist() == pytest.approx(expected, rel=1e-6)
    additive = torch.tensor([[0.0, float("-inf")]])
    assert sigmoid_attention(q, k, v, 0.5, b, additive).flatten().tolist() == pytest.approx(expected, rel=1e-6)


def _attention_output_norm(spec: AttentionSpec, tokens: int, seed: int = 0) -> float:
    """Mean norm of the attention output (weights @ V, before the output projection) of a freshly initialised
    block, weights drawn from one seed for every spec, on N(0, 1) tokens."""
    torch.manual_seed(seed)
    block = swap_attention_module(Attention(64, 4, AttentionSpec(), qkv_bias=True), spec)
    captured = []
    block.proj.register_forward_pre_hook(lambda _module, args: captured.append(args[0]))
    x = torch.randn(8, tokens, 64, generator=torch.Generator().manual_seed(seed + 1))
    with torch.no_grad():
        block(x)
    return captured[0].norm(dim=-1).mean().item()


def swap_attention_module(block: Attention, spec: AttentionSpec) -> Attention:
    holder = torch.nn.Sequential(block)
    swap_attention(holder, spec)
    return holder[0]


def test_sigmoid_with_minus_log_n_matches_softmax_norm_and_without_bias_grows_with_n() -> None:
    """At init, softmax ≈ (1 + z_j)/n per key (rows sum to 1) and σ(z − ln n) ≈ e^z/n: the same output norm
    for every n. With b = 0, σ(z) ≈ 1/2 + z/4 per key, rows sum to ≈ n/2: the output is between n/4 and n/2
    times softmax's, i.e. it grows linearly with the number of keys."""
    sizes = (16, 64, 256)
    softmax = [_attention_output_norm(AttentionSpec("softmax"), n) for n in sizes]
    with_bias = [_attention_output_norm(AttentionSpec("sigmoid", "neg_log_n"), n) for n in sizes]
    without_bias = [_attention_output_norm(AttentionSpec("sigmoid", "zero"), n) for n in sizes]
    for n, soft, biased, unbiased in zip(sizes, softmax, with_bias, without_bias, strict=True):
        assert 0.8 < biased / soft < 1.25, n
        assert n / 4 * 0.9 < unbiased / soft < n / 2 * 1.1, n
    growth = (without_bias[-1] / softmax[-1]) / (without_bias[0] / softmax[0])
    assert 12 < growth < 20  # 16× the keys: ~16× softmax's norm


def test_softmax_conversion_is_exact_and_learnable_bias_trains() -> None:
    torch.manual_seed(0)
    original = Attention(32, 2, AttentionSpec(), qkv_bias=False)
    x = torch.randn(2, 10, 32)
    converted = swap_attention_module(original, AttentionSpec())
    assert torch.equal(converted(x), original(x))
    learnable = swap_attention_module(original, AttentionSpec("sigmoid", "learnable"))
    fixed = swap_attention_module(original, AttentionSpec("sigmoid", "neg_log_n"))
    assert torch.allclose(learnable(x), fixed(x))  # β starts at 0: b = −ln n exactly
    learnable(x).sum().backward()
    assert learnable.bias_offset.grad is not None and learnable.bias_offset.grad.abs().item() > 0


def test_spatial_attention_uses_h_times_w_keys() -> None:
    """MCi's attention stage attends over H·W positions of a (B, C, H, W) map: b = −ln(H·W)."""
    torch.manual_seed(0)
    block = SpatialAttention(32, 1, AttentionSpec("sigmoid"))
    x = torch.randn(1, 32, 3, 4)
    tokens = x.flatten(2).transpose(1, 2)
    q, k, v = block.qkv(tokens).reshape(1, 12, 3, 1, 32).permute(2, 0, 3, 1, 4)
    expected = block.proj(sigmoid_attention(q, k, v, 32**-0.5, -math.log(12)).transpose(1, 2).reshape(1, 12, 32))
    assert torch.allclose(block(x), expected.transpose(1, 2).reshape(1, 32, 3, 4), atol=1e-6)


@pytest.mark.parametrize("causal", [True, False])
def test_masked_text_positions_get_zero_sigmoid_weight(causal: bool) -> None:
    """Causal: what follows the EOT never reaches it. Padding mask: the padded positions' values never reach any
    token, so changing their positional embedding leaves the pooled feature unchanged (with sigmoid weights,
    a masked key with any weight > 0 would change it; nothing renormalises the row)."""
    torch.manual_seed(0)
    spec = TextSpec(
        width=32,
        heads=2,
        layers=2,
        context_length=12,
        output_dim=16,
        causal=causal,
        pad_mask=not causal,
        attention=AttentionSpec("sigmoid"),
    )
    encoder = TextEncoder(spec).eval()
    tokens = torch.zeros(2, 12, dtype=torch.long)
    tokens[:, :6] = torch.randint(1, 49406, (2, 6))
    tokens[:, 6] = 49407  # EOT at position 6; zeros (padding) after it
    with torch.no_grad():
        before = encoder(tokens)
        encoder.positional_embedding[7:] += 5 * torch.randn(5, 32)
        after = encoder(tokens)
    assert torch.allclose(before, after, atol=1e-6)
