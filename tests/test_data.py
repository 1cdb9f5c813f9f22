"""Indexed shard access, the step-addressed batch order and the datasets built on them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import webdataset as wds

from ablate.core.config.sections import DataConfig
from ablate.core.data.dataset import EvalDataset
from ablate.core.data.manifest import load_manifest
from ablate.core.data.sampler import StepBatchSampler
from ablate.core.data.tar_index import IndexedShards, split_member_name
from ablate.core.data.train_dataset import TrainDataset
from ablate.core.models.factory import create_model


def test_member_names_follow_webdataset() -> None:
    assert split_member_name("train-0000001.syn.json") == ("train-0000001", "syn.json")
    assert split_member_name("dir/a.b/key.png") == ("dir/a.b/key", "png")
    with pytest.raises(ValueError, match="no extension"):
        split_member_name("README")


def test_random_access_matches_streaming_read(shapes_root: Path) -> None:
    manifest = load_manifest(shapes_root)
    paths = manifest.shard_paths("val")
    streamed = list(wds.WebDataset([str(p) for p in paths], shardshuffle=False))
    indexed = IndexedShards(paths)
    assert len(indexed) == len(streamed) == manifest.splits["val"].num_samples
    for position in (0, 7, len(streamed) - 1):
        sample = indexed[position]
        assert sample["__key__"] == streamed[position]["__key__"]
        for extension in ("png", "txt", "json", "syn.json"):
            assert sample[extension] == streamed[position][extension]


def test_missing_shard_is_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nope\.tar"):
        IndexedShards([tmp_path / "nope.tar"])


def test_sampler_resumes_at_exactly_the_same_batches() -> None:
    full = list(StepBatchSampler(100, 8, seed=3, start_step=0, end_step=40))
    resumed = list(StepBatchSampler(100, 8, seed=3, start_step=17, end_step=40))
    assert resumed == full[17:]


def test_sampler_epochs_are_permutations_without_the_ragged_tail() -> None:
    batches = list(StepBatchSampler(100, 8, seed=0, start_step=0, end_step=24))  # 12 batches per epoch
    first, second = batches[:12], batches[12:]
    seen = [index for batch in first for index in batch]
    assert len(seen) == len(set(seen)) == 96
    assert [i for b in second for i in b] != seen  # a fresh order each epoch
    assert list(StepBatchSampler(100, 8, seed=1, start_step=0, end_step=12)) != first


def test_sampler_rejects_datasets_smaller_than_a_batch() -> None:
    with pytest.raises(ValueError, match="fewer than one batch"):
        StepBatchSampler(5, 8, seed=0, start_step=0, end_step=1)


def test_train_dataset_tokenises_the_chosen_caption(shapes_root: Path) -> None:
    manifest = load_manifest(shapes_root)
    model = create_model("tiny")
    alt = TrainDataset(manifest, model.inputs, DataConfig(captions="alt"), seed=0)
    syn = TrainDataset(manifest, model.inputs, DataConfig(captions="syn"), seed=0)
    item = alt[0]
    assert item["image"].shape == (3, 64, 64) and item["image"].dtype == torch.uint8
    assert item["tokens"].shape == (1, 32)
    expected = alt.tokenizer(alt.images[0]["txt"].decode())[0]
    assert torch.equal(item["tokens"][0], expected)
    captions = json.loads(syn.images[0]["syn.json"])["syn_text"]
    drawn = {tuple(syn[visit * len(syn)]["tokens"][0].tolist()) for visit in range(40)}  # sample 0 in 40 epochs
    assert drawn <= {tuple(syn.tokenizer(c)[0].tolist()) for c in captions}
    assert len(drawn) > 1
    assert torch.equal(syn[5]["tokens"], syn[5]["tokens"])  # a visit's caption is a pure function of (seed, visit)


def test_eval_dataset_labels_follow_the_manifest(shapes_root: Path) -> None:
    manifest = load_manifest(shapes_root)
    dataset = EvalDataset(manifest, create_model("tiny").inputs, "val", max_samples=10)
    assert len(dataset) == 10
    _, _, labels = dataset[3]
    meta = json.loads(dataset.shards[3]["json"])
    tasks = list(manifest.zero_shot.values())
    assert [task.classnames[int(label)] for task, label in zip(tasks, labels, strict=True)] == [
        meta["largest"]["shape"],
        meta["largest"]["colour"],
    ]
