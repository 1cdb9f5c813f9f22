"""Job states and compute from SLURM accounting: one `sacct` call answers for every job a launcher watches.

submitit's own watcher also batches its `sacct` calls, but it refreshes on a schedule of its own (2 s, 4 s,
8 s ... after the latest submission, then every 10 minutes for SLURM jobs), and `job.result()` waits 15 s
for a result file that a cancelled or killed job never writes. The scheduler instead asks once per poll
interval, so a job that ended without a result is noticed within one interval, and the same rows carry what
the job used: elapsed time x allocated CPUs and GPUs, summed over every run of a requeued job (`--duplicates`).
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterable
from dataclasses import asdict, dataclass

from submitit.slurm.slurm import read_job_id

# States of a job that may still produce a result (sacct's names; UNKNOWN: not in the accounting database yet).
ACTIVE_STATES = frozenset(
    {"PENDING", "RUNNING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD", "RESIZING", "SUSPENDED", "COMPLETING"}
    | {"PREEMPTED", "SIGNALING", "STAGE_OUT", "CONFIGURING", "UNKNOWN"}
)
# Ended states not worth a rerun: a person cancelled it, or a rerun would only hit the same limit again.
# (FAILED, NODE_FAIL, BOOT_FAIL: a rerun resumes from the last checkpoint, up to `executor.retries` times.)
NOT_RETRIED_STATES = frozenset({"CANCELLED", "TIMEOUT", "DEADLINE", "OUT_OF_MEMORY", "REVOKED"})
FIELDS = ["JobID", "State", "ExitCode", "ElapsedRaw", "AllocCPUS", "AllocTRES", "Start", "NodeList"]


@dataclass(frozen=True)
class Usage:
    """What a job consumed over all its runs, from accounting (elapsed x allocation, not measured load)."""

    elapsed_seconds: float
    cpu_seconds: float
    gpu_seconds: float
    runs: int  # 1 + the times SLURM requeued it

    def as_metrics(self) -> dict[str, float]:
        return {
            "slurm/elapsed_hours": self.elapsed_seconds / 3600,
            "slurm/cpu_hours": self.cpu_seconds / 3600,
            "slurm/gpu_hours": self.gpu_seconds / 3600,
            "slurm/runs": float(self.runs),
        }

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


@dataclass(frozen=True)
class JobRecord:
    job_id: str
    state: str  # the current (last) run's state, without sacct's " by <uid>" suffix
    exit_code: str
    started: bool
    usage: Usage

    @property
    def active(self) -> bool:
        return self.state in ACTIVE_STATES


def gpus_in(tres: str) -> int:
    """`billing=1,cpu=2,gres/gpu=1,mem=4G,node=1` -> 1 (typed GPUs `gres/gpu:a100=1` count too, once)."""
    counts = dict(item.split("=", 1) for item in tres.split(",") if "=" in item)
    if "gres/gpu" in counts:
        return int(counts["gres/gpu"])
    return sum(int(value) for key, value in counts.items() if key.startswith("gres/gpu:"))


def parse_sacct(text: str) -> dict[str, JobRecord]:
    """Rows of `sacct -X -D -P -n -o FIELDS`, grouped by job id (array tasks `123_4` are their own jobs).

    With --duplicates a requeued job has one row per run, oldest first; the last row is the current state.
    A pending array range `123_[2-5%2]` gives a pending record to each of its tasks.
    """
    rows: dict[str, list[dict[str, str]]] = {}
    for line in text.splitlines():
        values = line.split("|")
        if len(values) != len(FIELDS):
            continue
        row = dict(zip(FIELDS, values, strict=True))
        for parts in read_job_id(row["JobID"]):
            if len(parts) == 3:
                ids = [f"{parts[0]}_{index}" for index in range(int(parts[1]), int(parts[2]) + 1)]
            else:
                ids = ["_".join(parts[:2])]
            for job_id in ids:
                rows.setdefault(job_id, []).append(row)
    records = {}
    for job_id, runs in rows.items():
        elapsed = [float(run["ElapsedRaw"] or 0) for run in runs]
        usage = Usage(
            elapsed_seconds=sum(elapsed),
            cpu_seconds=sum(e * int(run["AllocCPUS"] or 0) for e, run in zip(elapsed, runs, strict=True)),
            gpu_seconds=sum(e * gpus_in(run["AllocTRES"]) for e, run in zip(elapsed, runs, strict=True)),
            runs=len(runs),
        )
        last = runs[-1]
        started = any(run["Start"] not in ("", "Unknown", "None") for run in runs)
        records[job_id] = JobRecord(job_id, last["State"].split()[0], last["ExitCode"], started, usage)
    return records


class Accounting:
    """Batched `sacct` queries; counts its calls so polling load can be measured."""

    def __init__(self, env: dict[str, str] | None = None, tolerated_failures: int = 5) -> None:
        self.env = env
        self.calls = 0
        self.failures = 0  # consecutive failed calls
        self.tolerated_failures = tolerated_failures

    def query(self, job_ids: Iterable[str]) -> dict[str, JobRecord]:
        """One sacct call for all `job_ids`; jobs the database does not know yet are simply absent."""
        main_ids = sorted({job_id.split("_")[0] for job_id in job_ids})
        if not main_ids:
            return {}
        command = ["sacct", "-X", "-D", "-P", "-n", "-o", ",".join(FIELDS), "-j", ",".join(main_ids)]
        self.calls += 1
        done = subprocess.run(command, env=self.env, capture_output=True, text=True, timeout=60)
        if done.returncode != 0:  # slurmdbd briefly away: report nothing, the next poll asks again
            self.failures += 1
            if self.failures > self.tolerated_failures:
                raise RuntimeError(f"sacct failed {self.failures} times in a row: {done.stderr.strip()[-500:]}")
            return {}
        self.failures = 0
        return parse_sacct(done.stdout)
