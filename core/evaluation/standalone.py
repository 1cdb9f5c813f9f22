"""`ablate eval`: evaluate a saved model after (or beside) training, and record it on the run it came from.

A run folder (its latest checkpoint), one `checkpoints/step_*.pt` or an exported `model_reparam.pt` is loaded and
evaluated by the same `EvaluationSuite` the trainer uses, built from the run's own `config.yaml` (an export's
run is the one its recorded source checkpoint belongs to); so without `tasks` it reproduces the run's
in-training numbers. The metrics are logged to the run's MLflow run (found
through `mlflow_run.json`) at the checkpoint's step. Saved weights do not change, so the zero-shot classifiers
are kept on disk (`<cache>/zero_shot/`, keyed by the text tower's weights version): evaluating the same model
again, on any task sharing class names and templates, reuses them.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from ablate.core.config.base import ConfigError
from ablate.core.config.loading import read_yaml, validate_train_config
from ablate.core.config.sections import EvalConfig, ModelConfig, TrainConfig
from ablate.core.data.bundled import cache_dir, resolve_data_root
from ablate.core.data.manifest import load_manifest
from ablate.core.evaluation.classifier import ZeroShotClassifiers
from ablate.core.evaluation.config import EvalTaskConfig
from ablate.core.evaluation.suite import EvaluationSuite
from ablate.core.models.clip import CLIP
from ablate.core.models.export import CHECKPOINT_NAME, load_exported, load_trained, resolve_source
from ablate.core.training.tracking import RUN_ID_FILE


@dataclass
class StandaloneResult:
    metrics: dict[str, float]
    step: int | None
    checkpoint: str
    run_id: str | None  # the MLflow run the metrics were logged to, if any


def classifier_cache_dir() -> Path:
    return cache_dir() / "zero_shot"


def evaluate_saved(
    source: Path,
    tasks: list[EvalTaskConfig] | None = None,
    *,
    config_file: Path | None = None,
    model_name: str | None = None,
    device: str = "cpu",
    log: bool = True,
    disk_cache: bool = True,
) -> StandaloneResult:
    """Evaluate `source` on the run's own evaluation, or on `tasks` only when given."""
    model, step, checkpoint, run_dir, config = _load(source, config_file, model_name)
    if config is None and tasks is None:
        raise ConfigError(f"{source}: no run config says what to evaluate; pass --tasks")
    eval_config = config.eval if config is not None else EvalConfig()
    manifest = None
    if config is not None and (tasks is None or any(t.format == "manifest" and t.path is None for t in tasks)):
        manifest = load_manifest(resolve_data_root(config.data))
    target = torch.device(device)
    classifiers = ZeroShotClassifiers(classifier_cache_dir() if disk_cache else None)
    suite = EvaluationSuite(eval_config, manifest, model.inputs, classifiers, tasks, held_out=tasks is None)
    metrics = suite(model.to(target), target, _autocast(config, target))
    run_id = _log(run_dir, metrics, step or 0) if log else None
    return StandaloneResult(metrics, step, str(checkpoint), run_id)


def _load(
    source: Path, config_file: Path | None, model_name: str | None
) -> tuple[CLIP, int | None, Path, Path | None, TrainConfig | None]:
    """(model in eval mode, its step, the file, the run folder, the run's TrainConfig) for any saved form."""
    if source.is_file() and source.name == CHECKPOINT_NAME:  # an export: its run is where its source lies
        state = torch.load(source, map_location="cpu", weights_only=True)
        _, run_dir = resolve_source(Path(state["source"])) if Path(state.get("source", "")).is_file() else (None, None)
        config_path = config_file or (run_dir / "config.yaml" if run_dir is not None else None)
        config = None
        if config_path is not None and config_path.is_file():
            config = validate_train_config(read_yaml(config_path), str(config_path))
        return load_exported(source), state.get("step"), source, run_dir, config
    checkpoint, run_dir = resolve_source(source)
    config_path = config_file or (run_dir / "config.yaml" if run_dir is not None else None)
    config = None
    if config_path is not None and config_path.is_file():
        config = validate_train_config(read_yaml(config_path), str(config_path))
    if model_name is not None:
        model_config = ModelConfig(name=model_name)
    elif config is not None:
        model_config = config.model
    else:
        raise ConfigError(f"{source}: no config.yaml beside it says which model this is; pass --config or --model")
    model, step = load_trained(checkpoint, model_config)
    return model, step, checkpoint, run_dir, config


def _autocast(config: TrainConfig | None, device: torch.device) -> bool:
    """bf16 autocast exactly where the run evaluated under it (its precision setting on this device)."""
    precision = config.train.precision if config is not None else "fp32"
    return precision == "bf16" or (precision == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported())


def _log(run_dir: Path | None, metrics: dict[str, float], step: int) -> str | None:
    record = run_dir / RUN_ID_FILE if run_dir is not None else None
    if record is None or not record.is_file():
        return None
    info = json.loads(record.read_text())
    now = int(time.time() * 1000)
    client = MlflowClient(tracking_uri=info["tracking_uri"])
    client.log_batch(info["run_id"], metrics=[Metric(key, value, now, step) for key, value in metrics.items()])
    return info["run_id"]
