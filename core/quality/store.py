"""Scores for a whole reinforced dataset, kept beside its shards as `quality.parquet`, and subset selection.

Why parquet: one row per sample (uid, score columns) for 12.8M samples is ~0.3 GB as JSON but a few tens of MB
as columnar parquet, loads in one call with pandas, and keeps the float64 scores exact. The file also records
how it was made (teacher dims, reduction, shard count) in its metadata, so a stale file is detectable.
"""

from __future__ import annotations

import fcntl
import json
from pathlib import Path

import numpy as np
import pandas as pd

from ablate.core.config.base import ConfigError
from ablate.core.data.reinforced_format import INFO_FILE, ReinforcementInfo, decode_record, read_info
from ablate.core.data.tar_index import IndexedShards
from ablate.core.quality.scores import BASE_SCORES, SCORE_NAMES, Reduction, combine, record_scores

QUALITY_FILE = "quality.parquet"
_METADATA_KEY = b"ablate.quality"


def load_reinforcement_info(folder: Path) -> ReinforcementInfo:
    """`reinforcement.json`, which the scores need (teacher widths): its absence is an error here."""
    info = read_info(Path(folder))
    if info is None:
        raise FileNotFoundError(f"{folder}: no {INFO_FILE}; is this a reinforced dataset folder?")
    return info


def reinforced_shard_paths(folder: Path, info: ReinforcementInfo) -> list[Path]:
    """The finished shards `reinforcement.json` lists, else every *.tar; they live in the split's subfolder
    (`ablate reinforce` writes `train/`) or, for flat layouts, in the folder itself."""
    folder = Path(folder)
    if (folder / info.split).is_dir():
        folder = folder / info.split
    paths = [folder / name for name in sorted(info.shards)] or sorted(folder.glob("*.tar"))
    if not paths:
        raise FileNotFoundError(f"{folder}: {INFO_FILE} lists no shards and the folder has no *.tar files")
    return paths


def score_reinforced(folder: Path | str, agreement: Reduction = "mean") -> pd.DataFrame:
    """One row per record of the reinforced shards in `folder`: uid and every score in `SCORE_NAMES`."""
    folder = Path(folder)
    info = load_reinforcement_info(folder)
    shards = IndexedShards(reinforced_shard_paths(folder, info))
    rows = []
    for index in range(len(shards)):
        sample = shards[index]
        try:
            record = decode_record(sample)
            scores = record_scores(record.image_emb, record.text_emb, info.teacher_dims, agreement)
        except (KeyError, ValueError) as err:
            where = shards.paths[shards.samples[index].shard]
            raise ConfigError(f"{where}: sample {sample['__key__']!r}: {err}") from None
        rows.append({"uid": record.uid, **scores})
    frame = pd.DataFrame(rows)
    if frame["uid"].duplicated().any():
        duplicates = frame.loc[frame["uid"].duplicated(), "uid"].head(3).tolist()
        raise ConfigError(f"{folder}: uids must be unique across shards; repeated: {duplicates}")
    frame = frame.assign(**combine(frame["clip_score"].to_numpy(), frame["caption_agreement"].to_numpy()))
    frame.attrs["provenance"] = {
        "teacher_dims": info.teacher_dims,
        "teachers": [t.name for t in info.teachers],
        "agreement": agreement,
        "records": len(frame),
    }
    return frame


def write_scores(frame: pd.DataFrame, path: Path | str) -> Path:
    """Write `frame` as parquet with its provenance in the schema metadata; atomically (tmp + rename)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    table = pa.Table.from_pandas(frame, preserve_index=False)
    metadata = {**(table.schema.metadata or {}), _METADATA_KEY: json.dumps(frame.attrs.get("provenance", {}))}
    partial = path.with_name(path.name + ".partial")
    pq.write_table(table.replace_schema_metadata(metadata), partial)
    partial.replace(path)
    return path


def compute_quality(folder: Path | str, agreement: Reduction = "mean", out: Path | str | None = None) -> Path:
    """Score a reinforced dataset and write `quality.parquet` beside its shards (or to `out`)."""
    folder = Path(folder)
    return write_scores(score_reinforced(folder, agreement), out or folder / QUALITY_FILE)


def load_scores(path: Path | str) -> pd.DataFrame:
    """A `quality.parquet` file, or a reinforced folder holding one."""
    import pyarrow.parquet as pq

    path = Path(path)
    if path.is_dir():
        path = path / QUALITY_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no quality scores (run `ablate data quality` on the reinforced folder)")
    table = pq.read_table(path)
    frame = table.to_pandas()
    missing = {"uid", *BASE_SCORES} - set(frame.columns)
    if missing:
        raise ConfigError(f"{path}: not a quality file, missing columns {sorted(missing)}")
    raw = (table.schema.metadata or {}).get(_METADATA_KEY)
    frame.attrs["provenance"] = json.loads(raw) if raw else {}
    return frame


def check_score_name(frame: pd.DataFrame, score: str, where: str) -> None:
    if score not in frame.columns or score == "uid":
        names = [c for c in frame.columns if c != "uid"]
        raise ConfigError(f"{where}: unknown score {score!r}; available: {names}")


def ranked_keep(frame: pd.DataFrame, score: str, keep_fraction: float, where: str = "quality") -> pd.Series:
    """Boolean mask of the kept rows: the ceil(keep_fraction·n) highest scores, ties broken by uid.

    The tie-break makes the subset a pure function of the file (pandas' sort is stable, uids are unique), so
    two trials with the same parameters train on the same samples. NaN scores rank last.
    """
    check_score_name(frame, score, where)
    if not 0.0 < keep_fraction <= 1.0:
        raise ConfigError(f"{where}: keep_fraction must be in (0, 1], got {keep_fraction!r}")
    keep_count = int(np.ceil(keep_fraction * len(frame) - 1e-9))
    order = frame.sort_values([score, "uid"], ascending=[False, True], na_position="last", kind="mergesort").index
    mask = pd.Series(False, index=frame.index)
    mask.loc[order[:keep_count]] = True
    return mask


def select_uids(scores_path: Path | str, score: str, keep_fraction: float) -> set[str]:
    """The uids a run trains on: the top `keep_fraction` of the dataset by `score` (see `ranked_keep`).

    `scores_path` is a `quality.parquet` file or the reinforced folder holding it; `score` one of its columns
    (`SCORE_NAMES`). keep_fraction = 1 keeps everything.
    """
    frame = load_scores(scores_path)
    return set(frame.loc[ranked_keep(frame, score, keep_fraction, str(scores_path)), "uid"])


def shared_quality_subset(folder: Path, score: str, keep_fraction: float) -> set[str]:
    """`select_uids` on a reinforced folder whose scores are computed on first use, once: parallel trials
    wait on a lock while one of them writes `quality.parquet` beside the shards."""
    scores = folder / QUALITY_FILE
    if not scores.is_file():
        with open(folder / f"{QUALITY_FILE}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not scores.is_file():
                compute_quality(folder)
    return select_uids(scores, score, keep_fraction)


__all__ = [
    "QUALITY_FILE",
    "SCORE_NAMES",
    "compute_quality",
    "load_scores",
    "ranked_keep",
    "score_reinforced",
    "select_uids",
    "shared_quality_subset",
    "write_scores",
]
