"""Shared fixtures. Tests never touch the network or the user's cache: HF_HUB_OFFLINE is set and the bundled
data cache points into pytest's temporary folder."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")

SMALL_TRAIN, SMALL_VAL = 1536, 256


@pytest.fixture(scope="session", autouse=True)
def isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cache = tmp_path_factory.mktemp("ablate-cache")
    os.environ["ABLATE_CACHE"] = str(cache)
    return cache


@pytest.fixture(scope="session")
def shapes_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small shapes benchmark (1536 train / 256 val samples), generated once per test session."""
    from ablate.core.data.shapes import generate_shapes

    root = tmp_path_factory.mktemp("shapes")
    generate_shapes(root, train=SMALL_TRAIN, val=SMALL_VAL, seed=0, samples_per_shard=512)
    return root


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to open a network connection fails the test."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
