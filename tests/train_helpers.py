"""Short training configurations shared by the trainer, CLI and launch tests."""

from __future__ import annotations

from pathlib import Path

from ablate.core.config_io import apply_overrides


def fast_config(tmp_path: Path, shapes_root: Path, overrides: dict | None = None) -> dict:
    """A TrainConfig tree for a short tiny-model run on the small benchmark, tracked in tmp_path."""
    tree = {
        "seed": 0,
        "run_dir": str(tmp_path / "run"),
        "model": {"name": "tiny"},
        "data": {"root": str(shapes_root)},
        "optim": {"lr": 1e-3, "warmup_steps": 5},
        "train": {
            "steps": 30,
            "batch_size": 32,
            "eval_every": 15,
            "checkpoint_every": 10,
            "log_every": 5,
            "threads": 2,
            "progress": False,
        },
        "eval": {"batch_size": 128, "max_samples": 128},
        "tracking": {"uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "experiment": "tests"},
    }
    return apply_overrides(tree, overrides or {})
