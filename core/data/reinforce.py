"""Dataset reinforcement: store teacher knowledge once so training never runs a teacher (papers.md §1.1).

For every image of a split this writes A recorded augmentations, the teacher ensemble's embeddings of each
augmented view, of the ground-truth caption and of S synthetic captions, in the DataCompDR layout
(`reinforced_format`). Output shards mirror the source shards one to one, under the same file names, so a run
can join them by uid and a rerun knows what is done:

- a shard is written as `NAME.partial` and renamed when complete, then recorded in `reinforcement.json`;
- a rerun skips recorded shards and redoes a half-written one; settings that differ from the recorded ones
  are an error, because mixing two teacher sets in one folder would silently corrupt the targets.

Each sample's augmentations come from a generator seeded by (seed, uid, index), so the output does not depend on
shard order, batch size or worker count.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import torch
import webdataset as wds
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from ablate.core.config.base import ConfigError
from ablate.core.config.sections import TeacherSpec
from ablate.core.data.augment import AugmentConfig, RecordedAugment, compress
from ablate.core.data.dataset import decode_pil, pil_to_uint8, synthetic_captions
from ablate.core.data.manifest import load_manifest
from ablate.core.data.reinforced_format import (
    EMBEDDING_KEYS,
    INFO_FILE,
    EmbeddingFormat,
    ReinforcedRecord,
    ReinforcementInfo,
    TeacherRecord,
    encode_record,
    read_info,
    sample_uid,
    write_info,
)
from ablate.core.data.tar_index import IndexedShards
from ablate.core.merging import MergeSchedule, TokenMergingConfig, apply_token_merging
from ablate.core.teachers.ensemble import TeacherEnsemble


@dataclass(frozen=True)
class ReinforceSettings:
    """What to store per sample. MobileCLIP: A = 30 (12M) or 10 (1B), S = 5, bf16 (§1.1); 5/5 is its minimum."""

    augmentations: int = 5
    synthetic_captions: int | None = None  # None: every synthetic caption the source has
    embedding_format: EmbeddingFormat = "pth.gz"
    split: str = "train"
    seed: int = 0
    batch_size: int = 256  # augmented images per teacher forward
    image_size: int | None = None  # recording resolution; None: the largest teacher input
    token_merging_r: int = 0  # teachers run with ToMe (r tokens merged per layer, both towers): faster, approximate

    def __post_init__(self) -> None:
        if self.augmentations < 1:
            raise ValueError(f"augmentations must be >= 1, got {self.augmentations}")
        if self.synthetic_captions is not None and self.synthetic_captions < 0:
            raise ValueError(f"synthetic_captions must be >= 0, got {self.synthetic_captions}")
        if self.embedding_format not in EMBEDDING_KEYS:
            raise ValueError(f"embedding format must be one of {EMBEDDING_KEYS}, got {self.embedding_format!r}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")


def augmentation_seed(seed: int, uid: str, index: int) -> int:
    """A 63-bit seed that depends only on (seed, uid, index)."""
    digest = hashlib.sha256(f"{seed}:{uid}:{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


class ShardReinforcer:
    """Reinforces one source shard at a time with a loaded ensemble (one per process)."""

    def __init__(self, ensemble: TeacherEnsemble, settings: ReinforceSettings, augment: AugmentConfig) -> None:
        self.ensemble, self.settings = ensemble, settings
        self.merge_handles = []  # ToMe patches on the teachers' modules, kept for as long as this reinforcer lives
        if settings.token_merging_r > 0:
            schedule = MergeSchedule(r=settings.token_merging_r)
            merging = TokenMergingConfig(image=schedule, text=schedule)
            self.merge_handles = [apply_token_merging(member, merging) for member in ensemble.members]
        self.augment = RecordedAugment(augment)
        self.sizes = [member.inputs.image_size for member in ensemble.members]

    def records(self, samples: Sequence[dict]) -> list[ReinforcedRecord]:
        """Augment, embed and package a chunk of source samples."""
        settings, count = self.settings, self.settings.augmentations
        views: list[list[torch.Tensor]] = [[] for _ in self.sizes]  # per teacher, sample-major then augmentation
        params, captions, uids = [], [], [sample_uid(sample) for sample in samples]
        for sample, uid in zip(samples, uids, strict=True):
            image = decode_pil(sample)
            for index in range(count):
                generator = torch.Generator().manual_seed(augmentation_seed(settings.seed, uid, index))
                view, recorded = self.augment.record_uint8(image, generator)
                params.append(compress(recorded))
                for teacher, size in enumerate(self.sizes):
                    exact = view if size == view.width else self.augment.replay_uint8(image, recorded, size)
                    views[teacher].append(pil_to_uint8(exact))
            syn = synthetic_captions(sample)[: settings.synthetic_captions]
            captions.append([sample["txt"].decode("utf-8"), *syn])
        image_emb = self._embed_images(views)
        text_emb = self.ensemble.encode_texts([text for texts in captions for text in texts])
        records, text_row = [], 0
        for position, uid in enumerate(uids):
            rows = slice(position * count, (position + 1) * count)
            texts = captions[position]
            records.append(
                ReinforcedRecord(
                    uid=uid,
                    syn_text=texts[1:],
                    param_aug=params[rows],
                    image_emb=image_emb[rows],
                    text_emb=text_emb[text_row : text_row + len(texts)],
                )
            )
            text_row += len(texts)
        return records

    def _embed_images(self, views: list[list[torch.Tensor]]) -> torch.Tensor:
        step, total = self.settings.batch_size, len(views[0])
        chunks = [
            self.ensemble.encode_images([torch.stack(per_teacher[start : start + step]) for per_teacher in views])
            for start in range(0, total, step)
        ]
        return torch.cat(chunks)

    def write_shard(self, source: Path, target: Path, on_samples: Callable[[int], None] = lambda n: None) -> int:
        """Reinforce `source` into `target` (atomically); returns the number of samples written."""
        chunk = max(1, self.settings.batch_size // self.settings.augmentations)
        partial = target.with_name(target.name + ".partial")
        with IndexedShards([source]) as shards, open(partial, "wb") as stream:
            writer = wds.TarWriter(stream, encoder=False, mtime=0.0)
            for start in range(0, len(shards), chunk):
                samples = [shards[index] for index in range(start, min(start + chunk, len(shards)))]
                for sample, record in zip(samples, self.records(samples), strict=True):
                    url = (
                        sample["url.txt"].decode("utf-8")
                        if "url.txt" in sample
                        else f"{source.name}/{sample['__key__']}"
                    )
                    writer.write(encode_record(record, str(sample["__key__"]), self.settings.embedding_format, url))
                on_samples(len(samples))
            writer.close()
        os.replace(partial, target)
        return len(shards)


def recording_augment(settings: ReinforceSettings, ensemble: TeacherEnsemble) -> AugmentConfig:
    """DataCompDR's recipe at the recording size (the largest teacher input unless set)."""
    size = settings.image_size or max(member.inputs.image_size for member in ensemble.members)
    return AugmentConfig(size=size)


def _expected_info(
    source: Path, teachers: Sequence[TeacherSpec], ensemble: TeacherEnsemble, settings: ReinforceSettings, syn: int
) -> ReinforcementInfo:
    return ReinforcementInfo(
        source=str(source.resolve()),
        split=settings.split,
        teachers=[
            TeacherRecord(name=spec.model, dim=dim, logit_scale=spec.logit_scale, checkpoint=str(spec.checkpoint))
            for spec, dim in zip(teachers, ensemble.dims, strict=True)
        ],
        augmentations=settings.augmentations,
        synthetic_captions=syn,
        token_merging_r=settings.token_merging_r,
        embedding_format=settings.embedding_format,
        augment=json.loads(json.dumps(dataclasses.asdict(recording_augment(settings, ensemble)))),
        translate="fraction",  # `augment.compress` stores Translate as fractions of the side
        shards={},
    )


def _check_compatible(recorded: ReinforcementInfo, expected: ReinforcementInfo, path: Path) -> None:
    mine, theirs = recorded.model_dump(exclude={"shards"}), expected.model_dump(exclude={"shards"})
    differences = [f"{key}: recorded {mine[key]!r}, now {theirs[key]!r}" for key in theirs if mine[key] != theirs[key]]
    if differences:
        raise ConfigError(
            f"{path} was made with other settings ({'; '.join(differences)}): "
            "reinforce into another folder, or delete this one"
        )


_WORKER_STATE: dict = {}


def _worker_init(teachers: list[TeacherSpec], settings: ReinforceSettings, threads: int) -> None:
    torch.set_num_threads(threads)
    ensemble = TeacherEnsemble.load(teachers)
    _WORKER_STATE["reinforcer"] = ShardReinforcer(ensemble, settings, recording_augment(settings, ensemble))


def _worker_write(task: tuple[Path, Path]) -> tuple[str, int]:
    source, target = task
    return target.name, _WORKER_STATE["reinforcer"].write_shard(source, target)


def reinforce_dataset(
    source: Path,
    teachers: Sequence[TeacherSpec],
    out: Path,
    settings: ReinforceSettings | None = None,
    workers: int = 1,
    progress: bool = True,
) -> ReinforcementInfo:
    """Reinforce split `settings.split` of the dataset at `source` into `out`; resumable per shard."""
    settings = settings or ReinforceSettings()
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    manifest = load_manifest(source)
    sources = manifest.shard_paths(settings.split)
    ensemble = TeacherEnsemble.load(teachers)
    syn = _synthetic_count(sources[0], settings)
    expected = _expected_info(Path(source), teachers, ensemble, settings, syn)
    info_path = Path(out) / INFO_FILE
    recorded = read_info(Path(out))
    if recorded is not None:
        _check_compatible(recorded, expected, info_path)
        expected.shards = dict(recorded.shards)
    target_dir = Path(out) / settings.split
    target_dir.mkdir(parents=True, exist_ok=True)
    write_info(info_path, expected)
    pending = [
        (path, target_dir / path.name)
        for path in sources
        if path.name not in expected.shards or not (target_dir / path.name).is_file()
    ]
    total = sum(_sample_count(path) for path, _ in pending)
    started = time.perf_counter()
    with _progress(progress, total) as advance:
        if workers == 1:
            reinforcer = ShardReinforcer(ensemble, settings, recording_augment(settings, ensemble))
            for path, target in pending:
                expected.shards[target.name] = reinforcer.write_shard(path, target, advance)
                write_info(info_path, expected)
        else:
            threads = max(1, (os.cpu_count() or 1) // workers)
            spawn = get_context("spawn")  # fresh interpreters: no forked torch thread pools
            arguments = (list(teachers), settings, threads)
            with ProcessPoolExecutor(workers, spawn, initializer=_worker_init, initargs=arguments) as pool:
                for name, count in pool.map(_worker_write, pending):
                    expected.shards[name] = count
                    write_info(info_path, expected)
                    advance(count)
    elapsed = time.perf_counter() - started
    if total:
        print(f"reinforced {total} samples in {elapsed:.1f} s ({total / elapsed:.1f} samples/s) into {out}")
    return expected


def _sample_count(path: Path) -> int:
    with IndexedShards([path]) as shards:
        return len(shards)


def _synthetic_count(first_shard: Path, settings: ReinforceSettings) -> int:
    with IndexedShards([first_shard]) as shards:
        available = len(synthetic_captions(shards[0]))
    wanted = settings.synthetic_captions
    if wanted is not None and wanted > available:
        raise ConfigError(f"synthetic_captions={wanted}, but {first_shard} has {available} per sample")
    return available if wanted is None else wanted


class _progress:
    """A rich bar with samples/s, or a no-op."""

    def __init__(self, enabled: bool, total: int) -> None:
        columns = [
            TextColumn("[bold]reinforce"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]} samples/s"),
            TimeRemainingColumn(),
        ]
        self.bar = Progress(*columns, disable=not enabled)
        self.total, self.done, self.started = total, 0, time.perf_counter()

    def __enter__(self) -> Callable[[int], None]:
        self.bar.__enter__()
        self.task = self.bar.add_task("reinforce", total=self.total, rate="-")

        def advance(count: int) -> None:
            self.done += count
            rate = self.done / max(time.perf_counter() - self.started, 1e-9)
            self.bar.update(self.task, advance=count, rate=f"{rate:.1f}")

        return advance

    def __exit__(self, *exc: object) -> None:
        self.bar.__exit__(*exc)
