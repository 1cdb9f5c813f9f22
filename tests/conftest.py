"""Shared fixtures. Tests never touch the network or the user's cache: HF_HUB_OFFLINE is set and the bundled
data cache points into pytest's temporary folder."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")
if "PYTEST_XDIST_WORKER_COUNT" in os.environ:
    # `make test` runs one worker per core: two workers training with 2 threads each on 2 cores made every run
    # ~3x slower than alone (OpenMP threads spinning), so each worker and the processes it starts get its share
    workers = int(os.environ["PYTEST_XDIST_WORKER_COUNT"])
    os.environ["OMP_NUM_THREADS"] = str(max(1, min(2, (os.cpu_count() or 1) // workers)))

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


@pytest.fixture(scope="session")
def small_shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from ablate.core.data.shapes import generate_shapes

    root = tmp_path_factory.mktemp("shapes-small")
    generate_shapes(root, train=96, val=32, seed=3, image_size=64, samples_per_shard=32)
    return root


@pytest.fixture(scope="session")
def random_teachers(tmp_path_factory: pytest.TempPathFactory) -> list:
    """Two untrained `tiny` teachers: the writer's job does not depend on how good they are."""
    import torch

    from ablate.core.config.sections import TeacherSpec
    from ablate.core.models.factory import create_model

    folder = tmp_path_factory.mktemp("teachers")
    specs = []
    for seed, scale in ((0, 70.0), (1, 60.0)):
        torch.manual_seed(seed)
        path = folder / f"teacher-{seed}.pt"
        torch.save({"model": create_model("tiny").state_dict()}, path)
        specs.append(TeacherSpec(model="tiny", checkpoint=str(path), logit_scale=scale))
    return specs


@pytest.fixture(scope="session")
def reinforced_small(small_shapes: Path, random_teachers: list, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from ablate.core.data.reinforce import ReinforceSettings, reinforce_dataset

    out = tmp_path_factory.mktemp("dr-small")
    reinforce_dataset(small_shapes, random_teachers, out, ReinforceSettings(augmentations=2), progress=False)
    return out


@pytest.fixture(scope="session")
def postgres_server() -> Iterator:
    """A throwaway PostgreSQL server (tests/postgres_fixtures.py). Skips without the server binaries, unless
    ABLATE_REQUIRE_POSTGRES=1 (set by .ci/run), where their absence fails the test instead."""
    from postgres_fixtures import PostgresUnavailable, find_bindir, running_postgres

    try:
        find_bindir()
    except PostgresUnavailable as err:
        if os.environ.get("ABLATE_REQUIRE_POSTGRES") == "1":
            pytest.fail(f"ABLATE_REQUIRE_POSTGRES=1 but {err}")
        pytest.skip(str(err))
    with running_postgres() as server:
        yield server
