"""Warm trial workers for the local executor: each job is a child forked from an initialised fork server.

A fresh Python process per trial spent ~4–5 s importing torch, timm, open_clip and mlflow and indexing the
study's shards before training started; with short or pruned trials that was most of a slot's idle time. The
pool starts one fork server (warm_server.py, which documents the file contract) when the launcher starts, and
each job is forked from it: the imports and indexes are already in memory, shared copy-on-write.

Isolation stays what one process per trial gave: a job is its own process (a crash, a segfault or a SIGKILL
ends that job only, reported as failed and retried by the scheduler), it starts from the server's state, never
from another trial's, and it leads its own process group, which `cancel` kills with its loader workers. If the
server itself dies, the next submission starts a new one; jobs already running finish on their own. SLURM
keeps one process per job (SlurmTrialExecutor); multi-process trials keep submitit's LocalExecutor.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import pickle
import select
import signal
import subprocess
import sys
import time
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import cloudpickle

from ablate.slurm.warm_server import JOB_ID_VARIABLE, REAP_INTERVAL_S

__all__ = ["JOB_ID_VARIABLE", "WarmJob", "WarmJobError", "WarmPool"]


class WarmJobError(RuntimeError):
    """A job raised (the message carries its traceback), or its process ended without a result."""


class WarmPool:
    """submitit-like `submit(function) -> job` over one fork server; the server is stopped when the pool is
    garbage-collected or the launcher exits (and stops by itself if the launcher dies)."""

    def __init__(self, folder: Path, timeout_min: float, warm_up: Callable[[], None] | None = None) -> None:
        self.folder = folder
        self.timeout_s = timeout_min * 60
        self.folder.mkdir(parents=True, exist_ok=True)
        self._ids = itertools.count()
        self._warm_up = self.folder / f"warm_up_{os.getpid()}.pkl"
        self._warm_up.write_bytes(cloudpickle.dumps(warm_up or _nothing))
        self._server: list[subprocess.Popen] = []  # the current server; a list so the finalizer sees restarts
        self._ready = False
        self._start_server()
        weakref.finalize(self, _stop, self._server)

    def _start_server(self) -> None:
        """Started at once so that its imports overlap the launcher's own preparation."""
        log = open(self.folder / f"warm_server_{os.getpid()}.log", "ab")  # noqa: SIM115 -- the server keeps it
        with log:
            server = subprocess.Popen(
                [sys.executable, "-m", "ablate.slurm.warm_server", str(self.folder), str(self._warm_up)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
            )
        _stop(self._server)
        self._server[:] = [server]
        self._ready = False

    def _fork(self, job_id: str) -> int:
        server = self._server[0]
        if not self._ready:
            if server.stdout.readline().strip() != "ready":
                raise BrokenPipeError("the fork server ended while warming up")
            self._ready = True
        server.stdin.write(job_id + "\n")
        server.stdin.flush()
        reply = server.stdout.readline().strip()
        if not reply:
            raise BrokenPipeError("the fork server ended")
        return int(reply)

    def submit(self, function: Callable[[], Any]) -> WarmJob:
        job_id = f"{os.getpid()}_{next(self._ids)}"
        (self.folder / f"{job_id}_submitted.pkl").write_bytes(cloudpickle.dumps(function))
        try:
            pid = self._fork(job_id)
        except (BrokenPipeError, OSError, ValueError):  # the server died (killed, out of memory): a new one
            self._start_server()
            pid = self._fork(job_id)
        return WarmJob(job_id, pid, self.folder, time.monotonic() + self.timeout_s, self._server[0])

    def wait(self, jobs: Sequence[WarmJob], timeout_s: float) -> None:
        """Return once one of `jobs` has ended and the server has recorded it, or after `timeout_s`: the launcher
        sleeps on the jobs' process handles, so a slot is refilled within the server's reap interval of its job
        ending instead of up to a poll interval later."""
        handles = [job.pidfd for job in jobs]
        if not handles or None in handles:  # no process handles here (not Linux): poll
            time.sleep(timeout_s)
            return
        deadline = time.monotonic() + timeout_s
        readable, _, _ = select.select(handles, [], [], timeout_s)
        ended = [job for job in jobs if job.pidfd in readable]
        while ended and not any(job.done() for job in ended) and time.monotonic() < deadline:
            time.sleep(REAP_INTERVAL_S / 5)

    def close(self) -> None:
        _stop(self._server)


def _nothing() -> None:
    """The warm-up of a pool given none."""


def _stop(servers: list[subprocess.Popen]) -> None:
    """Closing stdin ends the server's loop; its running children are not touched."""
    for server in servers:
        with contextlib.suppress(OSError):
            server.stdin.close()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


class WarmJob:
    """One forked job: the submitit job surface the executors use (`job_id`, `done`, `result`, `cancel`)."""

    num_tasks = 1

    def __init__(self, job_id: str, pid: int, folder: Path, deadline: float, server: subprocess.Popen) -> None:
        self.job_id, self.pid, self.folder, self.deadline, self.server = job_id, pid, folder, deadline, server
        self.timed_out = False
        self.pidfd = _process_handle(pid)  # readable once the process has ended (WarmPool.wait)
        if self.pidfd is not None:
            weakref.finalize(self, os.close, self.pidfd)

    def _path(self, suffix: str) -> Path:
        return self.folder / f"{self.job_id}{suffix}"

    def done(self) -> bool:
        if self._path(".exit").is_file():
            return True
        if self.server.poll() is not None and not _alive(self.pid):  # orphaned, then reaped by init
            return True
        if time.monotonic() > self.deadline and not self.timed_out:
            self.timed_out = True
            self.cancel()
        return False

    def result(self) -> Any:
        path = self._path("_result.pkl")
        if path.is_file():
            status, value = pickle.loads(path.read_bytes())
            if status == "success":
                return value
            raise WarmJobError(f"job {self.job_id} raised:\n{value}")
        raise WarmJobError(f"job {self.job_id} (pid {self.pid}) {self._ending()} without a result{self._log_tail()}")

    def _ending(self) -> str:
        if self.timed_out:
            return "was stopped at its time limit"
        path = self._path(".exit")
        if not path.is_file():
            return "ended (its fork server was gone)"
        code = json.loads(path.read_text())
        return f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited with code {code}"

    def _log_tail(self, lines: int = 10) -> str:
        for suffix in ("_log.err", "_log.out"):
            path = self._path(suffix)
            text = path.read_text(errors="replace").strip().splitlines()[-lines:] if path.is_file() else []
            if text:
                return f"; end of {path.name}:\n" + "\n".join(text)
        return ""

    def cancel(self, check: bool = False) -> None:
        """SIGKILL to the job's process group (its loader workers too); a job that ended is left alone."""
        if self._path(".exit").is_file():
            return
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except ProcessLookupError:  # forked but not yet leading its own group
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
        except PermissionError:
            pass


def _process_handle(pid: int) -> int | None:
    """A pidfd (Linux ≥ 5.3) of the job's process; None where there is none, or the process is already gone."""
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
