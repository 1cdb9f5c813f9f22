"""Reinforced shards opened for training: joined to their images by uid, checked, damage skipped and counted.

The join is by uid because DataCompDR ships embeddings without pixels: the reinforcement may live in its own
shard set (ours mirror the source shards; DataComp's match per shard) or inside the image shards themselves.
Everything a run can get wrong about the shards is checked here, before its first step: the embedding width
against the configured teachers, uids without images, damaged or truncated shards (skipped with a warning
that names them and counts what was lost).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

from ablate.core.config.base import ConfigError
from ablate.core.data.reinforced_format import (
    EMBEDDING_KEYS,
    ReinforcedRecord,
    ReinforcementInfo,
    decode_record,
    read_info,
    translate_side,
)
from ablate.core.data.tar_index import IndexedShards


class DataLossWarning(UserWarning):
    """Samples were skipped because their shard is damaged or they have no match."""


@dataclass(frozen=True)
class TeacherLayout:
    """How the stored vectors split into teachers and at which multipliers their softmaxes are taken."""

    dims: list[int]
    logit_scales: list[float]

    @property
    def width(self) -> int:
        return sum(self.dims)


def reinforcement_shards(root: Path, split: str) -> list[Path]:
    """The shard files of a reinforcement folder's split (ours: `SPLIT/*.tar`; else every tar below root)."""
    folder = root / split if (root / split).is_dir() else root
    shards = sorted(folder.glob("*.tar"))
    if not shards:
        raise FileNotFoundError(f"data.reinforcement: no .tar shards in {folder}")
    return shards


def check_reinforcement_folder(root: Path) -> None:
    """What a run can check of a reinforcement folder before it builds anything: it exists and holds shards of
    its recorded split. Opening the shards is the store's job, at the start of training."""
    if not root.is_dir():
        raise FileNotFoundError(f"data.reinforcement: {root} is not a folder (run `ablate reinforce` first)")
    info = read_info(root)
    reinforcement_shards(root, info.split if info else "train")


def teacher_layout(
    info: ReinforcementInfo | None,
    dims: list[int] | None,
    scales: list[float] | None,
    stored_width: int,
    where: str,
) -> TeacherLayout:
    """Configured widths/scales, else the recorded ones, else one teacher of the stored width at 100."""
    dims = dims or (info.teacher_dims if info else [stored_width])
    scales = scales or (info.teacher_logit_scales if info else [100.0] * len(dims))
    if sum(dims) != stored_width:
        raise ConfigError(
            f"{where} stores {stored_width}-wide teacher embeddings, but the configured teachers add up to "
            f"{sum(dims)} (loss.teacher_dims={dims}): these shards were made by other teachers"
        )
    return TeacherLayout(list(dims), list(scales))


class ReinforcementStore:
    """uid -> reinforced record for the training split, over damaged-shard-tolerant indexes."""

    def __init__(self, root: Path, split: str = "train") -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"data.reinforcement: {root} is not a folder (run `ablate reinforce` first)")
        self.info = read_info(self.root)
        self.translate_side = translate_side(self.info)  # how its records' Translate magnitudes read
        paths = reinforcement_shards(self.root, self.info.split if self.info else split)
        expected = self.info.shards if self.info else {}
        self.shards = IndexedShards(paths, on_damage=self._damaged, required=(("json",), EMBEDDING_KEYS))
        self.lost = self._count_lost(paths, expected)
        self.rows = {self.shards.uid(index): index for index in range(len(self.shards))}
        if not self.rows:
            raise ConfigError(f"data.reinforcement: {root} holds no readable samples")
        first = self.record(0)
        self.width = first.image_emb.shape[1]
        self.augmentations, self.synthetic = first.num_augmentations, len(first.syn_text)

    def _damaged(self, path: Path, message: str) -> None:
        warnings.warn(f"reinforced shard {path}: {message}", DataLossWarning, stacklevel=2)

    def _count_lost(self, paths: list[Path], expected: dict[str, int]) -> int:
        found: dict[str, int] = {}
        for location in self.shards.samples:
            name = paths[location.shard].name
            found[name] = found.get(name, 0) + 1
        lost = 0
        for path in paths:
            if path.name in expected and found.get(path.name, 0) < expected[path.name]:
                missing = expected[path.name] - found.get(path.name, 0)
                lost += missing
                warnings.warn(
                    f"reinforced shard {path}: {missing} of {expected[path.name]} recorded samples unreadable, skipped",
                    DataLossWarning,
                    stacklevel=2,
                )
        return lost

    def __contains__(self, uid: str) -> bool:
        return uid in self.rows

    def record(self, index: int) -> ReinforcedRecord:
        return decode_record(self.shards[index])

    def sample(self, index: int) -> dict:
        """The raw sample (bytes per member), e.g. to read an image stored beside the embeddings."""
        return self.shards[index]

    def layout(self, dims: list[int] | None, scales: list[float] | None) -> TeacherLayout:
        return teacher_layout(self.info, dims, scales, self.width, f"data.reinforcement {self.root}")
