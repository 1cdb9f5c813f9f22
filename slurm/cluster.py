"""A real single-node SLURM cluster on this machine, with accounting: `ablate cluster up | down | status`.

What runs: munged (our own key and socket), MariaDB (our own data folder, 127.0.0.1 only), slurmdbd, slurmctld
and slurmd, all as root, all with pid files, logs, configuration and state in one folder. `up` installs the
Debian packages when they are missing and starts only what is not already running, so it is idempotent;
`down` stops exactly the processes whose pids it recorded (checked against their command line, so a recycled
pid is never killed). Accounting is real (slurmdbd + MariaDB): `sacct` is what reports job states and
CPU/GPU-hours, and without it submitit cannot tell that a job died (environment.md).

Client commands (sbatch, sacct, scontrol) find this cluster through SLURM_CONF, or through
/etc/slurm/slurm.conf, which `up` links to the generated file when the machine has no SLURM configuration of
its own (and `down` unlinks).
"""

from __future__ import annotations

import glob
import os
import re
import secrets
import shutil
import signal
import socket
import string
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

PACKAGES = ["slurm-wlm", "slurmdbd", "munge", "mariadb-server", "mariadb-client"]
BINARIES = ["munged", "mariadbd", "mariadb-install-db", "mariadb", "slurmdbd", "slurmctld", "slurmd", "sacctmgr"]
DAEMONS = ["munged", "mariadbd", "slurmdbd", "slurmctld", "slurmd"]  # start order; stopped in reverse
SYSTEM_CONF = Path("/etc/slurm/slurm.conf")
TEMPLATES = Path(__file__).parent / "templates"


class ClusterError(RuntimeError):
    """The cluster cannot be installed or started here; the message says why and what to look at."""


def default_folder() -> Path:
    return Path(os.environ.get("ABLATE_CLUSTER_DIR", Path.home() / ".local" / "state" / "ablate" / "cluster"))


@dataclass
class ClusterConfig:
    folder: Path = field(default_factory=default_folder)
    cluster: str = "ablate"
    partition: str = "debug"
    ctld_port: int = 6817  # slurmd uses ctld_port + 1, slurmdbd + 2, MariaDB + 3

    @property
    def slurm_conf(self) -> Path:
        return self.folder / "etc" / "slurm.conf"

    def pid_file(self, daemon: str) -> Path:
        return self.folder / "run" / f"{daemon}.pid"

    def log_file(self, daemon: str) -> Path:
        return self.folder / "log" / f"{daemon}.log"


def client_env(config: ClusterConfig | None = None) -> dict[str, str]:
    """Environment for SLURM client commands talking to this cluster."""
    return {**os.environ, "SLURM_CONF": str((config or ClusterConfig()).slurm_conf)}


# -- installing ------------------------------------------------------------------------------------------
def missing_binaries() -> list[str]:
    search = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
    return [name for name in BINARIES if shutil.which(name, path=search) is None]


def ensure_installed() -> None:
    """apt-get the Debian packages (as root) when any daemon is missing."""
    if not missing_binaries():
        return
    if os.geteuid() != 0:
        raise ClusterError(f"missing {', '.join(missing_binaries())}; installing {' '.join(PACKAGES)} needs root")
    if shutil.which("apt-get") is None:
        raise ClusterError(f"missing {', '.join(missing_binaries())} and no apt-get to install {' '.join(PACKAGES)}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", *PACKAGES]
    if subprocess.run(install, env=env, capture_output=True).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, check=False)
        done = subprocess.run(install, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise ClusterError(f"apt-get install {' '.join(PACKAGES)} failed:\n{done.stderr[-2000:]}")
    if missing_binaries():
        raise ClusterError(f"still missing after installing: {', '.join(missing_binaries())}")


# -- processes --------------------------------------------------------------------------------------------
def recorded_pid(config: ClusterConfig, daemon: str) -> int | None:
    """The daemon's pid from its pid file, if that process is alive and is this daemon."""
    try:
        pid = int(config.pid_file(daemon).read_text().split()[0])
        command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()
    except (OSError, ValueError, IndexError):
        return None
    return pid if Path(command).name == daemon else None


def _wait_for(predicate, seconds: float, what: str, log: Path | None = None) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    tail = ""
    if log is not None and log.is_file():
        tail = "\n" + "\n".join(log.read_text(errors="replace").splitlines()[-15:])
    raise ClusterError(f"{what} did not happen within {seconds:.0f} s (log: {log}){tail}")


def _run(command: list[str], config: ClusterConfig, what: str) -> str:
    done = subprocess.run(command, env=client_env(config), capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        raise ClusterError(f"{what} failed ({' '.join(command)}):\n{done.stdout}{done.stderr}".strip())
    return done.stdout


# -- configuration ----------------------------------------------------------------------------------------
def _secret(path: Path, make) -> str:
    if not path.is_file():
        path.write_text(make())
        path.chmod(0o600)
    return path.read_text().strip()


def _node_resources() -> tuple[int, int]:
    """CPUs and memory (MB) as slurmd sees them; RealMemory above what slurmd finds drains the node."""
    found = subprocess.run(["slurmd", "-C"], capture_output=True, text=True, timeout=30).stdout
    cpus = int(re.search(r"CPUs=(\d+)", found).group(1))
    memory = int(re.search(r"RealMemory=(\d+)", found).group(1))
    return cpus, max(256, int(memory * 0.9))


def write_configuration(config: ClusterConfig) -> None:
    folder = config.folder
    for part in ("etc", "run", "log", "state/slurmctld", "state/slurmd", "munge"):
        (folder / part).mkdir(parents=True, exist_ok=True)
    (folder / "munge").chmod(0o700)
    key = folder / "munge" / "munge.key"
    if not key.is_file():
        key.write_bytes(secrets.token_bytes(128))
        key.chmod(0o400)
    cpus, memory = _node_resources()
    gpus = sorted(glob.glob("/dev/nvidia[0-9]*"))
    values = {
        "folder": str(folder),
        "cluster": config.cluster,
        "partition": config.partition,
        "host": socket.gethostname().split(".")[0],
        "ctld_port": config.ctld_port,
        "slurmd_port": config.ctld_port + 1,
        "dbd_port": config.ctld_port + 2,
        "mariadb_port": config.ctld_port + 3,
        "db_password": _secret(folder / "munge" / "db_password", lambda: secrets.token_hex(16)),
        "cpus": cpus,
        "memory_mb": memory,
        "mem_per_cpu": memory // cpus,  # so jobs that ask for no memory still share the node
        "gres": f"Gres=gpu:{len(gpus)}" if gpus else "",
        "gpu_files": ",".join(gpus),
    }
    names = ["slurm.conf", "slurmdbd.conf"] + (["gres.conf"] if gpus else [])
    for name in names:
        text = string.Template((TEMPLATES / name).read_text()).substitute(values)
        (folder / "etc" / name).write_text(text)
    (folder / "etc" / "slurmdbd.conf").chmod(0o600)  # slurmdbd refuses a readable file holding the password


def link_system_configuration(config: ClusterConfig) -> bool:
    """Point /etc/slurm/slurm.conf at ours when the machine has none, so plain `sbatch` finds the cluster."""
    if SYSTEM_CONF.is_symlink() and SYSTEM_CONF.resolve() == config.slurm_conf.resolve():
        return True
    if SYSTEM_CONF.exists() or SYSTEM_CONF.is_symlink() or os.geteuid() != 0:
        return False
    SYSTEM_CONF.parent.mkdir(parents=True, exist_ok=True)
    SYSTEM_CONF.symlink_to(config.slurm_conf)
    return True


# -- starting ---------------------------------------------------------------------------------------------
def _start_munged(config: ClusterConfig) -> None:
    folder = config.folder
    subprocess.run(
        [
            "munged",
            "--force",  # we run it as root with a key in our own folder
            f"--socket={folder / 'run' / 'munge.socket'}",
            f"--key-file={folder / 'munge' / 'munge.key'}",
            f"--pid-file={config.pid_file('munged')}",
            f"--log-file={config.log_file('munged')}",
            f"--seed-file={folder / 'munge' / 'munged.seed'}",
        ],
        check=True,
        capture_output=True,
        timeout=30,
    )


def _mariadb_socket(config: ClusterConfig) -> Path:
    return config.folder / "run" / "mariadb.sock"


def _start_mariadb(config: ClusterConfig) -> None:
    data = config.folder / "mariadb"
    fresh = not (data / "mysql").is_dir()
    if fresh:
        install = ["mariadb-install-db", "--no-defaults", f"--datadir={data}", "--user=root", "--skip-test-db"]
        install += ["--auth-root-authentication-method=socket"]
        _run(install, config, "mariadb-install-db")
    with config.log_file("mariadbd").open("ab") as log:
        subprocess.Popen(
            [
                "mariadbd",
                "--no-defaults",
                "--user=root",
                f"--datadir={data}",
                "--bind-address=127.0.0.1",
                f"--port={config.ctld_port + 3}",
                f"--socket={_mariadb_socket(config)}",
                f"--pid-file={config.pid_file('mariadbd')}",
                f"--log-error={config.log_file('mariadbd')}",
                "--skip-name-resolve",
                "--innodb-buffer-pool-size=128M",
                "--innodb-lock-wait-timeout=900",  # slurmdbd's recommendation
            ],
            stdout=log,
            stderr=log,
            start_new_session=True,  # a daemon: it outlives `ablate cluster up`
        )
    _wait_for(_mariadb_socket(config).exists, 60, "MariaDB start", config.log_file("mariadbd"))
    password = (config.folder / "munge" / "db_password").read_text().strip()
    sql = (
        "CREATE DATABASE IF NOT EXISTS slurm_acct_db; "
        f"CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '{password}'; "
        "GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1'; FLUSH PRIVILEGES;"
    )
    mariadb = ["mariadb", "--no-defaults", f"--socket={_mariadb_socket(config)}", "-u", "root", "-e", sql]
    _wait_for(
        lambda: subprocess.run(mariadb, capture_output=True, timeout=30).returncode == 0,
        60,
        "creating the accounting database",
        config.log_file("mariadbd"),
    )


def _register_cluster(config: ClusterConfig) -> None:
    """The cluster, an account and root as its user, in the accounting database (once)."""
    sacctmgr = ["sacctmgr", "-i", "-n", "-P"]
    known = _run([*sacctmgr, "show", "cluster", "format=cluster"], config, "sacctmgr show cluster").split()
    if config.cluster in known:
        return
    _run([*sacctmgr, "add", "cluster", config.cluster], config, "sacctmgr add cluster")
    _run([*sacctmgr, "add", "account", "ablate", "Description=ablate", "Organization=ablate"], config, "add account")
    _run([*sacctmgr, "add", "user", "root", "Account=ablate"], config, "sacctmgr add user")


def _start_slurm_daemon(config: ClusterConfig, daemon: str) -> None:
    subprocess.run([daemon], env=client_env(config), check=True, capture_output=True, timeout=60)
    _wait_for(lambda: recorded_pid(config, daemon) is not None, 30, f"{daemon} start", config.log_file(daemon))


def _answers(command: list[str], config: ClusterConfig) -> str | None:
    """The command's output, or None when it fails or is not installed."""
    try:
        done = subprocess.run(command, env=client_env(config), capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


def _dbd_answers(config: ClusterConfig) -> bool:
    return _answers(["sacctmgr", "-n", "show", "cluster"], config) is not None


def _node_idle(config: ClusterConfig) -> bool:
    return (_answers(["sinfo", "-h", "-o", "%t"], config) or "").strip() in {"idle", "mix", "alloc"}


def up(config: ClusterConfig | None = None) -> dict:
    """Install if needed and start whatever is not running; returns `status()`."""
    config = config or ClusterConfig()
    ensure_installed()
    if os.geteuid() != 0:
        raise ClusterError("the local cluster runs its daemons as root; run `ablate cluster up` as root (sudo)")
    write_configuration(config)
    if recorded_pid(config, "munged") is None:
        _start_munged(config)
    if recorded_pid(config, "mariadbd") is None:
        _start_mariadb(config)
    if recorded_pid(config, "slurmdbd") is None:
        _start_slurm_daemon(config, "slurmdbd")
    _wait_for(lambda: _dbd_answers(config), 60, "slurmdbd answering", config.log_file("slurmdbd"))
    _register_cluster(config)
    for daemon in ("slurmctld", "slurmd"):
        if recorded_pid(config, daemon) is None:
            _start_slurm_daemon(config, daemon)
    _wait_for(lambda: _node_idle(config), 60, "the node becoming idle", config.log_file("slurmctld"))
    link_system_configuration(config)
    return status(config)


def down(config: ClusterConfig | None = None, timeout_seconds: float = 30) -> list[str]:
    """Stop the recorded daemons (SIGTERM, then SIGKILL after the timeout); returns what was stopped."""
    config = config or ClusterConfig()
    stopped = []
    for daemon in reversed(DAEMONS):
        pid = recorded_pid(config, daemon)
        if pid is None:
            continue
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_seconds
        while recorded_pid(config, daemon) == pid and time.monotonic() < deadline:
            time.sleep(0.05)
        if recorded_pid(config, daemon) == pid:
            os.kill(pid, signal.SIGKILL)
        stopped.append(daemon)
    if SYSTEM_CONF.is_symlink() and SYSTEM_CONF.resolve() == config.slurm_conf.resolve():
        SYSTEM_CONF.unlink()
    return stopped


def status(config: ClusterConfig | None = None) -> dict:
    """Each daemon's pid (None: not running), whether the node takes jobs, and where things are."""
    config = config or ClusterConfig()
    daemons = {daemon: recorded_pid(config, daemon) for daemon in DAEMONS}
    running = all(daemons.values())
    return {
        "folder": str(config.folder),
        "slurm_conf": str(config.slurm_conf),
        "daemons": daemons,
        "ready": running and _node_idle(config) and _dbd_answers(config),
        "system_conf_linked": SYSTEM_CONF.is_symlink() and SYSTEM_CONF.resolve() == config.slurm_conf.resolve(),
    }
