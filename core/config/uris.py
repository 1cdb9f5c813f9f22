"""Tracking and database URLs checked by their parts when a config is read, before anything connects.

MLflow and SQLAlchemy accept a mistyped URL (`htp://host`, `http://`, `postgresql://u@host:notaport/db`)
and fail later, inside a trial, with an error far from the file that holds it; these checks name the part
that is wrong while the config is still being validated. Opening what a URL names (a file, a server) is the
dry run's job (`ablations/storage_check.py`); here nothing is touched.
"""

from __future__ import annotations

from urllib.parse import urlsplit

SQLITE_PREFIX = "sqlite:///"
DATABASE_SCHEMES = ("postgresql", "mysql")  # with or without "+driver"
TRACKING_FORMS = "sqlite:///PATH, a tracking server http(s)://HOST[:PORT] or a database URL (postgresql://...)"


def check_tracking_uri(uri: str) -> str:
    """An MLflow tracking URI this project can use, else a ValueError saying which part is wrong."""
    scheme = uri.partition(":")[0].lower()
    if uri.startswith(SQLITE_PREFIX):
        return check_sqlite_url(uri)
    if scheme in ("http", "https"):
        return check_server_url(uri)
    if scheme.partition("+")[0] in DATABASE_SCHEMES:
        return check_database_url(uri)
    raise ValueError(f"unknown scheme {scheme!r}: expected {TRACKING_FORMS}")


def check_sqlite_url(url: str) -> str:
    if not url.removeprefix(SQLITE_PREFIX).strip():
        raise ValueError("sqlite:/// needs a file path after it, e.g. sqlite:///mlflow.db")
    return url


def check_server_url(url: str) -> str:
    parts = urlsplit(url)
    if not parts.hostname:
        raise ValueError(f"{parts.scheme}:// needs a host, e.g. {parts.scheme}://127.0.0.1:5000")
    try:
        parts.port  # noqa: B018 (urlsplit checks the port only when it is read)
    except ValueError:
        raise ValueError(f"port {parts.netloc.rpartition(':')[2]!r} is not a number from 0 to 65535") from None
    return url


def check_database_url(url: str) -> str:
    """A SQLAlchemy database URL whose parts parse (a port that is a number, a known backend)."""
    from sqlalchemy.engine import make_url  # here: every config is checked, few name a database (0.2 s import)
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError) as err:
        raise ValueError(f"not a database URL ({err}); expected e.g. postgresql://user@host:5432/db") from None
    if parsed.get_backend_name() not in DATABASE_SCHEMES:
        raise ValueError(f"database {parsed.get_backend_name()!r} is not supported (postgresql or mysql)")
    if parsed.port is not None and not 0 < parsed.port < 65536:
        raise ValueError(f"port {parsed.port} is not a number from 1 to 65535")
    return url
