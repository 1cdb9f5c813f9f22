"""Efficiency metrics measured once per architecture, not once per run.

Every trial of a study that does not vary the architecture ends with the same efficiency measurement (counts,
MACs, latencies of the same shapes), which took longer than the training itself at real resolutions. None of
it depends on the weights' values, only on the architecture, the input shapes, the settings and the machine,
so the first run measures and every later run on this host reads the record back. The key is structural (the
model's module types, their scalar attributes such as head counts, and every parameter and buffer shape), so
a pruned or otherwise changed architecture is measured afresh.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import os
import platform

import torch

from ablate.core.data.bundled import cache_dir
from ablate.core.models.clip import CLIP
from ablate.core.models.efficiency import EfficiencySettings, efficiency_metrics

EFFICIENCY_CACHE = "efficiency"
_SCALARS = (bool, int, float, str, type(None))


def architecture_key(model: CLIP, settings: EfficiencySettings) -> str:
    """What the measurement depends on: structure, input shapes, settings, torch build and host."""
    modules = []
    for name, module in model.named_modules():
        attributes = {
            key: value
            for key, value in sorted(vars(module).items())
            if not key.startswith("_") and key != "training" and _is_scalar(value)
        }
        modules.append([name, f"{type(module).__module__}.{type(module).__qualname__}", repr(attributes)])
    tensors = [[name, list(t.shape), str(t.dtype)] for name, t in (*model.named_parameters(), *model.named_buffers())]
    record = {
        "modules": modules,
        "tensors": tensors,
        "inputs": [model.inputs.image_size, model.inputs.context_length],
        "settings": dataclasses.asdict(settings),
        "torch": torch.__version__,
        "cpu": torch.backends.cpu.get_cpu_capability(),
        "host": platform.node(),
    }
    return hashlib.sha256(json.dumps(record, default=str).encode()).hexdigest()[:24]


def _is_scalar(value: object) -> bool:
    if isinstance(value, tuple | list):
        return all(isinstance(item, _SCALARS) for item in value)
    return isinstance(value, _SCALARS)


def cached_efficiency_metrics(model: CLIP, settings: EfficiencySettings | None = None) -> dict[str, float]:
    """`efficiency_metrics(model, settings)`, measured by the first run of this architecture on this host;
    parallel trials of it wait for that one measurement (a file lock) instead of timing each other."""
    settings = settings or EfficiencySettings()
    folder = cache_dir() / EFFICIENCY_CACHE
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{architecture_key(model, settings)}.json"
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            return {key: float(value) for key, value in json.loads(path.read_text()).items()}
        except (OSError, ValueError, AttributeError):
            metrics = efficiency_metrics(model, settings)
            temporary = path.with_name(f"{path.name}.{os.getpid()}.tmp")
            temporary.write_text(json.dumps(metrics))
            temporary.replace(path)
            return metrics
