"""The run's MLflow tracker, kept in a forked helper process that opens it while the first training steps run.

Importing MLflow with its sqlite store (SQLAlchemy models, alembic, pandas) and creating the run costs ~2.5 s of
CPU, all of it Python holding the GIL, much of it in long C calls (unmarshalling modules) that a thread switch
cannot interrupt. On a thread of the training process it slowed the first steps by as much (MobileCLIP2-S0 at
batch 4 on a 2-core EPYC: first step 1.8 s later than with tracking off). A process forked once the loader
workers are forked imports it on another core, without the trainer's GIL, and at the lowest CPU priority; the
trainer talks to it through a pipe with `RemoteTracker`, whose calls wait for their answer, so an MLflow error
is raised in the trainer where the call was made, as before. Whatever needs the run (the first log, an
evaluation, the run's end or a failure) waits for it to be open; an error opening it is raised there, so a run
whose tracking cannot start still fails, at its first log instead of before its first step.

The helper ignores the job signals (SLURM's USR2 and TERM, Ctrl-C): the trainer decides how the run ends and
tells it. It leaves when told to finish or when the trainer's end of the pipe closes (the trainer died: the
run stays RUNNING, as a killed in-process tracker left it, and the launcher ends it).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import pickle
import signal
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ablate.core.config.sections import TrainConfig

if TYPE_CHECKING:
    from ablate.core.training.tracking import RunTracker

log = logging.getLogger("ablate.train")

FirstRecords = Callable[["RunTracker"], None]
# Lowest priority: it yields the cores to training, and cannot starve it, since a trainer waiting for its
# answer sleeps and leaves its core to the helper.
HELPER_NICENESS = 19


class RemoteTracker:
    """RunTracker's interface, carried out by the helper process; each call returns once it is done there."""

    def __init__(self, connection: Connection, process: multiprocessing.process.BaseProcess, run_id: str) -> None:
        self._connection, self._process, self.run_id = connection, process, run_id

    def _call(self, method: str, *args: Any) -> None:
        self._connection.send((method, args))
        _raise_if_error(self._connection.recv())

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self._call("log_metrics", {key: float(value) for key, value in metrics.items()}, step)

    def log_artifact(self, path: Path, folder: str | None = None) -> None:
        self._call("log_artifact", path, folder)

    def set_tags(self, tags: dict[str, str]) -> None:
        self._call("set_tags", tags)

    def finish(self, status: str) -> None:
        """status: FINISHED or FAILED (MLflow run statuses); the helper then exits."""
        try:
            self._call("finish", status)
        finally:
            self._connection.close()
            self._process.join(timeout=30)


class TrackerOpening:
    """`start` forks the helper that opens the run (then writes `first` records); `tracker` waits for it."""

    def __init__(self, config: TrainConfig, run_dir: Path) -> None:
        self.config, self.run_dir = config, run_dir
        self._connection: Connection | None = None
        self._process: multiprocessing.process.BaseProcess | None = None
        self._opened: RemoteTracker | BaseException | None = None

    def start(self, first: FirstRecords | None = None) -> None:
        if self._connection is not None:
            return
        context = multiprocessing.get_context("fork")  # the trainer's modules and config, without re-importing
        self._connection, child = context.Pipe()
        self._process = context.Process(
            target=_serve, args=(child, self._connection, self.config, self.run_dir, first), daemon=True
        )
        self._process.start()
        child.close()

    def tracker(self) -> RemoteTracker:
        """The open run (started here if the loop never started it); raises what opening it raised."""
        self.start()
        if self._opened is None:
            try:
                answer = self._connection.recv()
                _raise_if_error(answer)
                self._opened = RemoteTracker(self._connection, self._process, answer[1])
            except BaseException as err:
                self._opened = err
        if isinstance(self._opened, BaseException):
            raise self._opened
        return self._opened

    def tracker_if_open(self) -> RemoteTracker | None:
        """For recording a failure: the run, or None when it is the opening that failed."""
        try:
            return self.tracker()
        except Exception:
            return None


def _serve(
    connection: Connection, trainer_end: Connection, config: TrainConfig, run_dir: Path, first: FirstRecords | None
) -> None:
    """The helper: open the run, answer with its id (or the error), then carry out calls until `finish`."""
    trainer_end.close()  # so the pipe reports the trainer's death as end of file
    for job_signal in (signal.SIGUSR2, signal.SIGTERM, signal.SIGINT):
        signal.signal(job_signal, signal.SIG_IGN)
    os.nice(HELPER_NICENESS)
    try:
        from ablate.core.training.tracking import RunTracker

        tracker = RunTracker(config, run_dir)
        log.info("MLflow run %s (experiment %s)", tracker.run_id, config.tracking.experiment)
        if first is not None:
            first(tracker)
    except BaseException as err:
        connection.send(("error", _transferable(err)))
        return
    connection.send(("ok", tracker.run_id))
    while True:
        try:
            method, args = connection.recv()
        except EOFError:
            return
        try:
            getattr(tracker, method)(*args)
        except BaseException as err:
            connection.send(("error", _transferable(err)))
        else:
            connection.send(("ok", None))
        if method == "finish":
            return


def _transferable(err: BaseException) -> BaseException:
    """The error itself when it survives pickling (its type is kept for callers), else its text."""
    try:
        pickle.loads(pickle.dumps(err))
        return err
    except Exception:
        return RuntimeError(f"{type(err).__name__}: {err}")


def _raise_if_error(answer: tuple[str, Any]) -> None:
    if answer[0] == "error":
        raise answer[1]
