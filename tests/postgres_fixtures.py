"""A throwaway PostgreSQL server for the storage tests: `initdb` into a fresh folder, `pg_ctl start` on a free
localhost port with its unix socket in that folder, one database per caller, `pg_ctl stop` at the end.

PostgreSQL refuses to run as root, so under root (CI runs `.ci/run` as root) the server runs as the `postgres`
account that Debian's packages create, else as `nobody`; the folder is made under /tmp and handed to that
account, since pytest's own temporary folders are private to root. Durability is switched off (fsync, full page
writes): the cluster lives for one test session.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from train_helpers import free_port

SUPERUSER = "ablate"
SPEED_OVER_DURABILITY = "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL server binaries on this machine."""


def find_bindir() -> Path:
    """The folder holding initdb, pg_ctl and postgres: from PATH (symlinks followed, since pg_ctl finds
    `postgres` beside its real self), else the newest Debian layout /usr/lib/postgresql/<major>/bin."""
    on_path = shutil.which("initdb")
    if on_path:
        return Path(on_path).resolve().parent
    debian = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parent.parent.name))
    if debian:
        return debian[-1].parent
    raise PostgresUnavailable(
        "PostgreSQL server binaries (initdb, pg_ctl) are not on PATH or in /usr/lib/postgresql/*/bin "
        "(Debian: apt-get install postgresql)"
    )


@dataclass(frozen=True)
class PostgresServer:
    port: int
    folder: Path

    def create_database(self, name: str) -> str:
        """A new, empty database; returns its SQLAlchemy URL (what Optuna's and MLflow's storages take)."""
        import psycopg2

        connection = psycopg2.connect(host="127.0.0.1", port=self.port, user=SUPERUSER, dbname="postgres")
        try:
            connection.autocommit = True  # CREATE DATABASE cannot run inside a transaction
            with connection.cursor() as cursor:
                cursor.execute(f'CREATE DATABASE "{name}"')
        finally:
            connection.close()
        return f"postgresql+psycopg2://{SUPERUSER}@127.0.0.1:{self.port}/{name}"


@contextmanager
def running_postgres() -> Iterator[PostgresServer]:
    """Start a fresh cluster, yield it, stop it and delete its folder. Raises PostgresUnavailable without
    binaries; any other failure (initdb, start) raises with the server log attached."""
    bindir = find_bindir()
    folder = Path(tempfile.mkdtemp(prefix="ablate-postgres-"))  # short: unix socket paths are limited to 107 bytes
    account: dict = {}
    if os.geteuid() == 0:
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            owner = pwd.getpwnam("nobody")
        os.chown(folder, owner.pw_uid, owner.pw_gid)
        account = {"user": owner.pw_uid, "group": owner.pw_gid, "extra_groups": []}
    data, log = folder / "data", folder / "server.log"

    def run(*command: str) -> None:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=120, env=os.environ | {"LC_ALL": "C"}, **account
        )
        if done.returncode:
            server_log = log.read_text()[-3000:] if log.exists() else ""
            raise RuntimeError(f"{' '.join(command)} failed: {done.stdout}{done.stderr}{server_log}")

    try:
        run(
            str(bindir / "initdb"),
            "-D",
            str(data),
            "-U",
            SUPERUSER,
            "--auth=trust",
            "--no-sync",
            "-E",
            "UTF8",
            "--locale=C",
        )
        port = free_port()
        options = f"-c listen_addresses=127.0.0.1 -p {port} -k {folder} {SPEED_OVER_DURABILITY}"
        run(str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log), "-o", options, "-w", "-t", "60", "start")
        try:
            yield PostgresServer(port, folder)
        finally:
            run(str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop")
    finally:
        shutil.rmtree(folder, ignore_errors=True)
