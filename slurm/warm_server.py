"""The fork server behind warm local trial workers (warm_pool.py owns the launcher's side of the contract).

`python -m ablate.slurm.warm_server FOLDER WARM_UP.pkl` runs the pickled warm-up once (imports of torch, timm,
open_clip, mlflow, the trainer; the study's shard indexes), then forks one child per job it is sent, so a trial
starts in an initialised process. The server itself never runs a trial, never starts torch's thread pools and
opens no database connection, so every child starts from the same clean, pre-imported state: nothing a trial
does can reach the next one, exactly as with one fresh process per trial.

Protocol on stdin/stdout, one line each way: the server prints `ready` after warming up; for each job id it
reads, it forks and prints the child's pid. In FOLDER, job `ID` reads `ID_submitted.pkl` (a cloudpickled
callable), writes its stdout/stderr to `ID_log.out`/`ID_log.err` and its outcome to `ID_result.pkl`
(`("success", value)` or `("error", traceback)`); the server writes `ID.exit` (the exit code, negative for a
signal) once the child has ended. Each child leads its own session, so killing its process group also stops
its data-loader workers. The server exits when stdin closes (its launcher ended); running children go on and
a relaunched study adopts them as it adopts any job a dead launcher left.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import select
import signal
import sys
import threading
import traceback
from pathlib import Path

import cloudpickle

JOB_ID_VARIABLE = "ABLATE_WARM_JOB_ID"  # the job id, for the trial's ledger (like SUBMITIT_LOCAL_JOB_ID)
REAP_INTERVAL_S = 0.05


def main(folder: Path, warm_up_path: Path) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the launcher's to handle (it cancels the jobs)
    try:
        cloudpickle.loads(warm_up_path.read_bytes())()
    except Exception:  # a failed warm-up only costs speed: each trial then does its own start-up
        traceback.print_exc()
    if threading.active_count() > 1:
        print(f"warm-up left {threading.active_count() - 1} threads running; forking anyway", file=sys.stderr)
    _reply("ready")
    children: dict[int, str] = {}
    while True:
        readable, _, _ = select.select([sys.stdin], [], [], REAP_INTERVAL_S)
        if readable:
            line = sys.stdin.readline()
            if not line:  # the launcher is gone (or closed the pool): exit now, without the seconds an
                sys.stderr.flush()  # interpreter with torch & co. loaded spends tearing itself down
                os._exit(0)
            job_id = line.strip()
            pid = os.fork()
            if pid == 0:
                _run_child(folder, job_id)  # never returns
            children[pid] = job_id
            _reply(str(pid))
        _reap(folder, children)


def _reply(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()  # also: a forked child must not inherit unwritten protocol output


def _reap(folder: Path, children: dict[int, str]) -> None:
    while children:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        job_id = children.pop(pid, None)
        if job_id is not None:
            _write_atomically(folder / f"{job_id}.exit", json.dumps(os.waitstatus_to_exitcode(status)).encode())


def _run_child(folder: Path, job_id: str) -> None:
    """The trial process: its own session, default signal handling, its own log files, then the job."""
    code = 1
    try:
        os.setsid()
        for number in (signal.SIGINT, signal.SIGTERM, signal.SIGCHLD):
            signal.signal(number, signal.SIG_DFL)
        _redirect(folder, job_id)
        os.environ[JOB_ID_VARIABLE] = job_id
        try:
            outcome = ("success", pickle.loads((folder / f"{job_id}_submitted.pkl").read_bytes())())
            code = 0
        except BaseException:  # SystemExit and KeyboardInterrupt are outcomes of the job too
            outcome = ("error", traceback.format_exc())
        try:
            _write_atomically(folder / f"{job_id}_result.pkl", cloudpickle.dumps(outcome))
        except Exception:  # an unpicklable result: the job failed
            traceback.print_exc()
            code = 1
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(code)  # never back into the server's loop, and none of the server's exit handlers


def _redirect(folder: Path, job_id: str) -> None:
    for fd, suffix in ((1, "out"), (2, "err")):
        target = os.open(folder / f"{job_id}_log.{suffix}", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(target, fd)
        os.close(target)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)


def _write_atomically(path: Path, data: bytes) -> None:
    temporary = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    temporary.write_bytes(data)
    temporary.replace(path)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
