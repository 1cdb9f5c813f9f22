"""Service verbs: the local SLURM cluster (`ablate cluster up|down|status`) and the MLflow server."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from ablate.ablations.cli.common import cluster_app, console, fail, mlflow_app

CLUSTER_DIR = typer.Option(
    None, "--folder", help="state, logs and config; default $ABLATE_CLUSTER_DIR or ~/.local/state"
)


def _cluster_config(folder: Path | None):
    from ablate.slurm.cluster import ClusterConfig

    return ClusterConfig(folder=folder) if folder else ClusterConfig()


def _print_cluster(info: dict, as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(info, indent=2))
        return
    for daemon, pid in info["daemons"].items():
        console.print(f"{daemon:10} {'pid ' + str(pid) if pid else 'not running'}")
    console.print(f"ready: {info['ready']}; state and logs in {info['folder']}", soft_wrap=True)
    if not info["system_conf_linked"]:
        console.print(f"export SLURM_CONF={info['slurm_conf']}", soft_wrap=True)


@cluster_app.command("up")
def cluster_up(folder: Path | None = CLUSTER_DIR, as_json: bool = typer.Option(False, "--json")) -> None:
    """Install (apt-get, as root) if needed and start munge, MariaDB, slurmdbd, slurmctld, slurmd; idempotent."""
    from ablate.slurm.cluster import ClusterError, up

    try:
        _print_cluster(up(_cluster_config(folder)), as_json)
    except ClusterError as err:
        fail(str(err))


@cluster_app.command("down")
def cluster_down(folder: Path | None = CLUSTER_DIR) -> None:
    """Stop the daemons `up` started (by their recorded pids); state and logs stay for the next `up`."""
    from ablate.slurm.cluster import down

    stopped = down(_cluster_config(folder))
    console.print(f"stopped: {', '.join(stopped) or 'nothing was running'}")


@cluster_app.command("status")
def cluster_status(folder: Path | None = CLUSTER_DIR, as_json: bool = typer.Option(False, "--json")) -> None:
    """Which daemons run, and whether the node takes jobs."""
    from ablate.slurm.cluster import status

    _print_cluster(status(_cluster_config(folder)), as_json)


@mlflow_app.command("serve")
def mlflow_serve(
    backend_store_uri: str = typer.Option("sqlite:///mlflow.db", help="where runs are stored"),
    host: str = typer.Option("127.0.0.1", help="listen address; 0.0.0.0 lets other nodes log (trusted networks)"),
    port: int = typer.Option(5000),
    artifacts: Path = typer.Option(Path("mlartifacts"), help="where the server keeps artifacts"),
) -> None:
    """Serve MLflow for trial jobs (1 worker, no job execution); studies log to it with storage.mlflow: URL."""
    from ablate.slurm.mlflow_server import serve

    console.print(f"MLflow at http://{host}:{port} (storage.mlflow in a study file); Ctrl-C stops it")
    raise typer.Exit(code=serve(backend_store_uri, host, port, artifacts))
