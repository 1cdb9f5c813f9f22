"""How well a score finds noisy captions, against ground truth (the shapes benchmark's `alt_noisy` flag).

Filtering drops the lowest-scored samples, so a sample counts as "flagged" when it falls in the dropped part.
Precision = noisy among flagged, recall = flagged among noisy. The threshold-free AUROC (probability that a
noisy sample scores below a clean one, ties counted half) summarises the whole ranking.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import rankdata

from ablate.core.config.base import ConfigError
from ablate.core.data.manifest import load_manifest
from ablate.core.data.tar_index import IndexedShards
from ablate.core.quality.store import check_score_name, ranked_keep


def noisy_labels(data_root: Path | str, split: str = "train") -> dict[str, bool]:
    """uid -> alt_noisy for every sample of a split whose `json` carries the flag (the bundled benchmark does)."""
    shards = IndexedShards(load_manifest(data_root).shard_paths(split))
    labels: dict[str, bool] = {}
    for index in range(len(shards)):
        sample = shards[index]
        meta = json.loads(sample["json"]) if "json" in sample else {}
        if "alt_noisy" in meta:
            labels[str(meta.get("uid", sample["__key__"]))] = bool(meta["alt_noisy"])
    if not labels:
        raise ConfigError(f"{data_root}: split {split!r} has no samples with an `alt_noisy` flag in their json")
    return labels


@dataclass(frozen=True)
class Detection:
    score: str
    samples: int
    noisy: int
    flagged: int
    precision: float
    recall: float
    auroc: float

    def as_dict(self) -> dict[str, float | int | str]:
        return asdict(self)


def auroc_low_is_noisy(scores: np.ndarray, noisy: np.ndarray) -> float:
    """Mann–Whitney form: P(score_noisy < score_clean) + ½·P(tie)."""
    positives, negatives = int(noisy.sum()), int((~noisy).sum())
    if positives == 0 or negatives == 0:
        return float("nan")
    ranks = rankdata(-scores)  # the lowest score gets the highest rank
    return float((ranks[noisy].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def detect_noise(
    frame: pd.DataFrame, labels: dict[str, bool], score: str, flag_fraction: float | None = None
) -> Detection:
    """Flag the lowest `flag_fraction` by `score` (default: the true noisy rate) and compare with `labels`."""
    check_score_name(frame, score, "detect_noise")
    joined = frame[frame["uid"].isin(labels.keys())].reset_index(drop=True)
    if joined.empty:
        raise ConfigError("detect_noise: no scored uid has a ground-truth label (wrong data root or split?)")
    noisy = joined["uid"].map(labels).to_numpy(dtype=bool)
    fraction = noisy.mean() if flag_fraction is None else flag_fraction
    flagged = ~ranked_keep(joined, score, 1.0 - fraction).to_numpy() if fraction > 0 else np.zeros_like(noisy)
    hits = int((flagged & noisy).sum())
    return Detection(
        score=score,
        samples=len(joined),
        noisy=int(noisy.sum()),
        flagged=int(flagged.sum()),
        precision=hits / flagged.sum() if flagged.any() else float("nan"),
        recall=hits / noisy.sum() if noisy.any() else float("nan"),
        auroc=auroc_low_is_noisy(joined[score].to_numpy(dtype=float), noisy),
    )
