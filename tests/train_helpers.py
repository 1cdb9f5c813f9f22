"""Short training configurations and study-file helpers shared by the trainer, CLI, launch and fault tests."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import optuna
import yaml
from mlflow.tracking import MlflowClient

from ablate.ablations.scheduler import prepare
from ablate.core.config.loading import apply_overrides

# Threads per training run: 2, or the share of the cores conftest.py gives each pytest-xdist worker
TRAIN_THREADS = int(os.environ.get("OMP_NUM_THREADS", "2")) if "PYTEST_XDIST_WORKER_COUNT" in os.environ else 2


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
            "threads": TRAIN_THREADS,
            "progress": False,
        },
        "eval": {"batch_size": 128, "max_samples": 128, "efficiency": False},
        "tracking": {"uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "experiment": "tests"},
    }
    return apply_overrides(tree, overrides or {})


def write_study_yaml(folder: Path, study: dict) -> Path:
    """`folder/study.yaml` with the study's stores and run folders kept inside `folder`."""
    study = {"storage": {"mlflow": f"sqlite:///{folder / 'mlflow.db'}"}, "runs_root": str(folder / "runs"), **study}
    path = folder / "study.yaml"
    path.write_text(yaml.safe_dump(study))
    return path


def trial_runs(path: Path) -> list:
    """The MLflow child runs (one per replicate) of a launched study."""
    spec, _ = prepare(path)
    client = MlflowClient(tracking_uri=spec.storage.mlflow)
    experiment = client.get_experiment_by_name(spec.name)
    return client.search_runs([experiment.experiment_id], "tags.`ablate.role` = 'trial'")


def optuna_study(path: Path) -> optuna.Study:
    """The Optuna study of a launched study file."""
    spec, _ = prepare(path)
    return optuna.load_study(study_name=spec.name, storage=spec.open_optuna_storage())


def free_port() -> int:
    """A TCP port nothing listens on now (for servers and process groups a test starts)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
