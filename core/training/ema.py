"""An exponential moving average of the student's weights (`optim.ema`; MobileCLIP Tab 12: decay 0.9995).

After every optimizer step each averaged tensor moves towards the model's by (1 − decay), as timm's
`ModelEmaV3` does (same update, `torch._foreach_lerp_`, over the floating-point state dict: parameters and
persistent buffers such as BatchNorm statistics). Unlike `ModelEmaV3` the average is kept as bare tensors, not
as a second module, because of compression: a deep copy of the student would carry (or lack) the mask hooks of
a mask phase, and prune-to-dense replaces the student mid-run. Here evaluation swaps the averaged tensors into
the live model, so it runs through the same masks and the same code, and at a prune the average is pruned by
the same deterministic masks as the student (`prune_with`), so it keeps following the smaller model.
Checkpoints save it (`state_dict`), so a resumed run continues the same average.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:  # for the hints only: the average needs no more of them than their duck type
    from ablate.core.compression import Compressor
    from ablate.core.config.sections import OptimConfig


def _averaged(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's tensors that are averaged, by state-dict name: its floating-point state, as timm's. Not the
    non-persistent buffers, which are constants (a causal mask's −inf would average to NaN), nor counters. A
    tensor shared under two names is held once (swapping it twice would swap it back)."""
    tensors: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for name, tensor in model.state_dict(keep_vars=True).items():
        if tensor.is_floating_point() and id(tensor) not in seen:
            tensors[name] = tensor
            seen.add(id(tensor))
    return tensors


class WeightAverage:
    """EMA of a model's weights with a fixed per-step `decay`."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0 <= decay < 1:
            raise ValueError(f"an EMA decay lies in [0, 1), got {decay}")
        self.decay = decay
        self.reset(model)

    @classmethod
    def for_run(cls, model: nn.Module, optim: OptimConfig, total_steps: int) -> WeightAverage | None:
        """The run's average, or None when `optim.ema` is off."""
        decay = optim.ema_decay_for(total_steps)
        return None if decay is None else cls(model, decay)

    def reset(self, model: nn.Module) -> None:
        """Start the average at the model's current weights."""
        self.shadow = {name: tensor.detach().clone() for name, tensor in _averaged(model).items()}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        live = _averaged(model)
        names = list(self.shadow)
        torch._foreach_lerp_([self.shadow[n] for n in names], [live[n].detach() for n in names], 1.0 - self.decay)

    @contextmanager
    def swapped_in(self, model: nn.Module) -> Iterator[nn.Module]:
        """The model computing with the averaged weights inside the block (its own ones restored after): the
        tensors' storage is exchanged, not copied, so parameters stay the optimizer's objects."""
        live = _averaged(model)
        self._exchange(live)
        try:
            yield model
        finally:
            self._exchange(live)

    @torch.no_grad()
    def _exchange(self, live: dict[str, torch.Tensor]) -> None:
        for name, tensor in live.items():
            held = self.shadow[name]
            self.shadow[name] = tensor.data
            tensor.data = held

    def prune_with(self, compressor: Compressor, model: nn.Module) -> None:
        """Prune the average as `compressor` prunes `model` (its deterministic masks, folded): call it just
        before the student itself is pruned, so both dense models have the same architecture."""
        with self.swapped_in(model):
            dense, _ = compressor.prune()
        self.reset(dense)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(self.shadow)

    def load_state_dict(self, state: dict[str, torch.Tensor] | None, model: nn.Module) -> None:
        """Restore a saved average; a checkpoint without one (written with `optim.ema` off) restarts it at
        `model`'s weights."""
        if state is None:
            self.reset(model)
            return
        if set(state) != set(self.shadow):
            raise ValueError("the checkpoint's EMA names other tensors than the model has")
        self.shadow = {name: state[name].to(self.shadow[name]) for name in self.shadow}
