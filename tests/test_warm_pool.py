"""Warm local trial workers (slurm/warm_pool.py): jobs forked from an initialised fork server keep the isolation
of one process per trial: no state from one job reaches the next, a crash or kill fails that job alone,
cancellation stops the job's whole process group, and a dead server is replaced."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cloudpickle
import pytest

from ablate.ablations.trial import PRELOADED
from ablate.slurm.warm_pool import JOB_ID_VARIABLE, WarmJob, WarmJobError, WarmPool

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the fork server cannot import test modules


def warm_up() -> None:
    import xml.dom.minidom  # noqa: F401 -- stands for torch & co.: imported once, in the server

    os.environ["ABLATE_TEST_WARMED_BY"] = str(os.getpid())


def report_and_dirty() -> dict:
    report = {
        "pid": os.getpid(),
        "warmed_by": os.environ.get("ABLATE_TEST_WARMED_BY"),
        "preloaded": "xml.dom.minidom" in sys.modules,
        "dirty": os.environ.get("ABLATE_TEST_DIRTY"),
    }
    os.environ["ABLATE_TEST_DIRTY"] = "left by an earlier job"  # a later job must not see this
    sys.modules.pop("xml.dom.minidom")
    return report


def wait(job: WarmJob, timeout: float = 60.0) -> WarmJob:
    deadline = time.monotonic() + timeout
    while not job.done():
        assert time.monotonic() < deadline, f"job {job.job_id} did not end"
        time.sleep(0.02)
    return job


@pytest.fixture
def pool(tmp_path: Path):
    pool = WarmPool(tmp_path / "jobs", timeout_min=10, warm_up=warm_up)
    yield pool
    pool.close()


def test_jobs_start_in_the_warmed_server_and_leave_nothing_behind(pool: WarmPool) -> None:
    server = pool._server[0].pid
    first = wait(pool.submit(report_and_dirty)).result()
    second = wait(pool.submit(report_and_dirty)).result()
    assert first["warmed_by"] == second["warmed_by"] == str(server)  # warm-up ran in the server, once
    assert first["preloaded"] and second["preloaded"]
    assert first["pid"] != second["pid"] and server not in (first["pid"], second["pid"])
    assert first["dirty"] is None and second["dirty"] is None and "ABLATE_TEST_DIRTY" not in os.environ


def test_the_job_knows_its_id_and_writes_its_own_logs(pool: WarmPool) -> None:
    job = pool.submit(lambda: print("hello from the job") or os.environ[JOB_ID_VARIABLE])
    assert wait(job).result() == job.job_id
    assert (pool.folder / f"{job.job_id}_log.out").read_text().strip() == "hello from the job"


def _exit_three() -> None:
    os._exit(3)


def _killed() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _raises() -> None:
    raise ValueError("bad learning rate")


def test_a_crashed_killed_or_failing_job_fails_alone(pool: WarmPool) -> None:
    failures = {
        _exit_three: "exited with code 3",
        _killed: "killed by SIGKILL",
        _raises: "ValueError: bad learning rate",
    }
    jobs = {pool.submit(function): message for function, message in failures.items()}
    for job, message in jobs.items():
        with pytest.raises(WarmJobError, match=message):
            wait(job).result()
    assert wait(pool.submit(lambda: 42)).result() == 42  # the server and the next job are unaffected


def _sleep_with_a_worker(marker: str) -> None:
    worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])  # like a loader worker
    Path(marker).write_text(str(worker.pid))
    time.sleep(60)


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"  # a zombie awaiting its parent


def test_cancel_stops_the_job_with_its_process_group(pool: WarmPool, tmp_path: Path) -> None:
    marker = tmp_path / "worker.pid"
    job = pool.submit(lambda: _sleep_with_a_worker(str(marker)))
    deadline = time.monotonic() + 30
    while not marker.is_file() or not marker.read_text():
        assert time.monotonic() < deadline
        time.sleep(0.02)
    job.cancel()
    with pytest.raises(WarmJobError, match="killed by SIGKILL"):
        wait(job).result()
    deadline = time.monotonic() + 10
    while not _gone(int(marker.read_text())):
        assert time.monotonic() < deadline, "the job's worker outlived the cancelled job"
        time.sleep(0.05)


def test_a_dead_server_is_replaced_and_its_running_job_still_ends(pool: WarmPool) -> None:
    running = pool.submit(lambda: time.sleep(1.0) or "finished")
    pool._server[0].kill()
    assert wait(running).result() == "finished"
    assert wait(pool.submit(lambda: "next")).result() == "next"


def test_the_launcher_wakes_when_a_job_ends_not_at_its_poll_interval(pool: WarmPool) -> None:
    quick, slow = pool.submit(lambda: time.sleep(0.3)), pool.submit(lambda: time.sleep(120))
    try:
        started = time.monotonic()
        pool.wait([quick, slow], timeout_s=100)
        assert quick.done() and not slow.done()  # returned for the job that ended, its exit already recorded
        assert time.monotonic() - started < 50  # 100 s if it slept through the interval
    finally:
        slow.cancel()


def test_closing_the_pool_stops_the_server_and_leaves_running_jobs_running(tmp_path: Path) -> None:
    pool = WarmPool(tmp_path / "jobs", timeout_min=10, warm_up=warm_up)
    job = pool.submit(lambda: time.sleep(2) or "finished")
    server = pool._server[0]
    pool.close()
    assert server.returncode == 0
    assert wait(job).result() == "finished"


def test_a_job_past_its_time_limit_is_stopped(tmp_path: Path) -> None:
    pool = WarmPool(tmp_path / "jobs", timeout_min=0.5 / 60)
    try:
        job = pool.submit(lambda: time.sleep(60))
        with pytest.raises(WarmJobError, match="time limit"):
            wait(job, timeout=30).result()
    finally:
        pool.close()


def _what_a_trial_finds() -> dict:
    from ablate.core.data import tar_index, tokenizer

    return {
        "indexed": len(tar_index._indexes),
        "imported": [name for name in PRELOADED if name in sys.modules],
        "vocabulary_parsed": tokenizer._vocabulary.cache_info().currsize == 1,
    }


@pytest.mark.slow
def test_trials_fork_with_the_study_imported_and_its_shards_indexed(tmp_path: Path, shapes_root: Path) -> None:
    from ablate.ablations.trial import TrialWarmUp
    from ablate.core.data.manifest import load_manifest

    pool = WarmPool(tmp_path / "jobs", timeout_min=10, warm_up=TrialWarmUp({"data": {"root": str(shapes_root)}}))
    try:
        found = wait(pool.submit(_what_a_trial_finds), timeout=900).result()
    finally:
        pool.close()
    manifest = load_manifest(shapes_root)
    assert found["indexed"] == sum(len(manifest.shard_paths(split)) for split in manifest.splits)
    assert found["imported"] == list(PRELOADED)
    assert found["vocabulary_parsed"]
