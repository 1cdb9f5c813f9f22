"""Structural reparameterisation: fold train-time branches into the single convolutions used at inference.

MobileOne, RepMixer, RepCPE and ReparamLargeKernelConv (timm's FastViT/MCi) and our Text-RepMixer all expose
`reparameterize()`; timm's `reparameterize_model` walks a model and calls it on every module that has one.
The folding arithmetic for our own blocks is here (papers.md §1.4): a BatchNorm after a convolution W is the
convolution W·γ/σ with bias β − μγ/σ (σ = √(var + eps)), and a BatchNorm on the skip path is the same with W
the identity kernel (1 at the centre tap of each channel's own filter).
"""

from __future__ import annotations

import copy

import torch
from timm.layers import BatchNormAct2d, ConvNormAct
from timm.utils.model import reparameterize_model
from torch import nn


def identity_kernel(channels: int, kernel_size: tuple[int, int], like: torch.Tensor) -> torch.Tensor:
    """The depthwise kernel (channels, 1, kh, kw) whose convolution returns its input unchanged."""
    kernel = torch.zeros(channels, 1, *kernel_size, dtype=like.dtype, device=like.device)
    kernel[:, 0, kernel_size[0] // 2, kernel_size[1] // 2] = 1
    return kernel


def fold_batchnorm(
    kernel: torch.Tensor, bn: nn.BatchNorm2d, conv_bias: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(W', b') with conv(x, W') + b' == bn(conv(x, W) + c) in eval mode (c = `conv_bias`, default 0)."""
    std = (bn.running_var + bn.eps).sqrt()
    scale = bn.weight / std
    mean = bn.running_mean if conv_bias is None else bn.running_mean - conv_bias
    return kernel * scale.reshape(-1, 1, 1, 1), bn.bias - mean * scale


def fused_conv(template: nn.Conv2d, weight: torch.Tensor, bias: torch.Tensor) -> nn.Conv2d:
    """A biased copy of `template`'s geometry holding (weight, bias), detached from the training graph."""
    conv = nn.Conv2d(
        template.in_channels,
        template.out_channels,
        template.kernel_size,
        stride=template.stride,
        padding=template.padding,
        dilation=template.dilation,
        groups=template.groups,
        bias=True,
    ).to(device=weight.device, dtype=weight.dtype)
    conv.weight.data.copy_(weight.detach())
    conv.bias.data.copy_(bias.detach())
    return conv


def reparameterize(model: nn.Module) -> nn.Module:
    """An inference-form deep copy of `model` (in eval mode): every reparameterisable branch folded, and the
    BatchNorm after each of timm's conv-norm layers (FastViT's ConvFFN depthwise conv) folded into its conv."""
    folded = reparameterize_model(copy.deepcopy(model).eval(), inplace=True)
    for module in folded.modules():
        if isinstance(module, ConvNormAct):
            _fold_conv_norm_act(module)
    for parameter in folded.parameters():
        parameter.requires_grad_(False)
    return folded


def _fold_conv_norm_act(module: ConvNormAct) -> None:
    """conv → BN(+act) becomes conv' → act; timm's reparameterisation leaves these BatchNorms in place."""
    if not isinstance(module.bn, BatchNormAct2d) or not isinstance(module.conv, nn.Conv2d):
        return
    weight, bias = fold_batchnorm(module.conv.weight, module.bn, module.conv.bias)
    module.conv = fused_conv(module.conv, weight, bias)
    module.bn = nn.Sequential(getattr(module.bn, "drop", nn.Identity()), getattr(module.bn, "act", nn.Identity()))


def count_reparameterizable(model: nn.Module) -> int:
    """Modules that still have train-time branches to fold (0 after `reparameterize`)."""
    return sum(1 for module in model.modules() if hasattr(module, "reparameterize") and _has_branches(module))


def _has_branches(module: nn.Module) -> bool:
    """timm's blocks keep `reparameterize` after folding; they are folded once `reparam_conv` is set."""
    return getattr(module, "reparam_conv", None) is None
