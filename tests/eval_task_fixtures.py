"""Evaluation folders in the layouts researchers bring, written from scratch with tiny images: an ImageFolder
(`val/<wnid>/*.JPEG`) and clip_benchmark webdatasets written the way its `convert_dataset` writes them
(webdataset's ShardWriter, keys `s%07d`, an image member and an integer `cls`, `<split>/nshards.txt`,
`classnames.txt`, `zeroshot_classification_templates.txt`, `dataset_type.txt` for retrieval)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import webdataset as wds
from PIL import Image

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}


def picture(colour: tuple[int, int, int], seed: int, size: int = 40) -> Image.Image:
    """A noisy flat-coloured square: different pixels per seed, the same class look."""
    noise = np.random.default_rng(seed).integers(-25, 25, (size, size, 3))
    return Image.fromarray(np.clip(np.array(colour) + noise, 0, 255).astype(np.uint8))


def encoded(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **({"lossless": True} if fmt == "webp" else {}))
    return buffer.getvalue()


def write_imagefolder(root: Path, per_class: int = 3) -> tuple[Path, list[str]]:
    """`root/val/<wnid>/*.JPEG`, wnids sorted as the colour names are; returns the folder and the names."""
    names = list(COLOURS)
    for index, name in enumerate(names):
        folder = root / "val" / f"n0000000{index}"
        folder.mkdir(parents=True)
        for item in range(per_class):
            picture(COLOURS[name], 100 * index + item).save(folder / f"ILSVRC2012_val_{index}{item}.JPEG", "JPEG")
    return root / "val", names


def write_clip_benchmark(root: Path, labels: list[int], classnames: list[str], templates: list[str]) -> Path:
    """A classification dataset in clip_benchmark's layout, 4 samples per shard (so several shards)."""
    (root / "test").mkdir(parents=True)
    (root / "classnames.txt").write_text("\n".join(classnames) + "\n")
    (root / "zeroshot_classification_templates.txt").write_text("\n".join(templates) + "\n")
    with wds.ShardWriter(str(root / "test" / "%d.tar"), maxcount=4, verbose=0) as sink:
        for index, label in enumerate(labels):
            colour = list(COLOURS.values())[label % len(COLOURS)]
            sink.write({"__key__": f"s{index:07d}", "webp": encoded(picture(colour, index), "webp"), "cls": label})
        shards = sink.shard
    (root / "test" / "nshards.txt").write_text(f"{shards}\n")
    return root


def write_clip_benchmark_retrieval(root: Path, captions: list[list[str]]) -> Path:
    """A retrieval dataset in clip_benchmark's layout: `txt` holds an image's captions, one per line."""
    (root / "test").mkdir(parents=True)
    (root / "dataset_type.txt").write_text("retrieval\n")
    with wds.ShardWriter(str(root / "test" / "%d.tar"), maxcount=8, verbose=0) as sink:
        for index, lines in enumerate(captions):
            colour = list(COLOURS.values())[index % len(COLOURS)]
            sink.write(
                {"__key__": f"s{index:07d}", "jpg": encoded(picture(colour, index), "JPEG"), "txt": "\n".join(lines)}
            )
        shards = sink.shard
    (root / "test" / "nshards.txt").write_text(f"{shards}\n")
    return root
