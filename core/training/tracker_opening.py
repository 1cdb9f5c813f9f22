"""The run's MLflow tracker, opened on a thread while the first training steps run.

Importing MLflow with its sqlite store (SQLAlchemy models, alembic) and creating the run took ~3 s of
`ablate train`'s start-up on a 2-core CPU, most of what it spent before its first step beyond open_clip_train.
The trainer opens it on a thread once its loader workers are forked (so no worker is forked from a process whose
other thread is mid-import), and the first training steps, whose kernels release the GIL, overlap it. Whatever
needs the run (the first log, an evaluation, the run's end or failure) waits for it; an error opening it is
raised there, so a run whose tracking cannot start still fails, a few steps later than before.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

from ablate.core.config.sections import TrainConfig

if TYPE_CHECKING:
    from ablate.core.training.tracking import RunTracker

log = logging.getLogger("ablate.train")

FirstRecords = Callable[["RunTracker"], None]


class TrackerOpening:
    """`start` opens the run on a thread (then writes `first` records on it); `tracker` waits for it."""

    def __init__(self, config: TrainConfig, run_dir: Path) -> None:
        self.config, self.run_dir = config, run_dir
        self._future: Future[RunTracker] | None = None

    def start(self, first: FirstRecords | None = None) -> None:
        if self._future is not None:
            return
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mlflow-run")
        self._future = pool.submit(self._open, first)
        pool.shutdown(wait=False)  # the thread ends once the run is open

    def _open(self, first: FirstRecords | None) -> RunTracker:
        from ablate.core.training.tracking import RunTracker  # imports MLflow: on this thread, not before the loop

        tracker = RunTracker(self.config, self.run_dir)
        log.info("MLflow run %s (experiment %s)", tracker.run_id, self.config.tracking.experiment)
        if first is not None:
            first(tracker)
        return tracker

    def tracker(self) -> RunTracker:
        """The open run (started here if the loop never started it); raises what opening it raised."""
        self.start()
        return self._future.result()

    def tracker_if_open(self) -> RunTracker | None:
        """For recording a failure: the run, or None when it is the opening that failed."""
        try:
            return self.tracker()
        except Exception:
            return None
