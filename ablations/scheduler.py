"""`ablate launch`: an asynchronous ask/tell loop over executor slots.

A free slot gets the next trial at once (no batch waits for its slowest trial); each finished job is told to
Optuna as complete, pruned or failed, and a failed trial never stops the study. Relaunching the same study
continues it: the Optuna storage and the MLflow parent run are reopened and finished trials count towards the
budget.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState
from rich.console import Console

from ablate.ablations.optuna_study import distributions, enqueue_grid, fixed_params, grid_points, open_study
from ablate.ablations.parent_run import close_parent_run, open_parent_run
from ablate.ablations.spec import StudySpec, load_study
from ablate.ablations.trial import TrialJob, config_hash
from ablate.core.config_io import ConfigError, apply_overrides, validate_train_config
from ablate.core.data.bundled import resolve_data_root
from ablate.slurm.executors import make_executor, threads_per_trial

STUDY_RECORD = "study.json"
FINISHED_STATES = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


@dataclass
class TrialOutcome:
    number: int
    state: str
    params: dict[str, Any]
    values: list[float] | None = None
    run_id: str | None = None
    error: str | None = None


@dataclass
class LaunchResult:
    spec: StudySpec
    parent_run_id: str
    outcomes: list[TrialOutcome] = field(default_factory=list)


def absolute_sqlite(uri: str) -> str:
    """`sqlite:///rel.db` -> `sqlite:////abs/rel.db`, so jobs agree on the file whatever their working dir."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        return prefix + str(Path(uri.removeprefix(prefix)).resolve())
    return uri


def launch(study_path: Path | str, console: Console | None = None) -> LaunchResult:
    spec, base = load_study(study_path)
    spec = spec.model_copy(
        update={"storage": spec.storage.model_copy(update={"mlflow": absolute_sqlite(spec.storage.mlflow)})}
    )
    spec.run_folder.mkdir(parents=True, exist_ok=True)
    (spec.run_folder / STUDY_RECORD).write_text(spec.model_dump_json(indent=2))
    # Both stores and the bundled data are created here, once, before any worker process could race on them.
    resolve_data_root(validate_train_config(base, str(study_path)).data)
    parent_run_id = open_parent_run(spec)
    return StudyScheduler(spec, base, parent_run_id, console or Console()).run()


class StudyScheduler:
    def __init__(self, spec: StudySpec, base: dict[str, Any], parent_run_id: str, console: Console) -> None:
        self.spec, self.base, self.console = spec, base, console
        self.study = open_study(spec)
        self.result = LaunchResult(spec, parent_run_id)
        self.executor = make_executor(spec.executor.kind, spec.run_folder / "jobs", spec.executor.timeout_min)
        self.threads = threads_per_trial(spec.executor.threads_per_trial, spec.budget.parallel)
        self.running: dict[int, tuple[optuna.Trial, Any, dict[str, Any]]] = {}
        self.budget = spec.budget.trials
        if spec.sampler.name == "grid":
            enqueue_grid(self.study, spec)
            self.budget = min(self.budget, len(grid_points(spec)))

    def run(self) -> LaunchResult:
        self._fail_orphans()
        status = "FAILED"
        try:
            while self._fill_slots() or self.running:
                time.sleep(0 if self.spec.executor.kind == "debug" else self.spec.executor.poll_seconds)
                self._collect()
            status = "FINISHED"
        except KeyboardInterrupt:
            status = "KILLED"
            self._cancel_running("launcher interrupted")
            raise
        finally:
            close_parent_run(self.spec, self.result.parent_run_id, status)
        return self.result

    def _fail_orphans(self) -> None:
        """Trials left RUNNING by a launcher that died have no job watching them: record them as failed."""
        for trial in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            self.study.tell(trial.number, state=TrialState.FAIL)
            self.console.print(
                f"[yellow]trial {trial.number}: left running by an earlier launch, marked failed"
            )

    def _fill_slots(self) -> bool:
        """Submit trials while slots and budget allow; False once the budget is spent."""
        while len(self.running) < self.spec.budget.parallel:
            done = len(self.study.get_trials(deepcopy=False, states=FINISHED_STATES))
            if done + len(self.running) >= self.budget:
                return False
            self._submit(self.study.ask(distributions(self.spec)))
        return True

    def _submit(self, trial: optuna.Trial) -> None:
        params = {**trial.params, **fixed_params(self.spec)}
        try:
            config = validate_train_config(self._trial_tree(trial.number, params), f"trial {trial.number}")
        except ConfigError as err:
            self._finish(trial, params, TrialState.FAIL, error=str(err))
            return
        trial.set_user_attr("config_hash", config_hash(params))
        # The job reopens this trial by its storage id to report intermediate values (Optuna has no public
        # lookup of a live trial from another process; `_trial_id` is the id its storages key on).
        job = self.executor.submit(
            TrialJob(
                self.spec.model_dump(mode="json"),
                trial._trial_id,
                trial.number,
                config.model_dump(mode="json", by_alias=True),
            )
        )
        self.running[trial.number] = (trial, job, params)
        shown = ", ".join(f"{k}={_short(v)}" for k, v in params.items())
        self.console.print(f"trial {trial.number} started (job {job.job_id}): {shown}")

    def _trial_tree(self, number: int, params: dict[str, Any]) -> dict[str, Any]:
        tree = apply_overrides(self.base, params)
        seed = tree.get("seed", 0)
        run_dir = (self.spec.run_folder / "trials" / f"{number:05d}").resolve()
        return apply_overrides(
            tree,
            {
                "run_dir": str(run_dir),
                "train.threads": self.threads,
                "train.progress": False,
                "tracking.uri": self.spec.storage.mlflow,
                "tracking.experiment": self.spec.name,
                "tracking.run_name": f"trial {number}",
                "tracking.parent_run_id": self.result.parent_run_id,
                "tracking.tags": {
                    "ablate.study": self.spec.name,
                    "ablate.role": "trial",
                    "ablate.trial_number": str(number),
                    "ablate.config_hash": config_hash(params),
                    "ablate.seed": str(seed),
                    "ablate.state": "running",
                },
            },
        )

    def _collect(self) -> None:
        for number, (trial, job, params) in list(self.running.items()):
            if not job.done():
                continue
            del self.running[number]
            try:
                output = job.result()
            except Exception as err:  # the job crashed: record it, keep the study going
                self._finish(trial, params, TrialState.FAIL, error=_last_lines(str(err)))
                continue
            if output["pruned"]:
                self._finish(trial, params, TrialState.PRUNED, run_id=output["run_id"])
                continue
            missing = [o.metric for o in self.spec.objectives if o.metric not in output["metrics"]]
            if missing:
                error = (
                    f"objective metric(s) {missing} not logged; the run logged {sorted(output['metrics'])}"
                )
                self._finish(trial, params, TrialState.FAIL, run_id=output["run_id"], error=error)
                continue
            values = [output["metrics"][o.metric] for o in self.spec.objectives]
            self._finish(trial, params, TrialState.COMPLETE, values=values, run_id=output["run_id"])

    def _finish(
        self,
        trial: optuna.Trial,
        params: dict[str, Any],
        state: TrialState,
        *,
        values: list[float] | None = None,
        run_id: str | None = None,
        error: str | None = None,
    ) -> None:
        if run_id:
            trial.set_user_attr("mlflow_run_id", run_id)
        if error:
            trial.set_user_attr("error", error[-2000:])
        self.study.tell(trial, values=values if state == TrialState.COMPLETE else None, state=state)
        outcome = TrialOutcome(trial.number, state.name.lower(), params, values, run_id, error)
        self.result.outcomes.append(outcome)
        colour = {"complete": "green", "pruned": "yellow"}.get(outcome.state, "red")
        detail = f"{values}" if values else (error or "")
        self.console.print(f"[{colour}]trial {trial.number} {outcome.state}[/] {detail}", highlight=False)

    def _cancel_running(self, reason: str) -> None:
        for trial, job, params in self.running.values():
            job.cancel(check=False)
            self._finish(trial, params, TrialState.FAIL, error=reason)
        self.running.clear()


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _last_lines(text: str, lines: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])
