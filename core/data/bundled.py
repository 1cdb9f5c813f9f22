"""The bundled benchmark: generated once into a cache folder and reused by every later run.

Several trial processes may ask for it at the same moment; an exclusive file lock makes exactly one of them
generate while the others wait and then read the finished manifest.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from ablate.core.config.sections import DataConfig
from ablate.core.data.shapes import generate_shapes

BUNDLED_IMAGE_SIZE = 64


def cache_dir() -> Path:
    return Path(os.environ.get("ABLATE_CACHE", Path.home() / ".cache" / "ablate"))


def bundled_shapes_path(train: int, val: int, seed: int) -> Path:
    """Where the benchmark of this size lives in the cache (whether or not it was generated yet)."""
    return cache_dir() / f"shapes-seed{seed}-train{train}-val{val}-{BUNDLED_IMAGE_SIZE}px"


def bundled_shapes_root(train: int, val: int, seed: int) -> Path:
    """The benchmark's folder, generated first if the cache does not hold it yet."""
    root = bundled_shapes_path(train, val, seed)
    if (root / "manifest.json").is_file():
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    with open(root.parent / f"{root.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        generate_shapes(
            root,
            train=train,
            val=val,
            seed=seed,
            image_size=BUNDLED_IMAGE_SIZE,
            workers=min(4, os.cpu_count() or 1),
        )
    return root


def resolve_data_root(config: DataConfig) -> Path:
    """`data.root` when given, else the bundled benchmark of the configured size."""
    if config.root is not None:
        return Path(config.root).expanduser()
    return bundled_shapes_root(config.shapes_train, config.shapes_val, config.shapes_seed)
