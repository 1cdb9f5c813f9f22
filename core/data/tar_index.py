"""Random access into webdataset tar shards.

Streaming readers cannot restart at an exact sample, but a checkpointed run must resume at exactly the batch
it stopped at. Scanning the tar headers once (cheap: data blocks are skipped) gives the byte range of every
member, so any sample can be read with one seek and the sample order can be a seeded permutation.
"""

from __future__ import annotations

import hashlib
import json
import os
import tarfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from ablate.core.data.bundled import cache_dir

INDEX_CACHE = "shard_index"  # under the ablate cache: one JSON index per shard version
_indexes: dict[tuple[str, int, int, int], tuple[list[tuple[str, dict[str, list[int]]]], str | None]] = {}


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
    """All samples of one shard, in file order. A truncated shard raises `ShardDamaged` carrying the samples
    whose members all lie inside the file, so a tolerant reader can keep them."""
    samples: dict[str, dict[str, tuple[int, int]]] = {}
    size = path.stat().st_size
    problem = None
    try:
        with tarfile.open(path, "r:") as archive:
            for member in archive:
                if not member.isfile():
                    continue
                key, extension = split_member_name(member.name)
                samples.setdefault(key, {})[extension] = (member.offset_data, member.size)
    except (tarfile.TarError, EOFError, OSError) as err:
        problem = f"unreadable after {sum(len(m) for m in samples.values())} members ({type(err).__name__}: {err})"
    intact = {key: members for key, members in samples.items() if all(o + n <= size for o, n in members.values())}
    if len(intact) < len(samples):
        problem = problem or f"truncated at byte {size}"
    locations = [SampleLocation(shard, key, members) for key, members in intact.items()]
    if problem:
        raise ShardDamaged(problem, locations)
    return locations


def cached_index_shard(path: Path, shard: int) -> list[SampleLocation]:
    """`index_shard`, scanned once per shard version and then read back: every trial of a study (and every run
    on these shards) indexes the same files, and scanning the tar headers of 20k samples takes seconds to a
    minute on a loaded machine. The index is kept in this process (a forked warm worker inherits it) and as
    JSON under the ablate cache, keyed by the shard's resolved path, inode, size and modification time, so a
    rewritten or truncated shard is scanned again."""
    stat = path.stat()
    resolved = str(path.resolve())
    version = (resolved, stat.st_ino, stat.st_size, stat.st_mtime_ns)
    if version not in _indexes:
        name = hashlib.sha256(repr(version).encode()).hexdigest()[:24]
        stored = cache_dir() / INDEX_CACHE / f"{name}.json"
        try:
            record = json.loads(stored.read_text())
            _indexes[version] = ([(key, members) for key, members in record["samples"]], record["problem"])
        except (OSError, ValueError, KeyError, TypeError):
            _indexes[version] = _scan(path)
            _store(stored, {"shard": resolved, "samples": _indexes[version][0], "problem": _indexes[version][1]})
    samples, problem = _indexes[version]
    locations = [
        SampleLocation(shard, key, {ext: (offset, size) for ext, (offset, size) in members.items()})
        for key, members in samples
    ]
    if problem:
        raise ShardDamaged(problem, locations)
    return locations


def _scan(path: Path) -> tuple[list[tuple[str, dict[str, list[int]]]], str | None]:
    """One shard's index as plain data: (key, {extension: [offset, size]}) pairs and the damage, if any."""
    try:
        locations, problem = index_shard(path, 0), None
    except ShardDamaged as damage:
        locations, problem = damage.intact, str(damage)
    return [(loc.key, {ext: list(span) for ext, span in loc.members.items()}) for loc in locations], problem


def _store(path: Path, record: dict) -> None:
    """Written atomically (a parallel trial may be reading it); a read-only cache only costs the next scan."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        temporary.write_text(json.dumps(record))
        temporary.replace(path)
    except OSError:
        pass


class ShardDamaged(Exception):
    def __init__(self, message: str, intact: list[SampleLocation]) -> None:
        super().__init__(message)
        self.intact = intact


class IndexedShards:
    """A list-like view of the samples in a set of tar shards: `shards[i]` -> {"__key__": ..., ext: bytes}."""

    def __init__(
        self,
        paths: list[Path],
        on_damage: Callable[[Path, str], None] | None = None,
        required: Sequence[Sequence[str]] = (),
    ) -> None:
        """`on_damage(path, message)`: keep the intact samples of a damaged shard and report it, instead of
        raising. `required`: groups of member extensions of which a sample needs at least one each; samples
        missing one (e.g. cut off by truncation) are skipped and reported through `on_damage`."""
        if not paths:
            raise ValueError("no shards given")
        missing = [str(p) for p in paths if not Path(p).is_file()]
        if missing:
            raise FileNotFoundError(f"shard(s) not found: {', '.join(missing[:5])}")
        self.paths = [Path(p) for p in paths]
        self.samples = []
        for shard, path in enumerate(self.paths):
            try:
                locations = cached_index_shard(path, shard)
            except ShardDamaged as damage:
                if on_damage is None:
                    raise ValueError(f"shard {path} is damaged: {damage}") from None
                on_damage(path, f"{damage}; kept its {len(damage.intact)} intact samples")
                locations = damage.intact
            complete = [loc for loc in locations if all(set(group) & loc.members.keys() for group in required)]
            if len(complete) < len(locations) and on_damage is not None:
                on_damage(path, f"{len(locations) - len(complete)} samples lack required members, skipped")
            self.samples.extend(complete)
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

    def uid(self, index: int) -> str:
        """The sample's join key: its `json` uid when it has one, else its key (DataComp and ours have uids)."""
        location = self.samples[index]
        if "json" in location.members:
            offset, size = location.members["json"]
            handle = self._handle(location.shard)
            handle.seek(offset)
            meta = json.loads(handle.read(size))
            if isinstance(meta, dict) and "uid" in meta:
                return str(meta["uid"])
        return location.key

    def _handle(self, shard: int) -> BinaryIO:
        if os.getpid() != self._owner_pid:  # a forked loader worker must not share file offsets with its parent
            self._handles, self._owner_pid = {}, os.getpid()
        if shard not in self._handles:
            self._handles[shard] = open(self.paths[shard], "rb")  # noqa: SIM115 -- kept open for reuse
        return self._handles[shard]

    def close(self) -> None:
        for handle in self._handles.values():
            handle.close()
        self._handles = {}

    def __enter__(self) -> IndexedShards:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_handles": {}}
