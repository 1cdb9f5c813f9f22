"""`ablate mlflow serve`: one MLflow tracking server that every trial job logs through.

Jobs on other nodes cannot share a sqlite file safely (and sqlite over NFS locks badly), so SLURM studies
name the server's address as `storage.mlflow`. The server is sized for one study machine: one worker and no
job-execution workers (`mlflow server` otherwise starts ~16 processes, ~3 GB; environment.md), loopback
only unless a host is given, and its database schema is created before it starts, from this one process.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from ablate.core.training.tracking import ensure_tracking_store


def server_command(backend_store_uri: str, host: str, port: int, artifacts: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        backend_store_uri,
        "--artifacts-destination",
        str(artifacts.resolve()),
        "--host",
        host,
        "--port",
        str(port),
        "--workers",
        "1",
    ]


def server_env() -> dict[str, str]:
    return {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


def start_server(
    backend_store_uri: str = "sqlite:///mlflow.db",
    host: str = "127.0.0.1",
    port: int = 5000,
    artifacts: Path = Path("mlartifacts"),
    log: Path | None = None,
) -> subprocess.Popen:
    """Start the server in the background (the caller owns the process); see `wait_until_ready`."""
    ensure_tracking_store(backend_store_uri)
    artifacts.mkdir(parents=True, exist_ok=True)
    output = log.open("ab") if log else subprocess.DEVNULL
    return subprocess.Popen(
        server_command(backend_store_uri, host, port, artifacts), env=server_env(), stdout=output, stderr=output
    )


def wait_until_ready(url: str, process: subprocess.Popen | None = None, timeout_seconds: float = 120) -> None:
    """Until `url/health` answers; fails early, with the exit code, if the server process died."""
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"mlflow server exited with code {process.returncode} before answering at {url}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"mlflow server at {url} did not answer within {timeout_seconds:.0f} s")


def serve(backend_store_uri: str, host: str, port: int, artifacts: Path) -> int:
    """Run the server in the foreground until interrupted; returns its exit code."""
    ensure_tracking_store(backend_store_uri)
    artifacts.mkdir(parents=True, exist_ok=True)
    command = server_command(backend_store_uri, host, port, artifacts)
    try:
        return subprocess.call(command, env=server_env())
    except KeyboardInterrupt:
        return 0
