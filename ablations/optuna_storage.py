"""Optuna storage URLs to what `optuna.create_study/load_study(storage=...)` takes.

Optuna opens database URLs (sqlite, PostgreSQL, MySQL) itself, but has no URL form for its journal file, which
SLURM studies use by default; `journal:PATH` is this project's spelling of one. The launcher, every trial job and
the analysis (parameter importances) open a study's storage through here, so all of them read the same study.
Kept free of the study spec and of anything heavy: analysis imports it as a shared helper.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

JOURNAL_PREFIX = "journal:"
SQLITE_PREFIX = "sqlite:///"


def storage_file(url: str) -> Path | None:
    """The local file behind a sqlite or journal URL; None for a database server (PostgreSQL, MySQL).

    Readers check it exists before opening: opening a missing file creates an empty study store there."""
    if url.startswith(JOURNAL_PREFIX):
        return Path(url.removeprefix(JOURNAL_PREFIX))
    if url.startswith(SQLITE_PREFIX):
        return Path(url.removeprefix(SQLITE_PREFIX))
    return None


def open_optuna_storage(url: str) -> Any:
    """The URL itself for databases; a `JournalStorage` for `journal:PATH` (its folder is created)."""
    path = storage_file(url)
    if not url.startswith(JOURNAL_PREFIX) or path is None:
        return url
    import optuna  # here, so that validating a study file stays light

    path.parent.mkdir(parents=True, exist_ok=True)
    return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))
