"""`ablate launch`: an asynchronous ask/tell loop over executor slots.

A free slot gets the next replicate at once (no batch waits for its slowest trial). Baselines are queued
first, then trials; each trial runs one replicate per seed and is told to Optuna, with its objectives
aggregated over the replicates, once they are all done. Of the replicates waiting, the longest (steps x batch)
starts first; random and grid samplers, whose draws ignore results, are asked a few trials ahead to give that
choice something to choose from. A failed job is rerun up to `executor.retries` times,
resuming its checkpoint; a trial whose replicate still fails is recorded as failed and the study goes on.

On SLURM, replicates that start together go out as one job array, each poll reads every job's state with
one `sacct` call, a job that ended without a result (cancelled, killed, node failure, time limit) is settled
in that same poll, and what each job used (CPU/GPU-hours from accounting) is logged to its MLflow run.

Relaunching continues the study exactly: finished replicates are read from their run folders and never rerun,
trials left running by a dead launcher are adopted and resumed, and the budget counts every configuration.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState
from rich.console import Console

from ablate.ablations.control import CANCEL_MARKER, STUDY_RECORD, launcher_lock, stop_job_process, stop_stale_job
from ablate.ablations.live import LiveStatus, job_row
from ablate.ablations.optuna_study import distributions, enqueue_grid, fixed_params, grid_points, open_study
from ablate.ablations.parent_run import close_parent_run, open_parent_run
from ablate.ablations.plan import check_runtime
from ablate.ablations.prune_reason import prune_reason
from ablate.ablations.spec import StudySpec, load_study
from ablate.ablations.trial import (
    SUBMISSION_RECORD,
    TrialJob,
    TrialWarmUp,
    end_cancelled_run,
    log_slurm_usage,
    read_result,
    record_slurm_usage,
    write_json_atomically,
)
from ablate.ablations.work import Group, PendingReplicates, Replicate, build_group, replicate_tree, training_samples
from ablate.analysis.formatting import number, params_text
from ablate.core.config.base import ConfigError
from ablate.core.config.loading import validate_train_config
from ablate.core.data.bundled import resolve_data_root
from ablate.core.teachers.bundled import prepare_inputs
from ablate.slurm.executors import JobEnd, TrialExecutor, make_executor, threads_per_trial

ENDED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


@dataclass
class GroupOutcome:
    label: str
    state: str  # complete | pruned | failed
    params: dict[str, Any]
    values: list[float] | None = None
    error: str | None = None
    baseline: str | None = None  # the baseline's name for a baseline's configuration


def configuration_text(spec: StudySpec, params: dict[str, Any], baseline: str | None = None) -> str:
    """How a configuration is named on the terminal: a baseline by its description (a preset's dozen keys
    wrapped over as many lines said less than `MobileCLIP-S* recipe: λ = 1, ...`), a trial by its parameters."""
    if baseline is not None and spec.baselines[baseline].description:
        return spec.baselines[baseline].description
    return params_text(params) or "base configuration"


@dataclass
class LaunchResult:
    spec: StudySpec
    parent_run_id: str
    outcomes: list[GroupOutcome] = field(default_factory=list)


def absolute_sqlite(uri: str) -> str:
    """`sqlite:///rel.db` -> `sqlite:////abs/rel.db`, so jobs agree on the file whatever their working dir."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        return prefix + str(Path(uri.removeprefix(prefix)).resolve())
    return uri


def prepare(study_path: Path | str) -> tuple[StudySpec, dict[str, Any]]:
    """Validate the study and resolve its storage paths; nothing is started."""
    spec, base = load_study(study_path)
    storage = spec.storage.model_copy(update={"mlflow": absolute_sqlite(spec.storage.mlflow)})
    return spec.model_copy(update={"storage": storage}), base


def launch(study_path: Path | str, console: Console | None = None, status_every_s: float = 30.0) -> LaunchResult:
    """`status_every_s`: how often the running jobs are summarised in one line where the console is no terminal
    (on a terminal their table is redrawn at every poll)."""
    spec, base = prepare(study_path)
    with launcher_lock(spec.run_folder), study_executor(spec, base) as executor:
        # Recorded self-contained (base inlined, overrides applied) so `ablate resume` needs no other file.
        recorded = spec.model_copy(update={"base": base, "overrides": {}})
        (spec.run_folder / STUDY_RECORD).write_text(recorded.model_dump_json(indent=2))
        # The stores, the bundled data and teachers are created here, once, before any worker could race on them.
        check_runtime(spec, base, str(study_path))
        base_config = validate_train_config(base, str(study_path))
        resolve_data_root(base_config.data)
        prepare_inputs(base_config)
        parent_run_id = open_parent_run(spec, str(study_path))
        return StudyScheduler(spec, base, parent_run_id, executor, console or Console(), status_every_s).run()


@contextmanager
def study_executor(spec: StudySpec, base: dict[str, Any]) -> Iterator[TrialExecutor]:
    """Made first, so that a local fork server's imports and indexing (seconds) overlap the launcher's own
    preparation instead of delaying the first trials; closed when the launcher ends (running jobs go on)."""
    executor = spec.executor
    made = make_executor(
        executor.kind,
        spec.run_folder / "jobs",
        executor.timeout_min,
        executor.slurm.model_dump(mode="json"),
        executor.nodes,
        executor.tasks_per_node,
        warm_up=TrialWarmUp(base),  # local trials fork from a process that ran this once
    )
    try:
        yield made
    finally:
        made.close()


class StudyScheduler:
    def __init__(
        self,
        spec: StudySpec,
        base: dict[str, Any],
        parent_run_id: str,
        executor: TrialExecutor,
        console: Console,
        status_every_s: float = 30.0,
    ) -> None:
        self.spec, self.base, self.executor, self.console = spec, base, executor, console
        self.live = LiveStatus(console, spec.objectives[0].metric, status_every_s)
        self.study = open_study(spec)
        self.result = LaunchResult(spec, parent_run_id)
        executor = spec.executor
        # On SLURM a job's threads follow its allocation (core/training/runtime.py reads SLURM_CPUS_PER_TASK).
        self.threads = (
            None
            if executor.kind == "slurm"
            else threads_per_trial(executor.threads_per_trial, spec.budget.parallel, executor.tasks_per_node)
        )
        self.groups: list[Group] = []
        self.pending = PendingReplicates()
        self.running: dict[int, tuple[Replicate, Any]] = {}
        self.started = time.monotonic()
        self.budget = spec.budget.trials
        # Replicates kept waiting for a slot, so the longest can start first (work.py): samplers whose draws ignore
        # results are asked ahead for them; the others only when nothing waits, so each ask sees every result so
        # far. Not under a wall-clock budget either, where a trial asked ahead might start after the limit.
        independent = spec.sampler.name in ("random", "grid") and spec.budget.wall_clock_min is None
        self.queue_depth = 2 * spec.budget.parallel if independent else 1
        if spec.sampler.name == "grid":
            enqueue_grid(self.study, spec)
            self.budget = min(self.budget, len(grid_points(spec)))
        # Counted here and by `_tell` (the launcher lock makes this the study's only writer), not read from the
        # storage at every poll: that query took ~40 ms a poll, on the cores the trials train on.
        self.ended = len(self.study.get_trials(deepcopy=False, states=ENDED))

    # -- main loop ---------------------------------------------------------------------------------------
    def run(self) -> LaunchResult:
        status = "FAILED"
        self.live.start()
        try:
            self._queue_baselines()
            self._adopt_unfinished_trials()
            while True:
                self._fill_slots()
                if not self.running and not self.pending:
                    break
                self.executor.wait([job for _, job in self.running.values()], self.spec.executor.poll_seconds)
                self._collect()
                self._show_running()
                if (self.spec.run_folder / CANCEL_MARKER).is_file():
                    self._cancel_everything("cancelled by `ablate cancel`")
                    (self.spec.run_folder / CANCEL_MARKER).unlink(missing_ok=True)
                    status = "KILLED"
                    return self.result
            status = "FINISHED"
        except KeyboardInterrupt:
            status = "KILLED"
            self._cancel_everything("launcher interrupted")
            raise
        finally:
            self.live.stop()
            close_parent_run(self.spec, self.result.parent_run_id, status)
        return self.result

    def _fill_slots(self) -> None:
        """Every free slot gets a replicate; those found in one pass are submitted together (one SLURM array)."""
        batch: list[tuple[Replicate, TrialJob]] = []
        while len(self.running) + len(batch) < self.spec.budget.parallel:
            while len(self.pending) < self.queue_depth and self._may_start_trial():
                self._start_trial(self.study.ask(distributions(self.spec)))
            if not self.pending:
                break
            replicate = self.pending.take()
            job = self._trial_job(replicate)
            if job is not None:
                batch.append((replicate, job))
        if batch:
            self._submit(batch)

    def _may_start_trial(self) -> bool:
        active = sum(1 for group in self.groups if group.trial is not None)
        limit = self.spec.budget.wall_clock_min
        in_time = limit is None or time.monotonic() - self.started < limit * 60
        return in_time and self.ended + active < self.budget

    # -- creating work ----------------------------------------------------------------------------------
    def _queue_baselines(self) -> None:
        for name, baseline in self.spec.baselines.items():
            folder = self.spec.run_folder / "baselines" / name
            self._add_group(build_group(self.spec, f"baseline {name}", baseline.overrides, None, name, folder))

    def _adopt_unfinished_trials(self) -> None:
        """Trials a dead launcher left RUNNING: stop any stale job, then resume their unfinished ones."""
        for frozen in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            trial = optuna.trial.Trial(self.study, frozen._trial_id)
            group = self._trial_group(trial, {**frozen.params, **fixed_params(self.spec)})
            for replicate in group.replicates:
                if not replicate.finished and stop_stale_job(replicate.run_dir):
                    self.console.print(f"[yellow]{replicate.label}: stopped its job left by an earlier launch")
                    replicate.result = read_result(replicate.run_dir)  # it may have finished meanwhile
            self.console.print(f"[yellow]trial {trial.number}: resumed from an earlier launch")
            self._add_group(group)

    def _start_trial(self, trial: optuna.Trial) -> None:
        self._add_group(self._trial_group(trial, {**trial.params, **fixed_params(self.spec)}))

    def _trial_group(self, trial: optuna.Trial, params: dict[str, Any]) -> Group:
        folder = self.spec.run_folder / "trials" / f"{trial.number:05d}"
        return build_group(self.spec, f"trial {trial.number}", params, trial, None, folder)

    def _add_group(self, group: Group) -> None:
        group.samples = training_samples(self.base, group.params)
        self.groups.append(group)
        if group.complete:  # decided in an earlier launch (all done, pruned or failed): record it, run nothing
            self._finish_group(group)
        else:
            self.pending.extend(r for r in group.replicates if not r.finished)
            shown = configuration_text(self.spec, group.params, group.baseline)
            self.console.print(f"{group.label} queued: {shown}", highlight=False)

    def _trial_job(self, replicate: Replicate) -> TrialJob | None:
        """The job callable of a replicate; None (and the replicate failed) if its configuration is invalid."""
        group = replicate.group
        try:
            tree = replicate_tree(self.spec, self.base, replicate, self.result.parent_run_id, self.threads)
            config = validate_train_config(tree, replicate.label)
        except ConfigError as err:
            replicate.error = str(err)
            self._settle(group)
            return None
        trial_id = group.trial._trial_id if group.trial is not None else None  # the storage key jobs reopen
        reports = group.trial is not None and replicate is group.replicates[0]
        return TrialJob(
            self.spec.model_dump(mode="json"),
            trial_id,
            config.model_dump(mode="json", by_alias=True),
            reports,
            time.time(),
        )

    def _submit(self, batch: list[tuple[Replicate, TrialJob]]) -> None:
        try:
            jobs = self.executor.submit([job for _, job in batch])
        except Exception as err:  # sbatch refused (unknown partition, account, QoS...): a setup problem
            raise ConfigError(
                f"{self.spec.name}: the {self.spec.executor.kind} executor refused the jobs: {err}"
            ) from err
        for (replicate, _), job in zip(batch, jobs, strict=True):
            if self.spec.executor.kind == "slurm":  # so a later launcher can cancel it, even while it is queued
                replicate.run_dir.mkdir(parents=True, exist_ok=True)
                write_json_atomically(replicate.run_dir / SUBMISSION_RECORD, {"job_id": job.job_id})
            replicate.attempts += 1
            self.running[id(replicate)] = (replicate, job)
            attempt = f" (attempt {replicate.attempts})" if replicate.attempts > 1 else ""
            self.console.print(f"{replicate.label} started as job {job.job_id}{attempt}", highlight=False)

    # -- collecting results -----------------------------------------------------------------------------
    def _collect(self) -> None:
        if not self.running:
            return
        ended = self.executor.poll([job for _, job in self.running.values()])
        for key, (replicate, job) in list(self.running.items()):
            end = ended.get(job.job_id)
            if end is None or key not in self.running:  # settling a sibling may have cancelled it already
                continue
            del self.running[key]
            self._account(replicate, job.job_id, end)
            if end.error is None:
                replicate.result = end.result
            else:  # crash, NaN, killed process: retry from the checkpoint or record it
                reason = _last_lines(end.error)
                if end.retriable and replicate.attempts <= self.spec.executor.retries:
                    self.console.print(f"[yellow]{replicate.label} failed, retrying[/]: {reason.splitlines()[-1]}")
                    self.pending.retry(replicate)
                    continue
                replicate.error = reason
            self._settle(replicate.group)

    def _show_running(self) -> None:
        """The live table: every running job's progress, read from its run folder (ablations/live.py)."""
        metric = self.spec.objectives[0].metric
        rows = [job_row(r.group.label, r.seed, r.run_dir, metric) for r, _ in self.running.values()]
        self.live.show(rows, [outcome.state for outcome in self.result.outcomes])

    def _account(self, replicate: Replicate, job_id: str, end: JobEnd) -> None:
        """SLURM's record of what the job used, kept in the run folder and logged to the replicate's run."""
        if end.usage is None:
            return
        total = record_slurm_usage(replicate.run_dir, job_id, end.usage)
        log_slurm_usage(replicate.run_dir, self.spec.storage.mlflow, total)

    def _settle(self, group: Group) -> None:
        """Once a group is decided (all done, pruned or failed), stop what is left of it and record it."""
        if not group.complete or group not in self.groups:
            return
        self._drop_remaining(group)
        self._finish_group(group)

    def _drop_remaining(self, group: Group) -> None:
        for replicate in group.replicates:
            self.pending.remove(replicate)
        for key, (replicate, job) in list(self.running.items()):
            if replicate.group is group:
                self._stop(replicate, job)
                del self.running[key]

    def _stop(self, replicate: Replicate, job: Any) -> None:
        """Cancel through submitit, then make sure the training process is gone (it may ignore the signal), and
        end its MLflow run as KILLED: a killed process cannot, and its run would otherwise stay RUNNING."""
        self.executor.cancel(job)
        stop_job_process(replicate.run_dir, timeout_seconds=10)
        end_cancelled_run(replicate.run_dir, self.spec.storage.mlflow)

    def _finish_group(self, group: Group) -> None:
        self.groups.remove(group)
        if group.pruned:
            outcome = GroupOutcome(group.label, "pruned", group.params)
        elif group.failure:
            outcome = GroupOutcome(group.label, "failed", group.params, error=group.failure)
        else:
            try:
                outcome = GroupOutcome(group.label, "complete", group.params, group.objective_values(self.spec))
            except KeyError as err:
                error = f"objective metric {err} was not logged by the run"
                outcome = GroupOutcome(group.label, "failed", group.params, error=error)
        outcome.baseline = group.baseline
        if group.trial is not None:
            self._tell(group, outcome)
        self.result.outcomes.append(outcome)
        colour = {"complete": "green", "pruned": "yellow"}.get(outcome.state, "red")
        self.console.print(f"[{colour}]{group.label} {outcome.state}[/] {self._why(group, outcome)}", highlight=False)

    def _why(self, group: Group, outcome: GroupOutcome) -> str:
        """What a finished configuration scored, why it was pruned, or the error it failed with."""
        if outcome.state == "pruned":
            return prune_reason(self.study, group.trial.number, self.spec) if group.trial is not None else ""
        if outcome.values:
            metrics = (objective.metric for objective in self.spec.objectives)
            return ", ".join(
                f"{metric} = {number(value)}" for metric, value in zip(metrics, outcome.values, strict=True)
            )
        return outcome.error or ""

    def _tell(self, group: Group, outcome: GroupOutcome) -> None:
        trial = group.trial
        run_ids = [r.result["run_id"] for r in group.replicates if r.result]
        trial.set_user_attr("mlflow_run_ids", run_ids)
        trial.set_user_attr("seeds", [r.seed for r in group.replicates])
        if outcome.error:
            trial.set_user_attr("error", outcome.error[-2000:])
        state = {"complete": TrialState.COMPLETE, "pruned": TrialState.PRUNED}.get(outcome.state, TrialState.FAIL)
        self.study.tell(trial, values=outcome.values, state=state)
        self.ended += 1

    def _cancel_everything(self, reason: str) -> None:
        for replicate, job in self.running.values():
            self._stop(replicate, job)
            replicate.error = reason
        self.running.clear()
        self.pending.clear()
        for group in list(self.groups):
            for replicate in group.replicates:
                if not replicate.finished:
                    replicate.error = reason
            self._finish_group(group)


def _last_lines(text: str, lines: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])
