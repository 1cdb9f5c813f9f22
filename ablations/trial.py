"""The trial job: the only bridge from the orchestrator to `core`.

It runs inside a submitit job (a separate process, locally or on a cluster node). It holds only plain data, so
it pickles cleanly; it reopens the Optuna study to report each evaluation and to ask whether the trial was
pruned, which is how pruners work for launched jobs (peers.md pain point 2).

Its run folder is its ledger: `job.json` says which process runs it (so a relaunch can stop a stale one),
`result.json` is written last and atomically, so a replicate with a result is never run again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from mlflow.tracking import MlflowClient

from ablate.ablations.optuna_study import open_study
from ablate.ablations.spec import StudySpec
from ablate.core.config import TrainConfig
from ablate.core.tracking import RUN_ID_FILE
from ablate.core.trainer import EvalCallback, train

JOB_RECORD = "job.json"
RESULT_RECORD = "result.json"


def config_hash(params: dict[str, Any]) -> str:
    """Identifies a configuration independent of its seed, so replicates group together in analysis."""
    canonical = json.dumps({k: v for k, v in sorted(params.items()) if k != "seed"}, sort_keys=True, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


def write_json_atomically(path: Path, data: dict[str, Any]) -> None:
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(data, indent=2))
    temporary.replace(path)


def read_result(run_dir: Path) -> dict[str, Any] | None:
    path = run_dir / RESULT_RECORD
    return json.loads(path.read_text()) if path.is_file() else None


@dataclass
class TrialJob:
    spec: dict[str, Any]  # StudySpec as JSON-able data
    trial_id: int | None  # Optuna's storage id of the trial; None for baseline runs
    config: dict[str, Any]  # the complete TrainConfig tree of this replicate
    reports_to_study: bool  # one replicate per trial reports intermediate values; all of them obey pruning
    submitted_at: float  # epoch seconds when the scheduler handed it to the executor (queue + start-up time)

    def __call__(self) -> dict[str, Any]:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
        spec = StudySpec.model_validate(self.spec)
        config = TrainConfig.model_validate(self.config)
        run_dir = Path(config.run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        job_id = os.environ.get("SLURM_JOB_ID") or os.environ.get("SUBMITIT_LOCAL_JOB_ID", "")
        write_json_atomically(
            run_dir / JOB_RECORD,
            {
                "pid": os.getpid(),
                "host": platform.node(),
                "job_id": job_id,
                "submitted": self.submitted_at,
                "started": time.time(),
            },
        )
        callbacks = [self._pruning_callback(spec)] if self.trial_id is not None and len(spec.objectives) == 1 else []
        try:
            result = train(config, callbacks)
        except Exception:
            self._tag_run(config, {"ablate.state": "failed"})  # the trainer has recorded the error itself
            raise
        self._tag_run(config, {"ablate.state": "pruned" if result.stopped_early else "finished"})
        outcome = {
            "run_id": result.run_id,
            "metrics": result.metrics,
            "pruned": result.stopped_early,
            "steps": result.steps,
            "wall_seconds": result.wall_seconds,
            "compute_seconds": result.compute_seconds,
            "threads": config.train.threads,
        }
        write_json_atomically(run_dir / RESULT_RECORD, outcome)
        return outcome

    def _pruning_callback(self, spec: StudySpec) -> EvalCallback:
        trial = optuna.trial.Trial(open_study(spec), self.trial_id)
        metric = spec.objectives[0].metric

        def report_and_check(step: int, metrics: dict[str, float]) -> bool:
            if self.reports_to_study and metric in metrics:
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
