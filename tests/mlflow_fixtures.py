"""A real MLflow sqlite store holding a small synthetic study, laid out as the orchestrator logs studies.

Values follow simple formulas so tests can assert hand-computed statistics: the objective's final value of
configuration i and seed index s is 0.5 + 0.1 i + 0.2 s, so configuration 0 has replicates [0.5, 0.7].
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from mlflow import MlflowClient
from mlflow.entities import Metric, Param

STUDY = "quickstart"
OBJECTIVE = "eval/zeroshot/mean_top1"
BASELINE = "mobileclip"
EVAL_STEPS = (50, 100)
TRAIN_STEPS = (0, 25, 50, 75, 100)
PARAM_VALUES = {"loss.lambda": (0.0, 0.5, 1.0), "optim.lr": (1e-4, 1e-3, 1e-2)}
DEFAULTS = {
    "loss.lambda": 0.5,
    "loss.alpha": 0.5,
    "optim.lr": 1e-3,
    "model.name": "tinyclip",
    "train.steps": 100,
}
T0_MS = 1_700_000_000_000
DURATION_MS = 90_000


@dataclass(frozen=True)
class SyntheticStudy:
    """Handles on what `build_study` logged."""

    tracking_uri: str
    study: str
    parent_run_id: str
    run_ids: dict[int, str]  # trial number -> MLflow run id
    config_hashes: list[str]  # of the varied configurations, in order


def create_store(root: Path) -> str:
    """URI of a fresh sqlite store under `root`, with its schema created now, from this process."""
    for name in ("alembic", "mlflow.store.db.utils"):
        logging.getLogger(name).setLevel(logging.WARNING)
    uri = f"sqlite:///{root}/mlflow.db"
    MlflowClient(tracking_uri=uri).search_experiments()
    return uri


def build_study(
    root: Path,
    study: str = STUDY,
    search_space: Sequence[str] = ("loss.lambda", "optim.lr"),
    seeds: Sequence[int] = (0, 1),
    baseline: bool = True,
    failed: bool = True,
) -> SyntheticStudy:
    """Log a study: 3 configurations x `seeds` (1 configuration if nothing is varied), a baseline pair with
    objective values [0.55, 0.65], and a failed trial with a partial history."""
    uri = create_store(root)
    client = MlflowClient(tracking_uri=uri)
    experiment_id = client.create_experiment(study, artifact_location=(root / "artifacts").as_uri())
    parent = client.create_run(
        experiment_id,
        start_time=T0_MS,
        run_name=study,
        tags={
            "ablate.role": "study",
            "ablate.study": study,
            "ablate.objective": json.dumps([{"metric": OBJECTIVE, "direction": "maximize"}]),
            "ablate.search_space": json.dumps(list(search_space)),
        },
    ).info.run_id
    logger = _TrialLogger(client, experiment_id, parent, study)
    configs = [
        {**DEFAULTS, **{p: PARAM_VALUES[p][i] for p in search_space}} for i in range(3 if search_space else 1)
    ]
    for i, config in enumerate(configs):
        for s, seed in enumerate(seeds):
            logger.log(config, seed, final=0.5 + 0.1 * i + 0.2 * s)
    if baseline:
        for s, seed in enumerate(seeds):
            logger.log({**DEFAULTS, "model.name": BASELINE}, seed, final=0.55 + 0.1 * s, baseline=BASELINE)
    if failed:
        logger.log(configs[0], 99, final=0.1, state="failed")
    client.set_terminated(parent, "FINISHED", end_time=T0_MS + 100 * DURATION_MS)
    return SyntheticStudy(uri, study, parent, logger.run_ids, [config_hash(c) for c in configs])


def config_hash(config: dict) -> str:
    return hashlib.sha1(json.dumps(config, sort_keys=True).encode()).hexdigest()[:12]


class _TrialLogger:
    def __init__(self, client: MlflowClient, experiment_id: str, parent: str, study: str) -> None:
        self.client, self.experiment_id, self.parent, self.study = client, experiment_id, parent, study
        self.run_ids: dict[int, str] = {}

    def log(
        self, config: dict, seed: int, final: float, baseline: str | None = None, state: str = "finished"
    ):
        """One trial; a failed one stops after the first eval step, logging `final` there."""
        trial = len(self.run_ids)
        start = T0_MS + trial * DURATION_MS
        tags = {
            "mlflow.parentRunId": self.parent,
            "ablate.role": "trial",
            "ablate.study": self.study,
            "ablate.trial_number": str(trial),
            "ablate.config_hash": config_hash(config),
            "ablate.seed": str(seed),
            "ablate.state": state,
            **({"ablate.baseline": baseline} if baseline else {}),
        }
        run_id = self.client.create_run(self.experiment_id, start_time=start, tags=tags).info.run_id
        complete = state == "finished"
        eval_steps = EVAL_STEPS if complete else EVAL_STEPS[:1]
        train_steps = TRAIN_STEPS if complete else TRAIN_STEPS[:2]
        metrics = [
            *(
                Metric("train/loss", 2.0 - step / 100 + 0.01 * seed, start + step, step)
                for step in train_steps
            ),
            *(Metric("train/lr", 1e-3, start + step, step) for step in train_steps),
        ]
        for step in eval_steps:
            value = (
                final - 0.1 * (EVAL_STEPS[-1] - step) / (EVAL_STEPS[-1] - EVAL_STEPS[0])
                if complete
                else final
            )
            metrics += [
                Metric(OBJECTIVE, value, start + step, step),
                Metric("eval/zeroshot/shape/top1", value + 0.05, start + step, step),
                Metric("eval/zeroshot/colour/top1", value - 0.05, start + step, step),
                Metric("eval/retrieval/i2t_r1", value / 2, start + step, step),
            ]
        params = [Param(key, str(value)) for key, value in {**config, "seed": seed}.items()]
        self.client.log_batch(run_id, metrics=metrics, params=params)
        self.client.set_terminated(run_id, "FINISHED" if complete else "FAILED", end_time=start + DURATION_MS)
        self.run_ids[trial] = run_id
