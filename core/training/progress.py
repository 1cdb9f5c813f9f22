"""What a running trainer shows and leaves behind while it trains: a rich progress bar on a terminal, and
`progress.json` in the run folder.

`progress.json` is how a launcher learns where a trial job is without polling MLflow: it is small, rewritten
atomically (write a temporary file, rename) at every log step and every evaluation, so a reader in another
process sees either the previous state or the new one, never half a file. `ablations/live.py` reads it for
`ablate launch`'s live table. Fields: `step` and `total` (optimizer steps), `loss` (the last logged window's
mean training loss), `start_step` and `started` (epoch seconds) of this attempt, so a reader can tell speed and
time left, `updated`, and `eval` / `eval_step`, the last evaluation's metrics.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from types import TracebackType

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

PROGRESS_FILE = "progress.json"
LINE_EVERY_S = 30.0  # where the console is no terminal (CI logs, SLURM, a launcher's log), a line this often


def read_progress(run_dir: Path) -> dict | None:
    """The run's latest progress record, or None before its first log step (or in a folder of another run)."""
    try:
        return json.loads((run_dir / PROGRESS_FILE).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


class RunProgress:
    """The bar (when `show_bar`) and the progress file (when `run_dir` is given: rank 0 of the run only)."""

    def __init__(self, run_dir: Path | None, show_bar: bool, total: int, start: int) -> None:
        self.path = run_dir / PROGRESS_FILE if run_dir is not None else None
        self.record: dict = {"step": start, "total": total, "start_step": start, "started": time.time(), "loss": None}
        columns = [
            TextColumn("[bold]train"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]:.3f}"),
            TextColumn("{task.fields[speed]:.0f} samples/s"),
            TimeRemainingColumn(),
        ]
        self.bar = Progress(*columns, disable=not show_bar, transient=False)
        self.task = self.bar.add_task("train", total=total, completed=start, loss=float("nan"), speed=0.0)
        # A bar is only redrawn on a terminal; elsewhere rich prints it once, at the end: say lines instead.
        self.lines = show_bar and not self.bar.console.is_terminal
        self.last_line = time.monotonic()

    def __enter__(self) -> RunProgress:
        self.bar.__enter__()
        self._write()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.bar.__exit__(kind, error, trace)

    def logged(self, step: int, loss: float, samples_per_s: float) -> None:
        """A log step: the window's mean loss and throughput."""
        self.bar.update(self.task, completed=step, loss=loss, speed=samples_per_s)
        self.record |= {"step": step, "loss": loss}
        self._write()
        if self.lines and (time.monotonic() - self.last_line >= LINE_EVERY_S or step == self.record["total"]):
            self.last_line = time.monotonic()
            self.bar.console.print(
                f"train step {step}/{self.record['total']}, loss {loss:.3f}, {samples_per_s:.0f} samples/s",
                highlight=False,
            )

    def evaluated(self, step: int, metrics: dict[str, float]) -> None:
        self.record |= {"eval_step": step, "eval": metrics}
        self._write()

    def _write(self) -> None:
        if self.path is None:
            return
        self.record["updated"] = time.time()
        temporary = self.path.with_suffix(".tmp")
        temporary.write_text(json.dumps(self.record))
        temporary.replace(self.path)
