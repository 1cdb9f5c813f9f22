"""Caption-quality scores (hand-computed), subset selection, filtered datasets, noisy-caption detection."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset as wds
from mlflow.tracking import MlflowClient
from train_helpers import fast_config

from ablate.core.config.base import ConfigError
from ablate.core.config.loading import apply_overrides
from ablate.core.config.sections import TrainConfig
from ablate.core.data.manifest import load_manifest
from ablate.core.data.reinforced_format import (
    INFO_FILE,
    ReinforcedRecord,
    ReinforcementInfo,
    TeacherRecord,
    encode_record,
)
from ablate.core.data.shapes_render import COLOURS, SHAPES
from ablate.core.data.tar_index import IndexedShards
from ablate.core.quality.detection import detect_noise, noisy_labels
from ablate.core.quality.scores import combine, record_scores, teacher_slices
from ablate.core.quality.store import compute_quality, load_scores, ranked_keep, select_uids
from ablate.core.quality.subset import filter_dataset, subset_indices
from ablate.core.training.trainer import train

WORDS = {word: i for i, word in enumerate((*COLOURS, *SHAPES))}
TEACHER_DIMS = (24, 16)


def test_record_scores_hand_computed() -> None:
    # teacher 1 (2-d): images e1, e2; alt-text e1; synthetic e2, e1  -> clip (1 + 0)/2, agreement mean 1/2, max 1
    # teacher 2 (3-d, stored unnormalised to check the re-normalisation): images 2·e3, e3; alt e2; syn e2, e3
    #   -> clip 0, agreement mean 1/2, max 1
    image = torch.tensor([[1.0, 0, 0, 0, 2], [0, 1, 0, 0, 1]])
    text = torch.tensor([[1.0, 0, 0, 1, 0], [0, 1, 0, 1, 0], [1, 0, 0, 0, 1]])
    mean = record_scores(image, text, [2, 3])
    assert mean == pytest.approx({"clip_score": 0.25, "caption_agreement": 0.5})
    assert record_scores(image, text, [2, 3], agreement="max")["caption_agreement"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match=r"sum to 4, but the embeddings are 5 wide"):
        record_scores(image, text, [2, 2])
    assert teacher_slices([2, 3], 5) == [slice(0, 2), slice(2, 5)]


def test_combined_scores_hand_computed() -> None:
    clip, agree = np.array([1.0, 2.0, 3.0]), np.array([3.0, 3.0, 6.0])
    out = combine(clip, agree)
    z_clip = np.array([-1, 0, 1]) * np.sqrt(1.5)  # std of (1, 2, 3) is sqrt(2/3)
    z_agree = np.array([-1, -1, 2]) / np.sqrt(2)  # mean 4, std sqrt(2)
    np.testing.assert_allclose(out["combined"], (z_clip + z_agree) / 2)
    np.testing.assert_allclose(out["combined_rank"], [(1 / 3 + 0.5) / 2, (2 / 3 + 0.5) / 2, 1.0])


def test_ranked_keep_is_deterministic_with_ties() -> None:
    import pandas as pd

    frame = pd.DataFrame({"uid": ["e", "d", "c", "b", "a"], "clip_score": [0.1, 0.5, 0.5, 0.5, 0.9]})
    kept = frame.loc[ranked_keep(frame, "clip_score", 0.5), "uid"].tolist()  # ceil(2.5) = 3: a, then ties by uid
    assert sorted(kept) == ["a", "b", "c"]
    with pytest.raises(ConfigError, match=r"unknown score 'clipscore'; available: \['clip_score'\]"):
        ranked_keep(frame, "clipscore", 0.5)
    with pytest.raises(ConfigError, match="keep_fraction must be in"):
        ranked_keep(frame, "clip_score", 0.0)


def _bag(words: list[str]) -> np.ndarray:
    vector = np.zeros(len(WORDS))
    for word in words:
        if word in WORDS:
            vector[WORDS[word]] += 1.0
    return vector


def _embed(bag: np.ndarray, projections: list[np.ndarray], rng: np.random.Generator, noise: float) -> np.ndarray:
    parts = []
    for projection in projections:
        v = bag @ projection + noise * rng.standard_normal(projection.shape[1])
        parts.append(v / np.linalg.norm(v))
    return np.concatenate(parts)


def write_oracle_reinforcement(data_root: Path, out: Path, augmentations: int = 2) -> Path:
    """Reinforced shards from two 'attribute teachers': a caption or image is embedded as its bag of colour
    and shape words (from the text, or the json's true objects) through a fixed random projection per teacher,
    plus noise. Uninformative alt-text has no such words, wrong alt-text the wrong ones."""
    rng = np.random.default_rng(0)
    projections = [rng.standard_normal((len(WORDS), d)) for d in TEACHER_DIMS]
    shards = IndexedShards(load_manifest(data_root).shard_paths("train"))
    out.mkdir(parents=True)
    with wds.TarWriter(str(out / "reinforced-000000.tar"), encoder=False) as writer:
        for index in range(len(shards)):
            sample = shards[index]
            meta = json.loads(sample["json"])
            truth = _bag([w for o in meta["objects"] for w in (o["colour"], o["shape"])])
            images = [_embed(truth, projections, rng, 0.5) for _ in range(augmentations)]
            syn = json.loads(sample["syn.json"])["syn_text"]
            texts = [sample["txt"].decode(), *syn]
            text_emb = [_embed(_bag(re.findall(r"[a-z]+", t.lower())), projections, rng, 0.5) for t in texts]
            record = ReinforcedRecord(
                meta["uid"],
                syn,
                [[None]] * augmentations,
                torch.tensor(np.array(images)),
                torch.tensor(np.array(text_emb)),
            )
            writer.write(encode_record(record, sample["__key__"], "pth.gz" if index % 2 else "npz"))
    info = ReinforcementInfo(
        source=str(data_root),
        teachers=[TeacherRecord(name=f"attributes-{d}", dim=d) for d in TEACHER_DIMS],
        augmentations=augmentations,
        synthetic_captions=5,
        shards={"reinforced-000000.tar": len(shards)},
    )
    (out / INFO_FILE).write_text(info.model_dump_json())
    return out


@pytest.fixture(scope="module")
def oracle(shapes_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = write_oracle_reinforcement(shapes_root, tmp_path_factory.mktemp("oracle") / "reinforced")
    compute_quality(folder)
    return folder


def test_scores_find_noisy_captions(oracle: Path, shapes_root: Path) -> None:
    scores = load_scores(oracle)
    labels = noisy_labels(shapes_root)
    assert len(scores) == len(labels) == 1536
    assert scores.attrs["provenance"]["teacher_dims"] == list(TEACHER_DIMS)
    results = {name: detect_noise(scores, labels, name) for name in ("clip_score", "caption_agreement", "combined")}
    for result in results.values():
        assert result.flagged == result.noisy  # flag as many as there are noisy captions
        assert result.precision > 0.85 and result.recall > 0.85 and result.auroc > 0.9
    noisy_rate = np.mean(list(labels.values()))
    kept = select_uids(oracle, "combined", 1 - noisy_rate)
    assert np.mean([labels[u] for u in kept]) < 0.1 * noisy_rate


def test_filtered_dataset_is_a_usable_dataset(oracle: Path, shapes_root: Path, tmp_path: Path) -> None:
    keep = select_uids(oracle, "combined", 0.7)
    result = filter_dataset(shapes_root, keep, tmp_path / "kept", reinforced=oracle, samples_per_shard=500)
    manifest = load_manifest(tmp_path / "kept")
    train = IndexedShards(manifest.shard_paths("train"))
    assert result.kept == len(train) == len(keep) == manifest.splits["train"].num_samples == int(np.ceil(0.7 * 1536))
    assert len(manifest.splits["train"].shards) == 3
    assert manifest.shard_paths("val") == [p.resolve() for p in load_manifest(shapes_root).shard_paths("val")]
    assert {json.loads(train[i]["json"])["uid"] for i in range(len(train))} == keep
    reinforced = json.loads((result.reinforced / INFO_FILE).read_text())
    assert reinforced["source"] == str((tmp_path / "kept").resolve()) and sum(reinforced["shards"].values()) == len(
        keep
    )
    assert set(load_scores(result.reinforced)["uid"]) == keep
    original = IndexedShards(load_manifest(shapes_root).shard_paths("train"))
    indices = subset_indices(original, keep)
    assert len(indices) == len(keep) and original[indices[0]]["png"] == train[0]["png"]
    with pytest.raises(ConfigError, match="already holds a dataset"):
        filter_dataset(shapes_root, keep, tmp_path / "kept")
    with pytest.raises(ConfigError, match="1 of 2 uids to keep are not in"):
        filter_dataset(shapes_root, {"nope", next(iter(keep))}, tmp_path / "other")


@pytest.mark.slow  # trains 2 steps
def test_a_run_scores_its_data_once_and_trains_on_the_kept_fraction(
    small_shapes: Path, reinforced_small: Path, tmp_path: Path
) -> None:
    """The trainer's path to the scores (imported only when a run reduces its data): it writes
    `quality.parquet` beside the shards on first use and trains on exactly the uids `select_uids` keeps."""
    folder = tmp_path / "dr"
    shutil.copytree(reinforced_small, folder)
    tree = fast_config(tmp_path, small_shapes, {"train.steps": 2, "train.batch_size": 8, "data.num_workers": 0})
    overrides = {"data.reinforcement": str(folder), "data.keep_fraction": 0.5, "train.eval_every": 2}
    config = TrainConfig.model_validate(apply_overrides(tree, overrides | {"loss.lambda": 1.0}))
    train(config)
    kept = select_uids(folder / "quality.parquet", config.data.quality_score, 0.5)
    run_id = json.loads((Path(config.run_dir) / "mlflow_run.json").read_text())["run_id"]
    logged = MlflowClient(config.tracking.uri).get_run(run_id).data.metrics["data/train_samples"]
    assert 0 < len(kept) < 96 and logged == len(kept)
