"""Reversible instance patches: every change token merging makes to a model is recorded here and undone by
`remove()`. Only instances are touched (an instance attribute `forward` shadows the class's), never a class or
an installed package, so other models in the process are unaffected."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn
from torch.utils.hooks import RemovableHandle

_MISSING = object()


class MergeHandle:
    """What `apply_token_merging` changed; `remove()` restores the model exactly (also as a context manager)."""

    def __init__(self, during_training: bool) -> None:
        self.during_training = during_training
        self.enabled = True
        self.patched: list[str] = []  # human-readable summary: which module got which schedule
        self._restore: list[Callable[[], None]] = []

    def active(self, module: nn.Module) -> bool:
        """Merge in this call? Off when disabled, and in train mode unless `during_training`."""
        return self.enabled and (self.during_training or not module.training)

    def replace_forward(self, module: nn.Module, forward: Callable[..., Any]) -> None:
        previous = module.__dict__.get("forward", _MISSING)
        module.forward = forward

        def restore() -> None:
            if previous is _MISSING:
                del module.forward
            else:
                module.forward = previous

        self._restore.append(restore)

    def add_hook(self, hook: RemovableHandle) -> None:
        self._restore.append(hook.remove)

    def remove(self) -> None:
        while self._restore:
            self._restore.pop()()
        self.enabled = False

    def __enter__(self) -> MergeHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()
