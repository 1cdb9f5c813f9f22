"""A real MLflow sqlite store holding a small synthetic study, laid out as the orchestrator logs studies.

Values follow simple formulas so tests can assert hand-computed statistics: the objective's final value of
configuration i and seed index s is 0.5 + 0.1 i + 0.2 s, so configuration 0 has replicates [0.5, 0.7]; the
baseline's replicates are [0.55, 0.65]. With `rich=True` the study also has a pruned trial, a resumed run
that logged some steps twice, compute and compression metrics, a second objective (`model/params_total`,
minimised: 1e6 (i + 1) for configuration i, 2.5e6 for the baseline; all pruned to 1e6), the
`study/study.json` artifact, a description and an Optuna storage holding the same trials. The benchmark
imports this module too.
"""

from __future__ import annotations

import atexit
import functools
import hashlib
import json
import logging
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import optuna
from mlflow import MlflowClient
from mlflow.entities import Metric, Param

STUDY = "quickstart"
OBJECTIVE = "eval/zeroshot/mean_top1"
PARAMS_METRIC = "model/params_total"
BASELINE = "mobileclip"
DESCRIPTION = "Does distillation weight help a tiny CLIP?"
EVAL_STEPS = (50, 100)
TRAIN_STEPS = (0, 25, 50, 75, 100)
PARAM_VALUES = {"loss.lambda": (0.0, 0.5, 1.0), "optim.lr": (1e-4, 1e-3, 1e-2)}
DEFAULTS = {
    "loss.lambda": 0.5,
    "loss.alpha": 0.5,
    "optim.lr": 1e-3,
    "model.name": "tinyclip",
    "train.steps": 100,
    "stages": "[0.25, 0.5]",
}
T0_MS = 1_700_000_000_000
DURATION_MS = 90_000
CPU_HOURS_PER_RUN = 0.25
BASELINE_PARAMS = 2.5e6
REALISED_PARAMS = 1e6


def objective_value(config_index: int, seed_index: int) -> float:
    return 0.5 + 0.1 * config_index + 0.2 * seed_index


@dataclass(frozen=True)
class SyntheticStudy:
    """Handles on what `build_study` logged."""

    tracking_uri: str
    study: str
    parent_run_id: str
    experiment_id: str
    run_ids: dict[int, str]  # trial number -> MLflow run id
    config_hashes: list[str]  # of the varied configurations, in order
    optuna_storage: str | None = None
    objectives: list[dict[str, str]] = field(default_factory=list)


def create_store(root: Path) -> str:
    """URI of a fresh sqlite store under `root`, schema included.

    Creating MLflow's schema runs its migrations (~6 s); copying a database migrated once per process takes
    milliseconds, which keeps a suite of many small stores fast.
    """
    root.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(_migrated_database(), root / "mlflow.db")
    return f"sqlite:///{root}/mlflow.db"


@functools.cache
def _migrated_database() -> Path:
    for name in ("alembic", "mlflow.store.db.utils"):
        logging.getLogger(name).setLevel(logging.WARNING)
    folder = Path(tempfile.mkdtemp(prefix="ablate-mlflow-schema-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    MlflowClient(tracking_uri=f"sqlite:///{folder}/mlflow.db").search_experiments()
    return folder / "mlflow.db"


def build_study(
    root: Path,
    study: str = STUDY,
    search_space: Sequence[str] = ("loss.lambda", "optim.lr"),
    seeds: Sequence[int] = (0, 1),
    baseline: bool = True,
    failed: bool = True,
    rich: bool = False,
    configs: Sequence[dict] | None = None,
    value: Callable[[int, int], float] = objective_value,
    tracking_uri: str | None = None,
) -> SyntheticStudy:
    """Log a study: 3 configurations x `seeds` (1 configuration if nothing is varied, or `configs`), a baseline
    pair with objective values [0.55, 0.65], a failed trial with a partial history, and what `rich` adds.

    The store is new under `root` unless `tracking_uri` names one that `build_study` made before.
    """
    uri = tracking_uri or create_store(root)
    client = MlflowClient(tracking_uri=uri)
    experiment_id = client.create_experiment(study, artifact_location=(root / "artifacts").as_uri())
    objectives = [{"metric": OBJECTIVE, "direction": "maximize"}]
    if rich:
        objectives.append({"metric": PARAMS_METRIC, "direction": "minimize"})
    storage = f"sqlite:///{root}/optuna.db" if rich else None
    tags = {
        "ablate.role": "study",
        "ablate.study": study,
        "ablate.objective": json.dumps(objectives),
        "ablate.search_space": json.dumps(sorted(search_space)),
        "ablate.description": DESCRIPTION if rich else "",
        **({"ablate.optuna_storage": storage} if storage else {}),
        # what `ablate launch` records: the file it was given and its copy under runs/<study>/
        **(
            {"ablate.study_file": f"ablations/studies/{study}.yaml", "ablate.study_record": f"runs/{study}/study.json"}
            if rich
            else {}
        ),
    }
    parent = client.create_run(experiment_id, start_time=T0_MS, run_name=study, tags=tags).info.run_id
    if rich:
        client.log_text(parent, json.dumps(_spec(study, search_space, objectives, uri)), "study/study.json")
    if configs is None:
        configs = [
            {**DEFAULTS, **{p: PARAM_VALUES[p][i] for p in search_space}} for i in range(3 if search_space else 1)
        ]
    logger = _TrialLogger(client, experiment_id, parent, study, rich)
    for i, config in enumerate(configs):
        for s, seed in enumerate(seeds):
            logger.log(config, seed, value(i, s), params_total=1e6 * (i + 1), resumed=rich and i == s == 0)
    if baseline:
        base = {**DEFAULTS, "model.name": BASELINE}
        for s, seed in enumerate(seeds):
            logger.log(base, seed, 0.55 + 0.1 * s, params_total=BASELINE_PARAMS, baseline=BASELINE)
    if failed:
        logger.log(configs[0], 99, final=0.1, params_total=1e6, state="failed")
    if rich:
        logger.log(configs[-1], 98, final=0.2, params_total=1e6 * len(configs), state="pruned")
        _optuna_study(storage, study, logger.trials, search_space, len(objectives))
    client.set_terminated(parent, "FINISHED", end_time=T0_MS + 100 * DURATION_MS)
    return SyntheticStudy(
        uri,
        study,
        parent,
        experiment_id,
        logger.run_ids,
        [config_hash(c) for c in configs],
        storage,
        objectives,
    )


def config_hash(config: dict) -> str:
    return hashlib.sha1(json.dumps(config, sort_keys=True).encode()).hexdigest()[:12]


def _spec(study: str, search_space: Sequence[str], objectives: list[dict], uri: str) -> dict:
    """The StudySpec JSON the orchestrator logs as `study/study.json`."""
    return {
        "name": study,
        "description": DESCRIPTION,
        "base": "base/tiny_clip.yaml",
        "overrides": {"train.steps": 100},
        "search_space": {name: {"type": "categorical", "choices": list(PARAM_VALUES[name])} for name in search_space},
        "objectives": objectives,
        "sampler": {"name": "grid", "seed": 0},
        "pruner": {"name": "median", "startup_trials": 2, "warmup_steps": 50},
        "budget": {"trials": 10, "parallel": 2},
        "executor": {"kind": "local", "timeout_min": 30},
        "storage": {"optuna": None, "mlflow": uri},
    }


def _optuna_study(
    storage: str, study: str, trials: list[tuple[dict, str, list[float]]], names: Sequence[str], n: int
) -> None:
    """The Optuna side of the study: one trial per non-baseline run, with its state and objective values."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    target = optuna.create_study(storage=storage, study_name=study, directions=["maximize", "minimize"][:n])
    distributions = {name: optuna.distributions.CategoricalDistribution(PARAM_VALUES[name]) for name in names}
    states = {
        "finished": optuna.trial.TrialState.COMPLETE,
        "failed": optuna.trial.TrialState.FAIL,
        "pruned": optuna.trial.TrialState.PRUNED,
    }
    for config, state, values in trials:
        complete = state == "finished"
        target.add_trial(
            optuna.trial.create_trial(
                params={name: config[name] for name in names},
                distributions=distributions,
                values=values[:n] if complete else None,
                state=states[state],
            )
        )


class _TrialLogger:
    def __init__(self, client: MlflowClient, experiment_id: str, parent: str, study: str, rich: bool) -> None:
        self.client, self.experiment_id, self.parent, self.study = client, experiment_id, parent, study
        self.rich = rich
        self.run_ids: dict[int, str] = {}
        self.trials: list[tuple[dict, str, list[float]]] = []  # non-baseline: (config, state, objective values)

    def log(
        self,
        config: dict,
        seed: int,
        final: float,
        params_total: float,
        baseline: str | None = None,
        state: str = "finished",
        resumed: bool = False,
    ) -> None:
        """One trial; a failed or pruned one stops after the first eval step, logging `final` there.

        A resumed run logs its first eval step twice, the first time with a value 1.0 lower and an earlier
        timestamp, as a run killed after that step and resumed from an earlier checkpoint does.
        """
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
            **({"ablate.error": "RuntimeError: loss is NaN"} if state == "failed" else {}),
        }
        run_id = self.client.create_run(self.experiment_id, start_time=start, tags=tags).info.run_id
        complete = state == "finished"
        eval_steps = EVAL_STEPS if complete else EVAL_STEPS[:1]
        train_steps = TRAIN_STEPS if complete else TRAIN_STEPS[:2]
        metrics = [
            *(Metric("train/loss", 2.0 - step / 100 + 0.01 * seed, start + step, step) for step in train_steps),
            *(Metric("train/lr", 1e-3, start + step, step) for step in train_steps),
        ]
        for step in eval_steps:
            value = final - 0.1 * (EVAL_STEPS[-1] - step) / (EVAL_STEPS[-1] - EVAL_STEPS[0]) if complete else final
            metrics += [
                Metric(OBJECTIVE, value, start + step, step),
                Metric("eval/zeroshot/shape/top1", value + 0.05, start + step, step),
                Metric("eval/zeroshot/colour/top1", value - 0.05, start + step, step),
                Metric("eval/retrieval/i2t_r1", value / 2, start + step, step),
            ]
            if resumed and step == EVAL_STEPS[0]:
                metrics.append(Metric(OBJECTIVE, value - 1.0, start + step - 1, step))
        if self.rich:
            metrics += self._rich_metrics(start, params_total, complete)
        params = [Param(key, str(value)) for key, value in {**config, "seed": seed}.items()]
        self.client.log_batch(run_id, metrics=metrics, params=params)
        self.client.set_terminated(run_id, "FAILED" if state == "failed" else "FINISHED", end_time=start + DURATION_MS)
        self.run_ids[trial] = run_id
        if baseline is None:
            self.trials.append((config, state, [final, params_total]))

    @staticmethod
    def _rich_metrics(start: int, params_total: float, complete: bool) -> list[Metric]:
        """Model size at step 0, compute spent, and compression: every model is pruned to 1e6 parameters."""
        end = EVAL_STEPS[-1] if complete else EVAL_STEPS[0]
        return [
            Metric(PARAMS_METRIC, params_total, start, 0),
            Metric("compute/cpu_hours", CPU_HOURS_PER_RUN, start + end, end),
            Metric("compression/params_realised", REALISED_PARAMS, start + end, end),
            Metric("compression/realised_sparsity", 1 - REALISED_PARAMS / params_total, start + end, end),
            Metric("compression/expected_sparsity", 1 - REALISED_PARAMS / params_total, start + end, end),
        ]


@functools.cache
def rich_report() -> tuple[SyntheticStudy, Path]:
    """A rich study and its executed report (`report.ipynb`, `report.html`, `figures/`), built once per test
    process: report and browser tests read the same one, since executing a notebook takes seconds."""
    from ablate.analysis import build_report

    root = Path(tempfile.mkdtemp(prefix="ablate-rich-report-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    study = build_study(root / "store", rich=True)
    return study, build_report(study.study, study.tracking_uri, root / "report").parent
