"""Applying a tower's gates during its forward, with hooks only: no module is replaced and no state-dict key
changes, so the masked model checkpoints and loads like the plain one.

Where each gate acts (TinyCLIP's masked forward, papers.md §2.2):
- head gate: multiplies each head's output before the output projection (pre-hook on `proj`/`out_proj`);
- FFN unit gate: multiplies the activations entering `fc2` (after GELU), i.e. GeLU(X W_U) diag(m) W_D;
- hidden gate z: multiplies the stream where it starts (the embeddings) and every branch output (attention
  out-projection, fc2); LayerNorms over the stream use the kept dims only and output 0 elsewhere.
Gates are drawn once per tower forward (a training sample when the tower is in train mode, the deterministic
mask in eval mode), like `L0Module.forward()` once per encoder call.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.hooks import RemovableHandle

from ablate.core.compression.attention import make_modular
from ablate.core.compression.hard_concrete import HardConcrete
from ablate.core.compression.structure import TowerStructure


def _scale(x: torch.Tensor, gate: torch.Tensor, channel_axis: int) -> torch.Tensor:
    shape = [1] * x.dim()
    shape[channel_axis] = -1
    return x * gate.to(x.dtype).view(shape)


def _channel_axis(module: nn.Module) -> int:
    return 1 if isinstance(module, nn.Conv2d) else -1


def kept_layer_norm(x: torch.Tensor, norm: nn.LayerNorm, kept: torch.Tensor) -> torch.Tensor:
    """LayerNorm over the kept dims only, 0 on the others: exactly what the pruned (sliced) LayerNorm computes."""
    weight = norm.weight.index_select(0, kept) if norm.weight is not None else None
    bias = norm.bias.index_select(0, kept) if norm.bias is not None else None
    normed = F.layer_norm(x.index_select(-1, kept), (kept.numel(),), weight, bias, norm.eps)
    return torch.zeros_like(x).index_copy(x.dim() - 1, kept, normed.to(x.dtype))


class TowerMasking:
    """The hooks of one tower; `gates` maps (kind, layer path) to its gate row ("" is the hidden stream's path)."""

    def __init__(self, structure: TowerStructure, gates: dict[tuple[str, str], HardConcrete]) -> None:
        self.structure, self.gates = structure, gates
        self.current: dict[tuple[str, str], torch.Tensor] = {}
        self.hidden_kept: torch.Tensor | None = None
        self.handles: list[RemovableHandle] = []

    def attach(self) -> None:
        if self.handles:
            return
        structure, hooks = self.structure, self.handles
        hooks.append(structure.module.register_forward_pre_hook(self._draw))
        for layer in structure.attention:
            make_modular(layer.module)  # nn.MultiheadAttention must call out_proj as a module for the hooks to fire
            if ("heads", layer.path) in self.gates:
                hooks.append(layer.out_proj.register_forward_pre_hook(self._head_gate(layer.path, layer.head_dim)))
        for layer in structure.mlp:
            if ("intermediate", layer.path) in self.gates:
                hooks.append(layer.fc2.register_forward_pre_hook(self._unit_gate(layer.path, layer.fc2)))
        if ("hidden", "") in self.gates:
            stream = structure.hidden
            assert stream is not None
            hooks.append(stream.entry.register_forward_pre_hook(self._stream_entry))
            for writer in [layer.out_proj for layer in structure.attention] + [layer.fc2 for layer in structure.mlp]:
                hooks.append(writer.register_forward_hook(self._stream_write))
            for norm in stream.norms:
                hooks.append(norm.register_forward_hook(self._stream_norm))

    def detach(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()

    def _draw(self, tower: nn.Module, args: tuple) -> None:
        self.current = {
            key: gate.sample() if tower.training else gate.deterministic() for key, gate in self.gates.items()
        }
        hidden = self.current.get(("hidden", ""))
        self.hidden_kept = None if hidden is None else hidden.nonzero().squeeze(1)

    def _head_gate(self, path: str, head_dim: int):
        def hook(module: nn.Module, args: tuple) -> tuple:
            gate = self.current[("heads", path)].repeat_interleave(head_dim)
            return (_scale(args[0], gate, -1), *args[1:])

        return hook

    def _unit_gate(self, path: str, fc2: nn.Module):
        axis = _channel_axis(fc2)

        def hook(module: nn.Module, args: tuple) -> tuple:
            return (_scale(args[0], self.current[("intermediate", path)], axis), *args[1:])

        return hook

    def _stream_entry(self, module: nn.Module, args: tuple) -> tuple:
        return (_scale(args[0], self.current[("hidden", "")], -1), *args[1:])

    def _stream_write(self, module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        return _scale(output, self.current[("hidden", "")], -1)

    def _stream_norm(self, module: nn.LayerNorm, args: tuple, output: torch.Tensor) -> torch.Tensor:
        kept = self.hidden_kept
        if kept is None or kept.numel() == module.normalized_shape[0]:
            return output
        return kept_layer_norm(args[0], module, kept)
