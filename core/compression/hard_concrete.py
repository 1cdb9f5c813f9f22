"""Hard-concrete (L0) gates exactly as CoFi / TinyCLIP's `L0Module` (papers.md §2.2, §8 C, §9).

One `HardConcrete` holds the log α of one row of gates: the heads of one attention layer, the units of one FFN,
or the hidden dimensions of one tower. Rows matter because the deterministic (eval) mask is computed per row.

- Training sample (Louizos et al. 2018): u ~ U(ε, 1−ε), s = σ((ln u − ln(1−u) + log α)/β),
  z = clamp(s·(ζ−γ) + γ, 0, 1), with γ = −0.1, ζ = 1.1, β = 2/3, ε = 1e-6.
- P(z ≠ 0) = 1 − clamp(σ(β·logit(−γ/(ζ−γ)) − log α), ε, 1−ε) = σ(log α + (2/3)·ln 11), clamped as the code does.
- Deterministic mask: soft = σ(0.8·log α/β) = σ(1.2·log α); the round(size − Σ P(z≠0)) entries with the smallest
  soft value are set to 0 and the others KEEP their soft value (they are not 1); pruning folds them into weights.
"""

from __future__ import annotations

import math

import torch
from torch import nn

LIMIT_LOW = -0.1  # γ ("limit_a")
LIMIT_HIGH = 1.1  # ζ ("limit_b")
TEMPERATURE = 2.0 / 3.0  # β
EPSILON = 1e-6
MAGICAL_NUMBER = 0.8  # Wang et al. 2020, used by the deterministic mask
LOG_ALPHA_MIN = math.log(1e-2)  # clamp range applied after every optimiser step (`constrain_parameters`)
LOG_ALPHA_MAX = math.log(1e2)
CODE_LOG_ALPHA_INIT = 10.0  # every log α starts here in the reference code (its init argument is unused)

# β·logit((0 − γ)/(ζ − γ)) = −(2/3)·ln 11: the CDF of the stretched concrete at 0 is σ(this − log α).
_CDF_ZERO_SHIFT = TEMPERATURE * math.log((0.0 - LIMIT_LOW) / (LIMIT_HIGH - 0.0))


def prob_nonzero(log_alpha: torch.Tensor) -> torch.Tensor:
    """P(z ≠ 0) = 1 − Q(0), with Q clamped to [ε, 1−ε] as `L0Module.cdf_qz` does (differentiable in log α)."""
    return 1.0 - torch.sigmoid(_CDF_ZERO_SHIFT - log_alpha).clamp(EPSILON, 1.0 - EPSILON)


def sample(log_alpha: torch.Tensor) -> torch.Tensor:
    """One reparameterised training sample of the gates (gradients flow to log α)."""
    u = torch.empty_like(log_alpha).uniform_(EPSILON, 1.0 - EPSILON)
    s = torch.sigmoid((torch.log(u) - torch.log(1.0 - u) + log_alpha) / TEMPERATURE)
    return (s * (LIMIT_HIGH - LIMIT_LOW) + LIMIT_LOW).clamp(0.0, 1.0)


@torch.no_grad()
def deterministic(log_alpha: torch.Tensor) -> torch.Tensor:
    """The eval mask of one row: soft values σ(1.2·log α) with the round(size − ΣP) smallest set to 0.

    `round` is Python's (banker's rounding on .5), as in the reference code.
    """
    soft = torch.sigmoid(log_alpha / TEMPERATURE * MAGICAL_NUMBER)
    num_zeros = round(log_alpha.numel() - prob_nonzero(log_alpha).sum().item())
    if num_zeros > 0:
        soft[torch.topk(soft, k=num_zeros, largest=False).indices] = 0.0
    return soft


class HardConcrete(nn.Module):
    """A row of `size` hard-concrete gates with learnable log α."""

    def __init__(self, size: int, log_alpha_init: float = CODE_LOG_ALPHA_INIT) -> None:
        super().__init__()
        if size < 1:
            raise ValueError(f"a mask row needs at least one gate, got size {size}")
        self.log_alpha = nn.Parameter(torch.full((size,), float(log_alpha_init)))

    @property
    def size(self) -> int:
        return self.log_alpha.numel()

    def prob_nonzero(self) -> torch.Tensor:
        return prob_nonzero(self.log_alpha)

    def sample(self) -> torch.Tensor:
        return sample(self.log_alpha)

    def deterministic(self) -> torch.Tensor:
        return deterministic(self.log_alpha.detach())

    @torch.no_grad()
    def clamp_(self) -> None:
        self.log_alpha.clamp_(LOG_ALPHA_MIN, LOG_ALPHA_MAX)

    def extra_repr(self) -> str:
        return f"size={self.size}"
