"""The trial job: the only bridge from the orchestrator to `core`.

It runs inside a submitit job (a separate process, locally or on a cluster node). It holds only plain data, so
it pickles cleanly; it reopens the Optuna study to report each evaluation and to ask whether it was pruned,
which is how pruners work for launched jobs (peers.md pain point 2).
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from mlflow.tracking import MlflowClient

from ablate.ablations.optuna_study import open_study
from ablate.ablations.spec import StudySpec
from ablate.core.config import TrainConfig
from ablate.core.tracking import RUN_ID_FILE
from ablate.core.trainer import train


def config_hash(params: dict[str, Any]) -> str:
    """Identifies a configuration independent of its seed, so replicates group together in analysis."""
    canonical = json.dumps(
        {k: v for k, v in sorted(params.items()) if k != "seed"}, sort_keys=True, default=str
    )
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


@dataclass
class TrialJob:
    spec: dict[str, Any]  # StudySpec as JSON-able data
    trial_id: int
    trial_number: int
    config: dict[str, Any]  # the complete TrainConfig tree of this trial

    def __call__(self) -> dict[str, Any]:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
        spec = StudySpec.model_validate(self.spec)
        config = TrainConfig.model_validate(self.config)
        callbacks = [self._pruning_callback(spec)] if len(spec.objectives) == 1 else []
        try:
            result = train(config, callbacks)
        except Exception:
            self._tag_run(config, {"ablate.state": "failed"})  # the trainer has recorded the error itself
            raise
        self._tag_run(config, {"ablate.state": "pruned" if result.stopped_early else "finished"})
        return {
            "run_id": result.run_id,
            "metrics": result.metrics,
            "pruned": result.stopped_early,
            "steps": result.steps,
        }

    def _pruning_callback(self, spec: StudySpec):
        trial = optuna.trial.Trial(open_study(spec), self.trial_id)
        metric = spec.objectives[0].metric

        def report_and_check(step: int, metrics: dict[str, float]) -> bool:
            if metric not in metrics:
                return False
            trial.report(metrics[metric], step)
            return trial.should_prune()

        return report_and_check

    @staticmethod
    def _tag_run(config: TrainConfig, tags: dict[str, str]) -> None:
        record = Path(config.run_dir) / RUN_ID_FILE
        if config.tracking.enabled and record.is_file():
            client = MlflowClient(tracking_uri=config.tracking.uri)
            run_id = json.loads(record.read_text())["run_id"]
            for key, value in tags.items():
                client.set_tag(run_id, key, value)
