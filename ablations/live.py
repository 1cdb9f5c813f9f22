"""`ablate launch`'s view of a study while it runs, in the spirit of Ray Tune's status table (peers.md §5.1):
per running job the trial, seed, step/total, last training loss, last objective value, elapsed time and ETA,
and how many configurations have completed, been pruned or failed.

The numbers come from each job's run folder, never from MLflow or the Optuna storage: the trainer rewrites
`progress.json` atomically at every log step and evaluation (core/training/progress.py) and the trial job's
`job.json` records when it started, so a refresh costs one small file read per running job.

On a terminal the table is redrawn in place (rich.live; the launcher's own messages print above it).
Elsewhere (CI logs, SLURM output files) one summary line is printed every `every_s` seconds instead, so a log
shows that the study is alive without a redraw per poll.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.live import Live
from rich.table import Table

from ablate.ablations.trial import JOB_RECORD
from ablate.analysis.formatting import number
from ablate.core.training.progress import read_progress

ENDED_STATES = ("complete", "pruned", "failed")


@dataclass(frozen=True)
class JobRow:
    """One running job as the table shows it; None where the job has not got that far (still starting)."""

    trial: str
    seed: int
    step: int | None = None
    total: int | None = None
    loss: float | None = None
    objective: float | None = None
    elapsed_s: float | None = None
    eta_s: float | None = None


def job_row(trial: str, seed: int, run_dir: Path, metric: str, now: float | None = None) -> JobRow:
    """Read a job's run folder. ETA: the steps left at this attempt's average pace so far."""
    now = time.time() if now is None else now
    started = _started(run_dir)
    progress = read_progress(run_dir)
    if progress is None:
        return JobRow(trial, seed, elapsed_s=None if started is None else now - started)
    step, total, first = progress["step"], progress["total"], progress["start_step"]
    pace = (progress["updated"] - progress["started"]) / (step - first) if step > first else None
    return JobRow(
        trial,
        seed,
        step,
        total,
        progress.get("loss"),
        (progress.get("eval") or {}).get(metric),
        now - (started if started is not None else progress["started"]),
        None if pace is None else max(0.0, (total - step) * pace - (now - progress["updated"])),
    )


def ended_counts(states: Iterable[str]) -> str:
    """`2 complete, 1 pruned, 0 failed`: every ended state named, zeros included, so a log line reads alike."""
    counts = Counter(states)
    return ", ".join(f"{counts[state]} {state}" for state in ENDED_STATES)


def status_line(rows: Sequence[JobRow], counts: str, metric: str) -> str:
    """The one-line form for logs: counts, then `trial 3 seed 0: 120/300, loss 2.31, top1 0.412, 1m02s, ETA 1m35s`
    per running job."""
    jobs = [f"{row.trial} seed {row.seed}: {', '.join(_cells(row, metric, named=True))}" for row in rows]
    return " | ".join([counts + f"; {len(rows)} running", *jobs])


def status_table(rows: Sequence[JobRow], counts: str, metric: str) -> Table:
    columns = ("trial", "seed", "step", "loss", _short(metric), "elapsed", "ETA")
    table = Table(*columns, title=f"{len(rows)} running; {counts}")
    for row in rows:
        table.add_row(row.trial, str(row.seed), *_cells(row, metric, named=False))
    return table


class LiveStatus:
    """Shows the running jobs: redrawn in place on a terminal, a line every `every_s` seconds otherwise."""

    def __init__(self, console: Console, metric: str, every_s: float = 30.0) -> None:
        self.console, self.metric, self.every_s = console, metric, every_s
        self.live = Live(console=console, auto_refresh=False, transient=True) if console.is_terminal else None
        self.last_line = float("-inf")

    def start(self) -> None:
        if self.live is not None:
            self.live.start()

    def stop(self) -> None:
        if self.live is not None:
            self.live.stop()

    def show(self, rows: Sequence[JobRow], states: Iterable[str]) -> None:
        counts = ended_counts(states)
        if self.live is not None:
            self.live.update(status_table(rows, counts, self.metric), refresh=True)
        elif rows and time.monotonic() - self.last_line >= self.every_s:
            self.last_line = time.monotonic()
            self.console.print(status_line(rows, counts, self.metric), highlight=False, soft_wrap=True)


def _started(run_dir: Path) -> float | None:
    try:
        return float(json.loads((run_dir / JOB_RECORD).read_text())["started"])
    except (FileNotFoundError, json.JSONDecodeError, KeyError):
        return None


def _cells(row: JobRow, metric: str, named: bool) -> list[str]:
    """step/total, loss, objective, elapsed, ETA; in the line form each named and unknown ones left out."""
    if row.step is None:  # the job has not logged its first window yet (imports, model, data)
        cells = ["starting", "-", "-", _duration(row.elapsed_s), "-"]
    else:
        cells = [
            f"{row.step}/{row.total}",
            _number(row.loss),
            _number(row.objective),
            _duration(row.elapsed_s),
            "finishing" if row.step == row.total else _duration(row.eta_s),  # final evaluation, efficiency, records
        ]
    if not named:
        return cells
    names = ["", "loss ", f"{_short(metric)} ", "", "ETA "]
    return [
        name + cell if cell != "finishing" else cell for name, cell in zip(names, cells, strict=True) if cell != "-"
    ]


def _short(metric: str) -> str:
    return metric.rsplit("/", 1)[-1]


def _number(value: float | None) -> str:
    return "-" if value is None else number(value)


def _duration(seconds: float | None) -> str:
    """`45s`, `3m05s`, `2h07m`: as precise as a person glancing at a log needs."""
    if seconds is None:
        return "-"
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
