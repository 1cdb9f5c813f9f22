"""Named configurations the research compares against, as overrides of a run's config.

`mobileclip` is MobileCLIP's recipe at whatever scale the run has (papers.md §1.2–1.3, §7): pure distillation
(λ = 1, the S0/S1/S2 setting; `mobileclip-b` is the ViT-B setting λ = 0.75), both caption batches (Eq. 3), a
true K-teacher ensemble (average after softmax), AdamW β2 = 0.95 and weight decay 0.2, the LR schedule scaled
to the run's length (2k warmup of 200k iterations = 1 %, min LR = max LR / 1000, as 1e-3 → 1e-6), gradient
clipping at 1.0 as the scripts do (Tab 12 says none: §7 item 3), and no compression. The reinforced data
(`data.reinforcement`) is the study's to choose, since a preset cannot know the dataset.
"""

from __future__ import annotations

from typing import Any

from ablate.core.config.base import ConfigError

_MOBILECLIP: dict[str, Any] = {
    "loss.lambda": 1.0,
    "loss.alpha": 0.0,
    "loss.distill": "mobileclip",
    "loss.average_after_softmax": True,
    "data.captions": "both",
    "optim.beta1": 0.9,
    "optim.beta2": 0.95,
    "optim.weight_decay": 0.2,
    "optim.warmup_fraction": 0.01,
    "optim.min_lr_ratio": 0.001,
    "optim.grad_clip_norm": 1.0,
}

PRESETS: dict[str, tuple[str, dict[str, Any]]] = {
    "mobileclip": ("MobileCLIP-S* recipe: λ = 1, Eq. 3 captions, paper optimiser scaled to the run", _MOBILECLIP),
    "mobileclip-b": ("MobileCLIP-B recipe: as mobileclip with λ = 0.75", _MOBILECLIP | {"loss.lambda": 0.75}),
}


def preset_overrides(name: str, where: str = "preset") -> dict[str, Any]:
    """The dotted-path overrides of preset `name`; an unknown name is an error that lists the known ones."""
    if name not in PRESETS:
        raise ConfigError(f"{where}: unknown preset {name!r} (known: {', '.join(PRESETS)})")
    return dict(PRESETS[name][1])
