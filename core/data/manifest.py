"""The dataset manifest: which shards form each split and how to evaluate on them.

`ablate data shapes` writes one; for real webdataset shards a researcher writes the same small JSON by hand
(README, "Using your own data"). Paths are relative to the manifest's folder.
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ablate.core.config.base import ConfigError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="ignore")


class SplitSpec(_Strict):
    shards: list[str] = Field(min_length=1)
    num_samples: int | None = None


class ZeroShotTask(_Strict):
    classnames: list[str] = Field(min_length=2)
    templates: list[str] = Field(min_length=1)
    label_key: str = Field(description="dotted path into each sample's json, e.g. largest.shape")


class RetrievalSpec(_Strict):
    split: str = "val"
    caption: str = Field("txt", description="txt (alt-text) or synN (N-th synthetic caption)")


class Manifest(_Strict):
    name: str
    splits: dict[str, SplitSpec]
    zero_shot: dict[str, ZeroShotTask] = Field(default_factory=dict)
    retrieval: RetrievalSpec | None = None
    root: Path = Path(".")

    def shard_paths(self, split: str) -> list[Path]:
        if split not in self.splits:
            raise ConfigError(f"{self.root / 'manifest.json'}: no split {split!r} (has {sorted(self.splits)})")
        return [self.root / shard for shard in self.splits[split].shards]


def load_manifest(root: Path | str) -> Manifest:
    path = Path(root) / "manifest.json"
    if not path.is_file():
        raise FileNotFoundError(f"data.root: {root}: no manifest.json (see README, 'Using your own data')")
    try:
        manifest = Manifest.model_validate(json.loads(path.read_text()))
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "<top level>"
        raise ConfigError(f"{path}: invalid manifest: {where}: {first['msg'][:200]}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: invalid manifest: {str(err)[:200]}") from None
    manifest.root = Path(root)
    return manifest
