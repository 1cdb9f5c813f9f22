"""`ablate data inspect`: what a set of shards holds, read the way the trainer reads it.

Answers the questions a researcher has before pointing a study at shards from elsewhere: how many samples,
which members, embedding shapes and dtypes (bf16 `pth.gz` or fp32 `npz`), how many augmentations and synthetic
captions per sample, and the bytes each sample costs (MobileCLIP Tab 16 reasons in exactly these units).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from ablate.core.data.reinforced_format import decode_param_aug, stored_embeddings
from ablate.core.data.tar_index import IndexedShards


def shard_files(paths: list[Path]) -> list[Path]:
    """Tar files named directly or found below named folders, in a stable order."""
    files: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            files.extend(sorted(path.rglob("*.tar")))
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(f"{path}: no such shard or folder")
    if not files:
        raise FileNotFoundError(f"no .tar shards in {', '.join(map(str, paths))}")
    return files


def inspect_shards(paths: list[Path]) -> dict:
    """Summary of every sample in the shards (all are read: damaged ones are reported, not guessed)."""
    files = shard_files(paths)
    damaged: list[str] = []
    shards = IndexedShards(files, on_damage=lambda path, message: damaged.append(f"{path}: {message}"))
    members: Counter[str] = Counter()
    member_bytes: Counter[str] = Counter()
    embeddings: Counter[str] = Counter()
    augmentations: Counter[int] = Counter()
    synthetic: Counter[int] = Counter()
    for index in range(len(shards)):
        location = shards.samples[index]
        for extension, (_, size) in location.members.items():
            members[extension] += 1
            member_bytes[extension] += size
        sample = shards[index]
        if "pth.gz" in sample or "npz" in sample:
            for name, tensor in stored_embeddings(sample).items():
                embeddings[f"{name} {list(tensor.shape)} {str(tensor.dtype).removeprefix('torch.')}"] += 1
        if "paug.json" in sample:
            augmentations[len(decode_param_aug(sample))] += 1
        if "syn.json" in sample:
            synthetic[len(json.loads(sample["syn.json"])["syn_text"])] += 1
    shards.close()
    count = len(shards)
    return {
        "shards": len(files),
        "samples": count,
        "damaged": damaged,
        "members": dict(sorted(members.items())),
        "embeddings": dict(sorted(embeddings.items())),
        "augmentations_per_sample": dict(sorted(augmentations.items())),
        "synthetic_captions_per_sample": dict(sorted(synthetic.items())),
        "bytes_per_sample": {name: round(total / count, 1) for name, total in sorted(member_bytes.items())}
        if count
        else {},
        "total_bytes_per_sample": round(sum(member_bytes.values()) / count, 1) if count else 0.0,
        "file_bytes": sum(path.stat().st_size for path in files),
    }
