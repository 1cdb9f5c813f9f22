"""Random access into webdataset tar shards.

Streaming readers cannot restart at an exact sample, but a checkpointed run must resume at exactly the batch
it stopped at. Scanning the tar headers once (cheap: data blocks are skipped) gives the byte range of every
member, so any sample can be read with one seek and the sample order can be a seeded permutation.
"""

from __future__ import annotations

import os
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO


@dataclass(frozen=True)
class SampleLocation:
    shard: int
    key: str
    members: dict[str, tuple[int, int]]  # extension -> (byte offset, size)


def split_member_name(name: str) -> tuple[str, str]:
    """webdataset's convention: key = path up to the basename's first dot, the rest = extension."""
    directory, _, base = name.rpartition("/")
    stem, dot, extension = base.partition(".")
    if not dot:
        raise ValueError(f"tar member {name!r} has no extension, so it belongs to no field")
    return (f"{directory}/{stem}" if directory else stem), extension


def index_shard(path: Path, shard: int) -> list[SampleLocation]:
    """All samples of one shard, in file order."""
    samples: dict[str, dict[str, tuple[int, int]]] = {}
    with tarfile.open(path, "r:") as archive:
        for member in archive:
            if not member.isfile():
                continue
            key, extension = split_member_name(member.name)
            samples.setdefault(key, {})[extension] = (member.offset_data, member.size)
    return [SampleLocation(shard, key, members) for key, members in samples.items()]


class IndexedShards:
    """A list-like view of the samples in a set of tar shards: `shards[i]` -> {"__key__": ..., ext: bytes}."""

    def __init__(self, paths: list[Path]) -> None:
        if not paths:
            raise ValueError("no shards given")
        missing = [str(p) for p in paths if not Path(p).is_file()]
        if missing:
            raise FileNotFoundError(f"shard(s) not found: {', '.join(missing[:5])}")
        self.paths = [Path(p) for p in paths]
        self.samples = [loc for i, p in enumerate(self.paths) for loc in index_shard(p, i)]
        self._handles: dict[int, BinaryIO] = {}
        self._owner_pid = os.getpid()

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, bytes | str]:
        location = self.samples[index]
        handle = self._handle(location.shard)
        sample: dict[str, bytes | str] = {"__key__": location.key}
        for extension, (offset, size) in location.members.items():
            handle.seek(offset)
            sample[extension] = handle.read(size)
        return sample

    def _handle(self, shard: int) -> BinaryIO:
        if os.getpid() != self._owner_pid:  # a forked loader worker must not share file offsets with its parent
            self._handles, self._owner_pid = {}, os.getpid()
        if shard not in self._handles:
            self._handles[shard] = open(self.paths[shard], "rb")  # noqa: SIM115 -- kept open for reuse
        return self._handles[shard]

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_handles": {}}
