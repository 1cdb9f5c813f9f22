"""Materialising a quality-filtered subset: a new dataset folder, or indices into the existing shards.

`filter_dataset` writes a self-contained dataset (manifest.json + the kept training samples, byte-for-byte, and
the matching reinforced shards) so that *any* consumer, the trainer included, uses it with no change: point
`data.root` (and `data.reinforcement`) at it. That is the CLI's output. Studies that sweep `keep_fraction`
should not write a copy per trial; they call `select_uids` + `subset_indices` and wrap the training dataset in
`torch.utils.data.Subset`, which the step sampler accepts like any dataset.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import webdataset as wds

from ablate.core.config.base import ConfigError
from ablate.core.data.manifest import load_manifest
from ablate.core.data.reinforced_format import INFO_FILE, sample_uid
from ablate.core.data.tar_index import IndexedShards
from ablate.core.quality.store import QUALITY_FILE, load_reinforcement_info, reinforced_shard_paths

REINFORCED_SUBDIR = "reinforced"


def sample_uids(shards: IndexedShards) -> list[str]:
    """The uid of every sample, in index order (reads only each sample's small `json` member)."""
    uids = []
    handles: dict[int, BinaryIO] = {}
    try:
        for location in shards.samples:
            sample: dict[str, str | bytes] = {"__key__": location.key}
            if "json" in location.members:
                if location.shard not in handles:
                    handles[location.shard] = open(shards.paths[location.shard], "rb")  # noqa: SIM115
                offset, size = location.members["json"]
                handles[location.shard].seek(offset)
                sample["json"] = handles[location.shard].read(size)
            uids.append(sample_uid(sample))
    finally:
        for handle in handles.values():
            handle.close()
    return uids


def subset_indices(shards: IndexedShards, keep_uids: set[str]) -> list[int]:
    """Indices of the samples whose uid is in `keep_uids` (ascending), for `torch.utils.data.Subset`."""
    return [index for index, uid in enumerate(sample_uids(shards)) if uid in keep_uids]


def _write_shards(
    shards: IndexedShards, indices: Iterable[int], out_dir: Path, stem: str, per_shard: int
) -> dict[str, int]:
    """Copy the chosen samples' members unchanged into `stem-000000.tar`, … under out_dir; name -> count."""
    out_dir.mkdir(parents=True, exist_ok=True)
    counts: dict[str, int] = {}
    writer, stream, current = None, None, None

    def close() -> None:
        if writer is not None:
            writer.close()
            stream.close()
            os.replace(out_dir / f"{current}.partial", out_dir / current)

    for position, index in enumerate(indices):
        if position % per_shard == 0:
            close()
            current = f"{stem}-{position // per_shard:06d}.tar"
            stream = open(out_dir / f"{current}.partial", "wb")  # noqa: SIM115 -- closed in close()
            writer = wds.TarWriter(stream, mtime=0.0, user="ablate", group="ablate", encoder=False)
            counts[current] = 0
        writer.write(shards[index])
        counts[current] += 1
    close()
    return counts


@dataclass(frozen=True)
class FilterResult:
    out: Path
    kept: int
    total: int
    reinforced: Path | None


def filter_dataset(
    data_root: Path | str,
    keep_uids: set[str],
    out: Path | str,
    *,
    split: str = "train",
    reinforced: Path | str | None = None,
    samples_per_shard: int = 1000,
    provenance: dict | None = None,
) -> FilterResult:
    """Write the samples of `split` whose uid is in `keep_uids` as a new dataset at `out`.

    Other splits are referenced by absolute path (evaluation data is never filtered, nor copied). With
    `reinforced`, its records are filtered the same way into `out/reinforced/` with a `reinforcement.json`
    whose `source` is `out`, and its quality scores are carried over for the kept uids.
    """
    data_root, out = Path(data_root).resolve(), Path(out)
    if (out / "manifest.json").exists():
        raise ConfigError(f"{out}: already holds a dataset (manifest.json); choose a new output folder")
    manifest = load_manifest(data_root)
    shards = IndexedShards(manifest.shard_paths(split))
    uids = sample_uids(shards)
    unknown = keep_uids - set(uids)
    if unknown:
        raise ConfigError(
            f"{len(unknown)} of {len(keep_uids)} uids to keep are not in {data_root} split {split!r} "
            f"(e.g. {sorted(unknown)[:3]}); were the scores computed for another dataset?"
        )
    kept = [index for index, uid in enumerate(uids) if uid in keep_uids]
    if not kept:
        raise ConfigError("the filter keeps no sample")
    counts = _write_shards(shards, kept, out / split, f"{manifest.name}-{split}", samples_per_shard)

    raw = json.loads((data_root / "manifest.json").read_text())
    raw.pop("generation", None)  # not a generated benchmark any more: the cache check must not match it
    for name, spec in raw["splits"].items():
        if name == split:
            spec.update(shards=[f"{split}/{shard}" for shard in counts], num_samples=len(kept))
        else:
            spec["shards"] = [str(path.resolve()) for path in manifest.shard_paths(name)]
    raw["filtered"] = {"source": str(data_root), "split": split, "kept": len(kept), "total": len(uids)}
    raw["filtered"].update(provenance or {})

    reinforced_out = None
    if reinforced is not None:
        reinforced_out = _filter_reinforced(Path(reinforced), keep_uids, out, samples_per_shard)
    (out / "manifest.json.partial").write_text(json.dumps(raw, indent=2) + "\n")
    os.replace(out / "manifest.json.partial", out / "manifest.json")
    return FilterResult(out, len(kept), len(uids), reinforced_out)


def _filter_reinforced(folder: Path, keep_uids: set[str], out: Path, per_shard: int) -> Path:
    info = load_reinforcement_info(folder)
    shards = IndexedShards(reinforced_shard_paths(folder, info))
    uids = sample_uids(shards)
    missing = keep_uids - set(uids)
    if missing:
        raise ConfigError(f"{folder}: {len(missing)} kept uids have no reinforced record (e.g. {sorted(missing)[:3]})")
    target = out / REINFORCED_SUBDIR
    counts = _write_shards(
        shards, [i for i, uid in enumerate(uids) if uid in keep_uids], target, "reinforced", per_shard
    )
    updated = info.model_copy(update={"source": str(out.resolve()), "shards": counts})
    (target / INFO_FILE).write_text(updated.model_dump_json(indent=2) + "\n")
    if (folder / QUALITY_FILE).is_file():
        from ablate.core.quality.store import load_scores, write_scores

        scores = load_scores(folder)
        write_scores(scores[scores["uid"].isin(keep_uids)].reset_index(drop=True), target / QUALITY_FILE)
    return target
