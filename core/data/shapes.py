"""The bundled synthetic benchmark ("shapes"): deterministic webdataset shards plus a manifest.

It lets tiny CLIP models be trained and evaluated (zero-shot shape/colour, val retrieval) on CPU in minutes
with no download. Every sample is a pure function of (seed, split, index), so shards can be written in any
order or in parallel and are byte-identical across runs; the manifest records the generation arguments so a
second call with the same arguments reuses the data and a call with different ones fails loudly instead of
mixing two datasets in one directory.
"""

from __future__ import annotations

import io
import json
import math
import multiprocessing
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import webdataset as wds
from PIL import Image

from ablate.core.data.shapes_captions import clean_alt, synthetic_captions, uninformative_alt, wrong_alt
from ablate.core.data.shapes_render import COLOURS, SHAPES, render_image

__all__ = ["COLOURS", "SHAPES", "generate_shapes", "render_sample"]

VERSION = 1
SPLIT_IDS: dict[str, int] = {"train": 0, "val": 1}
# Arguments that change the bytes on disk; a cached manifest must match on all of them to be reused.
_CACHE_KEYS = ("version", "seed", "image_size", "noisy_fraction", "train", "val", "samples_per_shard")

SHAPE_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.",
    "a picture of a {}.",
    "an image of a {}.",
    "a {} shape.",
    "a drawing of a {}.",
    "a {} on a textured background.",
)
COLOUR_TEMPLATES: tuple[str, ...] = (
    "a photo of something {}.",
    "a {} object.",
    "a {} shape.",
    "an image of a {} thing.",
    "the colour {}.",
    "a {} object on a textured background.",
)


def _check_args(*, image_size: int, noisy_fraction: float, **counts: int) -> None:
    """Fail early with the argument's name: a bad value deep inside a worker pool is hard to trace."""
    if not isinstance(image_size, int) or image_size < 16:
        raise ValueError(f"image_size must be an int >= 16, got {image_size!r}")
    if not 0.0 <= noisy_fraction <= 1.0:
        raise ValueError(f"noisy_fraction must be in [0, 1], got {noisy_fraction!r}")
    for name, value in counts.items():
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")


def render_sample(seed: int, split: str, index: int, image_size: int = 64, noisy_fraction: float = 0.3) -> dict:
    """Render one sample as webdataset fields: {"__key__", "png", "txt", "json", "syn.json"}.

    Image, alt-text and synthetic captions use independent child streams of
    SeedSequence([seed, split, index]), so changing noisy_fraction changes only the alt-text, never the image.
    """
    if split not in SPLIT_IDS:
        raise ValueError(f"split must be one of {sorted(SPLIT_IDS)}, got {split!r}")
    if index < 0:
        raise ValueError(f"index must be >= 0, got {index!r}")
    _check_args(image_size=image_size, noisy_fraction=noisy_fraction)
    image_ss, alt_ss, syn_ss = np.random.SeedSequence([seed, SPLIT_IDS[split], index]).spawn(3)
    pixels, objects, background = render_image(np.random.default_rng(image_ss), image_size)

    alt_rng = np.random.default_rng(alt_ss)
    noisy = bool(alt_rng.random() < noisy_fraction)
    if not noisy:
        alt_kind, txt = "clean", clean_alt(objects, alt_rng)
    elif alt_rng.random() < 0.5:
        alt_kind, txt = "uninformative", uninformative_alt(alt_rng)
    else:
        alt_kind, txt = "wrong", wrong_alt(objects, alt_rng)

    buf = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buf, format="PNG", compress_level=6)
    key = f"{split}-{index:07d}"
    main = objects[0]
    meta = {
        "uid": f"shapes-{seed}-{key}",
        "objects": [o.record() for o in objects],
        "largest": {"shape": main.shape, "colour": main.colour, "size": main.size},
        "alt_noisy": noisy,
        "alt_kind": alt_kind,
        "background": background,
    }
    syn = {"syn_text": synthetic_captions(objects, background, np.random.default_rng(syn_ss))}
    return {"__key__": key, "png": buf.getvalue(), "txt": txt, "json": meta, "syn.json": syn}


def _encode(sample: dict) -> dict:
    """Serialise to bytes ourselves so the tar content does not depend on webdataset's encoder defaults."""
    out = {"__key__": sample["__key__"], "png": sample["png"], "txt": sample["txt"].encode("utf-8")}
    for field in ("json", "syn.json"):
        out[field] = json.dumps(sample[field], sort_keys=True, separators=(",", ":")).encode("utf-8")
    return out


def _write_shard(task: tuple[str, str, int, int, int, int, float]) -> int:
    """Write one shard under a temporary name and rename it, so a killed run never leaves a truncated tar."""
    path, split, start, stop, seed, image_size, noisy_fraction = task
    partial = f"{path}.partial"
    with open(partial, "wb") as stream:
        writer = wds.TarWriter(stream, mtime=0.0, user="ablate", group="ablate", encoder=False)
        for index in range(start, stop):
            writer.write(_encode(render_sample(seed, split, index, image_size, noisy_fraction)))
        writer.close()
    os.replace(partial, path)
    return stop - start


def _shard_plan(n: int, samples_per_shard: int, split: str) -> list[tuple[str, int, int]]:
    """(relative path, first index, stop index) for each shard of a split."""
    shards = math.ceil(n / samples_per_shard)
    return [
        (f"{split}/shapes-{split}-{k:06d}.tar", k * samples_per_shard, min(n, (k + 1) * samples_per_shard))
        for k in range(shards)
    ]


def _cached_manifest(out: Path, args: dict[str, Any]) -> dict | None:
    """The existing manifest if made with `args` and all its shards exist; raise if made with other args."""
    path = out / "manifest.json"
    if not path.exists():
        return None
    manifest = json.loads(path.read_text())
    recorded = {**manifest.get("generation", {}), "version": manifest.get("version")}
    for key in _CACHE_KEYS:
        if recorded.get(key) != args[key]:
            raise ValueError(
                f"{path} was generated with {key}={recorded.get(key)!r} but {key}={args[key]!r} was "
                "requested; use another output directory or delete this one"
            )
    shards = [s for split in manifest["splits"].values() for s in split["shards"]]
    return manifest if all((out / s).is_file() for s in shards) else None


def _run(tasks: list[tuple], workers: int) -> Iterator[int]:
    if workers == 1:
        yield from map(_write_shard, tasks)
        return
    # spawn, not fork: callers may already hold torch threads, and forking a threaded process can deadlock.
    with multiprocessing.get_context("spawn").Pool(min(workers, len(tasks))) as pool:
        yield from pool.imap_unordered(_write_shard, tasks)


def zero_shot_tasks() -> dict[str, dict]:
    """The benchmark's zero-shot tasks as manifest entries: the largest object's shape and its colour."""
    return {
        "shape": {
            "classnames": list(SHAPES),
            "templates": list(SHAPE_TEMPLATES),
            "label_key": "largest.shape",
        },
        "colour": {
            "classnames": list(COLOURS),
            "templates": list(COLOUR_TEMPLATES),
            "label_key": "largest.colour",
        },
    }


def _manifest(args: dict[str, Any], plans: dict[str, list[tuple[str, int, int]]]) -> dict:
    return {
        "name": "shapes",
        "version": VERSION,
        "seed": args["seed"],
        "image_size": args["image_size"],
        "noisy_fraction": args["noisy_fraction"],
        "splits": {
            split: {"shards": [p for p, _, _ in plan], "num_samples": args[split]} for split, plan in plans.items()
        },
        "zero_shot": zero_shot_tasks(),
        "retrieval": {"split": "val", "caption": "syn0"},
        "generation": {k: args[k] for k in _CACHE_KEYS if k != "version"},
    }


def generate_shapes(
    out: Path,
    *,
    train: int = 20000,
    val: int = 1000,
    seed: int = 0,
    image_size: int = 64,
    noisy_fraction: float = 0.3,
    samples_per_shard: int = 1000,
    workers: int = 1,
    progress: bool = False,
) -> dict:
    """Write the benchmark to `out` (or reuse it) and return the manifest, also saved as out/manifest.json.

    manifest.json is written last, so its presence means every shard is complete.
    """
    _check_args(
        image_size=image_size,
        noisy_fraction=noisy_fraction,
        train=train,
        val=val,
        samples_per_shard=samples_per_shard,
        workers=workers,
    )
    out = Path(out)
    args = {
        "version": VERSION,
        "seed": seed,
        "image_size": image_size,
        "noisy_fraction": float(noisy_fraction),
        "train": train,
        "val": val,
        "samples_per_shard": samples_per_shard,
    }
    cached = _cached_manifest(out, args)
    if cached is not None:
        return cached

    plans = {split: _shard_plan(args[split], samples_per_shard, split) for split in SPLIT_IDS}
    tasks = []
    for split, plan in plans.items():
        (out / split).mkdir(parents=True, exist_ok=True)
        tasks += [(str(out / rel), split, a, b, seed, image_size, float(noisy_fraction)) for rel, a, b in plan]
    done = _run(tasks, workers)
    if progress:
        _consume_with_progress(done, train + val)
    else:
        for _ in done:
            pass

    manifest = _manifest(args, plans)
    partial = out / "manifest.json.partial"
    partial.write_text(json.dumps(manifest, indent=2) + "\n")
    os.replace(partial, out / "manifest.json")
    return manifest


def _consume_with_progress(done: Iterator[int], total: int) -> None:
    """Drain shard completions into a rich bar; shards finish in chunks, so the rate is updated per shard."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (
        TextColumn("shapes"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]} samples/s"),
        TimeElapsedColumn(),
    )
    with Progress(*columns) as bar:
        task = bar.add_task("generate", total=total, rate="-")
        for n in done:
            bar.advance(task, n)
            state = bar.tasks[task]
            bar.update(task, rate=f"{state.completed / max(state.elapsed or 0.0, 1e-9):.0f}")
