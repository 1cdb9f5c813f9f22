"""Named configurations the research compares against, as overrides of a run's config.

`mobileclip` is MobileCLIP's recipe at whatever scale the run has (papers.md §1.2–1.3, §7): pure distillation
(λ = 1, the S0/S1/S2 setting; `mobileclip-b` is the ViT-B setting λ = 0.75), both caption batches (Eq. 3), a
true K-teacher ensemble (average after softmax), AdamW β2 = 0.95 and weight decay 0.2, the LR schedule scaled
to the run's length (2k warmup of 200k iterations = 1 %, min LR = max LR / 1000, as 1e-3 → 1e-6), gradient
clipping at 1.0 as the scripts do (Tab 12 says none: §7 item 3), a weight EMA evaluated in place of the
weights (Tab 12: decay 0.9995, i.e. a 2000-step horizon, 1 % of the 200k iterations; scaled like the warmup, since
0.9995 over a 900-step run would leave 64 % of the average on the initial weights), and no compression. The
reinforced data (`data.reinforcement`) is the study's to choose, since a preset cannot know the dataset.

What still differs from the paper, and why:
- no RangeAugment (the student-only brightness/contrast/noise augmentation with a PSNR curriculum, Tab 12/13):
  it adapts its magnitudes online, so it cannot be stored with the reinforcement, and it is not implemented;
- scale: batch, iterations, resolution (256 px for S0–S2), context length and teachers (two ViT-L/14s) are the
  run's, not the paper's 65k batch, 200k iterations and DataCompDR-1B;
- precision follows `train.precision` (bf16 on GPUs by default, as the paper; fp32 on CPUs);
- the EMA starts at the initial weights without timm's decay warm-up and is not reported beside the raw weights.

The warmup stays the paper's 1 % of the run, so runs of a few hundred steps warm up for 1-3 steps; there plain
CLIP (λ = 0) stayed at chance in the demo while distillation did not, so short studies comparing λ should set a
longer `optim.warmup_fraction` in every arm, as `ablations/studies/demo.yaml` does (10 %).
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
    "optim.ema_horizon_fraction": 0.01,
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
