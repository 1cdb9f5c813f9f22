"""The dry run opens every store a study will use, so that a launch never fails on one it could have checked.

The study spec already parsed each URL (`core/config/uris.py`); here they meet the world. Local files (sqlite,
Optuna journals, the default stores under `runs_root`) are checked where they are: an existing file must be
what its URL says (a SQLite database, a journal of JSON lines), a new one must be creatable (its folder
writable, each name within the file system's limit). Servers (an MLflow tracking server, PostgreSQL, MySQL)
are contacted concurrently under one deadline, REMOTE_DEADLINE_S, so an unreachable host answers in seconds,
not after a driver's or MLflow's own minutes of retries.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

from ablate.ablations.optuna_storage import JOURNAL_PREFIX, storage_file
from ablate.ablations.spec import StudySpec
from ablate.core.config.base import ConfigError

REMOTE_DEADLINE_S = 8.0  # all servers together; the bound for a dry run is 10 s
NAME_MAX = 255  # bytes in one path component on Linux file systems


def check_storages(spec: StudySpec, source: str) -> None:
    """Raise a ConfigError naming the study file, `storage.optuna`/`storage.mlflow` and the URL of the first
    store that cannot be opened."""
    optuna_field = "storage.optuna" if spec.storage.optuna is not None else "runs_root (default storage.optuna)"
    stores = {optuna_field: spec.optuna_storage, "storage.mlflow": spec.storage.mlflow}
    probes: dict[str, Callable[[], None]] = {}
    for field, url in stores.items():
        path = storage_file(url)
        try:
            if path is not None:
                _check_local(path, journal=url.startswith(JOURNAL_PREFIX))
            elif url.startswith(("http://", "https://")):
                probes[field] = lambda url=url: _reach_server(url)
            else:
                probes[field] = lambda url=url: _connect_database(url)
        except ConfigError as err:
            raise ConfigError(f"{source}: {field}: {url}: {err}") from None
    failures = _run_with_deadline(probes, REMOTE_DEADLINE_S)
    for field, problem in failures.items():
        raise ConfigError(f"{source}: {field}: {stores[field]}: {problem}")


def _check_local(path: Path, journal: bool) -> None:
    path = Path(os.path.abspath(path))
    too_long = [part for part in path.parts if len(part.encode()) > NAME_MAX]
    if too_long:
        raise ConfigError(f"a path component is longer than {NAME_MAX} bytes ({too_long[0][:40]}...)")
    if path.is_dir():
        raise ConfigError("is a folder; name a file")
    if path.exists():
        if journal:
            _check_journal(path)
        else:
            _check_sqlite(path)
        return
    folder = next(parent for parent in path.parents if parent.exists())
    if not folder.is_dir():
        raise ConfigError(f"cannot create it: {folder} is a file, not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ConfigError(f"cannot create it: {folder} is not writable")


def _check_sqlite(path: Path) -> None:
    try:
        connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=2)
        try:
            connection.execute("PRAGMA schema_version").fetchone()
        finally:
            connection.close()
    except sqlite3.Error as err:
        raise ConfigError(f"cannot open it as SQLite ({err})") from None


def _check_journal(path: Path) -> None:
    """Optuna's journal is one JSON object per line; the first line tells a journal from another file."""
    try:
        with path.open("rb") as journal:
            first = journal.readline(1 << 20).strip()
        if first:
            json.loads(first)
    except OSError as err:
        raise ConfigError(f"cannot read it ({err.strerror})") from None
    except ValueError:
        raise ConfigError("is not an Optuna journal (its first line is not JSON)") from None


def _reach_server(url: str) -> None:
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        socket.create_connection((parts.hostname, port), timeout=REMOTE_DEADLINE_S).close()
    except OSError as err:
        raise ConfigError(
            f"cannot reach {parts.hostname}:{port} ({err.strerror or err}); is the server running "
            "(`ablate mlflow serve`) and reachable from here?"
        ) from None


def _connect_database(url: str) -> None:
    from sqlalchemy import create_engine  # here: only studies on a database server need it

    try:
        engine = create_engine(url, connect_args={"connect_timeout": int(REMOTE_DEADLINE_S)})
        engine.connect().close()
        engine.dispose()
    except ImportError as err:
        # SQLAlchemy 2.1 reads plain postgresql:// as psycopg (3); the dependency installed is psycopg2
        hint = "; write postgresql+psycopg2://... (psycopg2 is installed)" if url.startswith("postgresql:") else ""
        raise ConfigError(f"its driver is not installed ({err}){hint}") from None
    except Exception as err:  # driver errors share no base class; whichever it is becomes one line
        detail = str(getattr(err, "orig", None) or err).strip().splitlines()
        raise ConfigError(f"cannot connect ({detail[0][:200] if detail else type(err).__name__})") from None


def _run_with_deadline(probes: dict[str, Callable[[], None]], deadline_s: float) -> dict[str, str]:
    """Run every probe in a daemon thread; what has not answered by the deadline is reported as such (its
    thread is abandoned: a DNS lookup or a driver cannot be interrupted, and a daemon never blocks exit)."""
    problems: dict[str, str] = {}

    def run(field: str, probe: Callable[[], None]) -> None:
        try:
            probe()
        except ConfigError as err:
            problems[field] = str(err)

    threads = {field: threading.Thread(target=run, args=(field, probe), daemon=True) for field, probe in probes.items()}
    for thread in threads.values():
        thread.start()
    end = time.monotonic() + deadline_s
    for field, thread in threads.items():
        thread.join(max(0.0, end - time.monotonic()))
        if thread.is_alive():
            problems[field] = f"no answer within {deadline_s:.0f} s"
    return problems
