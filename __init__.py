"""ablate: ablation studies for efficient CLIP training (MobileCLIP reinforced training x TinyCLIP).

The package maps the repository's top-level folders onto one namespace: `ablate.core` (models, losses, data,
trainer), `ablate.ablations` (study spec, scheduler, trial job), `ablate.slurm` (executors) and
`ablate.analysis` (tracking data to tables, plots and reports).
"""

__version__ = "0.1.0"
