"""The trial job: the only bridge from the orchestrator to `core`.

It runs inside a submitit job (a separate process, locally or on a cluster node). It holds only plain data, so
it pickles cleanly; it reopens the Optuna study to report each evaluation and to ask whether the trial was
pruned, which is how pruners work for launched jobs (peers.md pain point 2).

Its run folder is its ledger: `job.json` says which process runs it (so a relaunch can stop a stale one),
`result.json` is written last and atomically, so a replicate with a result is never run again.

It is checkpointable for submitit: when SLURM preempts it or its time limit nears (USR2), submitit calls
`checkpoint`, which resubmits the same job, and requeues it; the requeued job (like one requeued by
`scontrol requeue` or after a node failure) resumes from the run folder's latest checkpoint and continues the
same MLflow run, whose id the trainer keeps in the run folder.

This module imports nothing heavy at the top: a job process unpickles `TrialJob` before submitit installs its
signal handlers, so a preemption signal that arrives while torch is still loading must already find them.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import submitit

from ablate.slurm.accounting import Usage
from ablate.slurm.warm_pool import JOB_ID_VARIABLE

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

    from ablate.ablations.spec import StudySpec
    from ablate.core.config.sections import TrainConfig
    from ablate.core.training.trainer import EvalCallback

JOB_RECORD = "job.json"
RESULT_RECORD = "result.json"
SLURM_USAGE_RECORD = "slurm_usage.json"  # {job id: Usage} of every SLURM job that ran this replicate
SUBMISSION_RECORD = "submission.json"  # the SLURM job id a launcher submitted for this replicate
RUN_ID_RECORD = "mlflow_run.json"  # written by the trainer (ablate.core.training.tracking.RUN_ID_FILE)


def _join_trial_processes() -> bool:
    """In a job of several tasks (`executor.tasks_per_node` / `nodes`), export torch.distributed's `env://`
    variables for the trainer's process group; True on the ranks that only train. GPUs stay visible to every
    rank: the trainer picks its device from LOCAL_RANK."""
    try:
        environment = submitit.JobEnvironment()
    except RuntimeError:  # called outside a submitit job (e.g. directly): one process
        return False
    if environment.num_tasks <= 1:
        return False
    submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
    return environment.global_rank != 0


def config_hash(params: dict[str, Any]) -> str:
    """Identifies a configuration independent of its seed, so replicates group together in analysis."""
    canonical = json.dumps({k: v for k, v in sorted(params.items()) if k != "seed"}, sort_keys=True, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


def write_json_atomically(path: Path, data: dict[str, Any]) -> None:
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(data, indent=2))
    temporary.replace(path)


def slurm_job_id() -> str | None:
    """`ARRAY_TASK` for array tasks: their own SLURM_JOB_ID can equal the array's id (`scancel` would hit all)."""
    if os.environ.get("SLURM_ARRAY_JOB_ID"):
        return f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    return os.environ.get("SLURM_JOB_ID")


def read_result(run_dir: Path) -> dict[str, Any] | None:
    path = run_dir / RESULT_RECORD
    return json.loads(path.read_text()) if path.is_file() else None


def read_slurm_usage(run_dir: Path) -> dict[str, dict[str, float]]:
    path = run_dir / SLURM_USAGE_RECORD
    return json.loads(path.read_text()) if path.is_file() else {}


def record_slurm_usage(run_dir: Path, job_id: str, usage: Usage) -> Usage:
    """Add one job's accounting to the replicate's ledger; returns the total over all its jobs (retries)."""
    jobs = read_slurm_usage(run_dir) | {job_id: usage.as_dict()}
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomically(run_dir / SLURM_USAGE_RECORD, jobs)
    return Usage(*(sum(job[name] for job in jobs.values()) for name in Usage.__dataclass_fields__))


def tracked_run(run_dir: Path, tracking_uri: str) -> tuple[MlflowClient, str] | None:
    """The replicate's MLflow run, if its job got far enough to open one."""
    from mlflow.tracking import MlflowClient

    record = run_dir / RUN_ID_RECORD
    if not record.is_file():
        return None
    return MlflowClient(tracking_uri=tracking_uri), json.loads(record.read_text())["run_id"]


def log_slurm_usage(run_dir: Path, tracking_uri: str, total: Usage) -> None:
    """Log SLURM's CPU/GPU-hours to the replicate's MLflow run."""
    from mlflow.entities import Metric

    if (tracked := tracked_run(run_dir, tracking_uri)) is None:
        return
    client, run_id = tracked
    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(key, value, now, 0) for key, value in total.as_metrics().items()])


def end_cancelled_run(run_dir: Path, tracking_uri: str) -> None:
    """A stopped job's MLflow run, if it was still RUNNING: tagged `cancelled` and ended KILLED."""
    from ablate.core.training.tracking import set_run_tags

    if (tracked := tracked_run(run_dir, tracking_uri)) is None:
        return
    client, run_id = tracked
    if client.get_run(run_id).info.status == "RUNNING":
        set_run_tags(client, run_id, {"ablate.state": "cancelled"})
        client.set_terminated(run_id, status="KILLED")


PRELOADED = (
    "torch",
    "timm",
    "open_clip",
    "mlflow",
    "mlflow.store.tracking.sqlalchemy_store",  # imported on a run's first query otherwise; opens nothing
    "optuna",
    "ablate.ablations.spec",
    "ablate.ablations.optuna_study",
    "ablate.core.teachers.bundled",
    "ablate.core.training.trainer",
)


@dataclass
class TrialWarmUp:
    """What the local fork server does once for all trials of a study (slurm/warm_pool.py): import what every
    trial imports, parse the tokenizer's vocabulary and index the study's shards (tar_index keeps the indexes in
    memory for the forked trials)."""

    base: dict[str, Any]  # the study's base TrainConfig tree

    def __call__(self) -> None:
        import importlib

        for module in PRELOADED:
            importlib.import_module(module)
        from ablate.core.config.loading import validate_train_config
        from ablate.core.data.bundled import resolve_data_root
        from ablate.core.data.manifest import load_manifest
        from ablate.core.data.tar_index import IndexedShards
        from ablate.core.data.tokenizer import clip_tokenizer

        clip_tokenizer(77)  # parses the BPE vocabulary every tokenizer of a trial shares
        manifest = load_manifest(resolve_data_root(validate_train_config(self.base, "study base").data))
        for split in manifest.splits:
            IndexedShards(manifest.shard_paths(split))


@dataclass
class TrialJob(submitit.helpers.Checkpointable):
    spec: dict[str, Any]  # StudySpec as JSON-able data
    trial_id: int | None  # Optuna's storage id of the trial; None for baseline runs
    config: dict[str, Any]  # the complete TrainConfig tree of this replicate
    reports_to_study: bool  # one replicate per trial reports intermediate values; all of them obey pruning
    submitted_at: float  # epoch seconds when the scheduler handed it to the executor (queue + start-up time)

    def __call__(self) -> dict[str, Any] | None:
        from ablate.ablations.spec import StudySpec
        from ablate.core.config.sections import TrainConfig
        from ablate.core.teachers.bundled import prepare_inputs
        from ablate.core.training.trainer import train

        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
        spec = StudySpec.model_validate(self.spec)
        config = TrainConfig.model_validate(self.config)
        # Built by the launcher already, only found here; resolved inside the run, so a missing input fails it.
        inputs = functools.partial(prepare_inputs, progress=False)
        if _join_trial_processes():  # ranks > 0 of a multi-process trial: train, leave the records to rank 0
            train(config, inputs=inputs)
            return None
        run_dir = Path(config.run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        job_id = slurm_job_id() or os.environ.get("SUBMITIT_LOCAL_JOB_ID") or os.environ.get(JOB_ID_VARIABLE, "")
        restarts = int(os.environ.get("SLURM_RESTART_COUNT") or 0)  # set by SLURM on a requeued job
        write_json_atomically(
            run_dir / JOB_RECORD,
            {
                "pid": os.getpid(),
                "host": platform.node(),
                "job_id": job_id,
                "submitted": self.submitted_at,
                "started": time.time(),
                "slurm_restarts": restarts,
            },
        )
        callbacks = [self._pruning_callback(spec)] if self.trial_id is not None and len(spec.objectives) == 1 else []
        try:
            result = train(config, callbacks, inputs)
        except Exception:
            self._tag_run(config, {"ablate.state": "failed"})  # the trainer has recorded the error itself
            raise
        tags = {"ablate.state": "pruned" if result.stopped_early else "finished"}
        if restarts:
            tags["ablate.slurm_restarts"] = str(restarts)
        self._tag_run(config, tags)
        if result.resumed_from is not None:
            self._clear_recovered_error(config)
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
        import optuna

        from ablate.ablations.optuna_study import open_study

        trial = optuna.trial.Trial(open_study(spec), self.trial_id)
        metric = spec.objectives[0].metric

        def report_and_check(step: int, metrics: dict[str, float]) -> bool:
            if self.reports_to_study and metric in metrics:
                trial.report(metrics[metric], step)
            return trial.should_prune()

        return report_and_check

    def checkpoint(self) -> submitit.helpers.DelayedSubmission:
        """Called by submitit on preemption or near the time limit: run this same job again after the requeue.

        Nothing needs saving here: the trainer checkpoints atomically every `checkpoint_every` steps, and the
        requeued job resumes from the latest one (the steps since then are recomputed, bit-exactly on CPU).
        """
        logging.getLogger("ablate.trial").warning("interrupted by SLURM: requeueing, to resume from the checkpoint")
        return submitit.helpers.DelayedSubmission(self)

    @staticmethod
    def _clear_recovered_error(config: TrainConfig) -> None:
        """An interrupted attempt left `ablate.error` (e.g. SystemExit at a requeue); the run has now finished."""
        tracked = tracked_run(Path(config.run_dir), config.tracking.uri) if config.tracking.enabled else None
        if tracked is None:
            return
        client, run_id = tracked
        error = client.get_run(run_id).data.tags.get("ablate.error")
        if error is not None:
            client.set_tag(run_id, "ablate.recovered_error", error)
            client.delete_tag(run_id, "ablate.error")

    @staticmethod
    def _tag_run(config: TrainConfig, tags: dict[str, str]) -> None:
        from ablate.core.training.tracking import set_run_tags

        tracked = tracked_run(Path(config.run_dir), config.tracking.uri) if config.tracking.enabled else None
        if tracked is not None:
            set_run_tags(*tracked, tags)
