"""Tests for the bundled synthetic benchmark: determinism, on-disk layout, caption correctness, caching."""

from __future__ import annotations

import hashlib
import io
import json
import math
import re
from pathlib import Path

import pytest
import webdataset as wds
from PIL import Image

from ablate.core.data import shapes
from ablate.core.data.shapes import COLOURS, SHAPES, generate_shapes, render_sample

SMALL = {"train": 60, "val": 40, "samples_per_shard": 25, "image_size": 32}


def _words(text: str) -> set[str]:
    # Whole words only: "textured" must not count as "red".
    return set(re.findall(r"[a-z]+", text.lower()))


def _digests(out: Path, manifest: dict) -> dict[str, str]:
    shards = [s for split in manifest["splits"].values() for s in split["shards"]]
    return {s: hashlib.sha256((out / s).read_bytes()).hexdigest() for s in shards}


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("shapes")
    return out, generate_shapes(out, seed=3, **SMALL)


@pytest.fixture(scope="module")
def many() -> list[dict]:
    """2000 val samples at the default noisy fraction, shared by the statistical and caption tests."""
    return [render_sample(0, "val", i, image_size=32) for i in range(2000)]


def test_render_sample_fields_and_image() -> None:
    sample = render_sample(0, "train", 7)
    assert sample["__key__"] == "train-0000007"
    image = Image.open(io.BytesIO(sample["png"]))
    assert image.format == "PNG" and image.mode == "RGB" and image.size == (64, 64)
    meta = sample["json"]
    assert set(meta) == {"uid", "objects", "largest", "alt_noisy", "alt_kind", "background"}
    assert 1 <= len(meta["objects"]) <= 3
    for obj in meta["objects"]:
        assert obj["shape"] in SHAPES and obj["colour"] in COLOURS and obj["size"] in ("small", "large")
        assert 0 < obj["x"] < 1 and 0 < obj["y"] < 1
    first = meta["objects"][0]
    assert meta["largest"] == {k: first[k] for k in ("shape", "colour", "size")}
    assert meta["alt_noisy"] == (meta["alt_kind"] != "clean")
    assert len(sample["syn.json"]["syn_text"]) == 5


def test_render_sample_is_deterministic_and_seed_dependent() -> None:
    a, b = render_sample(1, "val", 5), render_sample(1, "val", 5)
    assert a == b
    assert render_sample(2, "val", 5)["png"] != a["png"]
    assert render_sample(1, "train", 5)["png"] != a["png"]
    assert render_sample(1, "val", 6)["png"] != a["png"]


def test_noisy_fraction_changes_only_the_alt_text() -> None:
    clean = [render_sample(0, "train", i, noisy_fraction=0.0) for i in range(30)]
    noisy = [render_sample(0, "train", i, noisy_fraction=1.0) for i in range(30)]
    assert all(s["json"]["alt_kind"] == "clean" for s in clean)
    assert all(s["json"]["alt_noisy"] for s in noisy)
    assert [s["png"] for s in clean] == [s["png"] for s in noisy]
    assert [s["syn.json"] for s in clean] == [s["syn.json"] for s in noisy]


def test_noisy_fraction_statistics(many: list[dict]) -> None:
    kinds = [s["json"]["alt_kind"] for s in many]
    n = len(kinds)
    # Binomial std at p=0.3, n=2000 is ~0.01; 0.04 is four sigma.
    assert abs(sum(k != "clean" for k in kinds) / n - 0.3) < 0.04
    assert abs(kinds.count("uninformative") / n - 0.15) < 0.035
    assert abs(kinds.count("wrong") / n - 0.15) < 0.035


def test_synthetic_captions_describe_the_largest_object(many: list[dict]) -> None:
    for s in many:
        largest = s["json"]["largest"]
        captions = s["syn.json"]["syn_text"]
        assert len(set(captions)) == 5
        for caption in captions:
            words = _words(caption)
            assert {largest["shape"], largest["colour"], largest["size"]} <= words, (caption, largest)


def test_alt_text_kinds(many: list[dict]) -> None:
    for s in many:
        largest, kind, words = s["json"]["largest"], s["json"]["alt_kind"], _words(s["txt"])
        assert s["txt"].strip()
        if kind == "clean":
            assert largest["shape"] in words, (s["txt"], largest)
        elif kind == "wrong":
            assert not (largest["shape"] in words and largest["colour"] in words), (s["txt"], largest)
            assert words & set(SHAPES) and words & set(COLOURS), s["txt"]
        else:
            assert not words & (set(SHAPES) | set(COLOURS)), s["txt"]


def test_every_class_is_the_largest_object_in_val(many: list[dict]) -> None:
    first = many[:400]
    assert {s["json"]["largest"]["shape"] for s in first} == set(SHAPES)
    assert {s["json"]["largest"]["colour"] for s in first} == set(COLOURS)


def test_manifest_structure_and_counts(small: tuple[Path, dict]) -> None:
    out, manifest = small
    assert json.loads((out / "manifest.json").read_text()) == manifest
    assert manifest["name"] == "shapes" and manifest["version"] == 1
    assert (manifest["seed"], manifest["image_size"], manifest["noisy_fraction"]) == (3, 32, 0.3)
    for split, n in (("train", 60), ("val", 40)):
        info = manifest["splits"][split]
        assert info["num_samples"] == n
        assert info["shards"] == [f"{split}/shapes-{split}-{k:06d}.tar" for k in range(math.ceil(n / 25))]
        assert all((out / s).is_file() for s in info["shards"])
    shape, colour = manifest["zero_shot"]["shape"], manifest["zero_shot"]["colour"]
    assert shape["classnames"] == list(SHAPES) and len(SHAPES) == 12
    assert colour["classnames"] == list(COLOURS) and len(COLOURS) == 10
    assert (shape["label_key"], colour["label_key"]) == ("largest.shape", "largest.colour")
    for task in (shape, colour):
        assert 5 <= len(task["templates"]) <= 8 and all("{}" in t for t in task["templates"])
    assert manifest["retrieval"] == {"split": "val", "caption": "syn0"}
    assert not list(out.rglob("*.partial"))


def test_shards_are_readable_by_webdataset(small: tuple[Path, dict]) -> None:
    out, manifest = small
    for split, info in manifest["splits"].items():
        urls = [str(out / s) for s in info["shards"]]
        samples = list(wds.WebDataset(urls, shardshuffle=False).decode("pil"))
        assert [s["__key__"] for s in samples] == [f"{split}-{i:07d}" for i in range(info["num_samples"])]
        for s in samples:
            assert {"png", "txt", "json", "syn.json"} <= set(s)
            assert s["png"].mode == "RGB" and s["png"].size == (32, 32)
            assert s["json"]["largest"]["shape"] in SHAPES
            assert isinstance(s["txt"], str) and len(s["syn.json"]["syn_text"]) == 5
        expected = render_sample(3, split, 0, image_size=32)
        assert samples[0]["txt"] == expected["txt"] and samples[0]["json"] == expected["json"]


def test_generation_is_bit_identical_across_runs_and_workers(small: tuple[Path, dict], tmp_path: Path) -> None:
    out, manifest = small
    again = generate_shapes(tmp_path / "again", seed=3, workers=2, **SMALL)
    assert again == manifest
    assert _digests(tmp_path / "again", again) == _digests(out, manifest)
    other = generate_shapes(tmp_path / "other", seed=4, **SMALL)
    assert set(_digests(tmp_path / "other", other).values()).isdisjoint(_digests(out, manifest).values())


def test_cache_reuse_and_mismatch(small: tuple[Path, dict], monkeypatch: pytest.MonkeyPatch) -> None:
    out, manifest = small

    def must_not_write(task: tuple) -> int:
        raise AssertionError(f"cache hit should not rewrite {task[0]}")

    monkeypatch.setattr(shapes, "_write_shard", must_not_write)
    assert generate_shapes(out, seed=3, **SMALL) == manifest
    with pytest.raises(ValueError, match="seed"):
        generate_shapes(out, seed=9, **SMALL)
    with pytest.raises(ValueError, match="noisy_fraction"):
        generate_shapes(out, seed=3, **{**SMALL, "noisy_fraction": 0.5})
    with pytest.raises(ValueError, match="train"):
        generate_shapes(out, seed=3, **{**SMALL, "train": 61})


def test_interrupted_run_is_regenerated(tmp_path: Path) -> None:
    """A shard missing behind a valid manifest (or no manifest at all) means regenerate, not trust."""
    manifest = generate_shapes(tmp_path, train=3, val=2, image_size=16)
    shard = tmp_path / manifest["splits"]["train"]["shards"][0]
    before = shard.read_bytes()
    shard.unlink()
    assert generate_shapes(tmp_path, train=3, val=2, image_size=16) == manifest
    assert shard.read_bytes() == before


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"noisy_fraction": 1.5}, "noisy_fraction"),
        ({"noisy_fraction": -0.1}, "noisy_fraction"),
        ({"image_size": 8}, "image_size"),
        ({"train": 0}, "train"),
        ({"val": 0}, "val"),
        ({"samples_per_shard": 0}, "samples_per_shard"),
        ({"workers": 0}, "workers"),
    ],
)
def test_generate_validates_arguments(tmp_path: Path, kwargs: dict, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        generate_shapes(tmp_path, **kwargs)
    assert not (tmp_path / "manifest.json").exists()


def test_render_sample_validates_arguments() -> None:
    with pytest.raises(ValueError, match="split"):
        render_sample(0, "test", 0)
    with pytest.raises(ValueError, match="index"):
        render_sample(0, "train", -1)
    with pytest.raises(ValueError, match="image_size"):
        render_sample(0, "train", 0, image_size=15)
