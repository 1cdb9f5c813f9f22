"""`eval.tasks` resolved against the files: where each task's samples are, its classes and prompts, checked.

`resolve_task` does every check that needs no model (the folder exists, class names and templates parse, the
labels are integers that index the class names, a retrieval split has captions), so `ablate launch --dry-run`
and the start of a run fail on a bad task before anything trains; `ResolvedTask.dataset` then opens the samples
at a model's resolution. Errors name the task's dotted field, e.g. `eval.tasks[1].path: ...`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import Dataset, Subset
from torchvision.datasets.folder import find_classes, make_dataset

from ablate.core.config.base import ConfigError
from ablate.core.data.dataset import IMAGE_EXTENSIONS, EvalDataset, decode_pil, decode_sample_image, model_view
from ablate.core.data.manifest import Manifest, load_manifest
from ablate.core.data.tar_index import IndexedShards
from ablate.core.data.tokenizer import clip_tokenizer
from ablate.core.evaluation.config import EvalTaskConfig
from ablate.core.evaluation.prompts import resolve_classnames, resolve_templates
from ablate.core.models.clip import InputSpec

CLIP_BENCHMARK_SPLIT = "test"  # clip_benchmark's default split


@dataclass
class ResolvedTask:
    """A checked task. `samples`: image files with labels (imagefolder), shard paths (clip_benchmark), or the
    manifest (manifest); `classnames`/`templates`: None for retrieval."""

    config: EvalTaskConfig
    where: str
    samples: list[tuple[str, int]] | list[Path] | Manifest
    classnames: list[str] | None = None
    templates: list[str] | None = None
    split: str | None = None
    caption: str = "txt"

    @property
    def name(self) -> str:
        return self.config.name

    def dataset(self, inputs: InputSpec) -> Dataset:
        """(image, label) pairs for zero-shot, (image, tokens [captions, context]) for retrieval."""
        if isinstance(self.samples, Manifest):
            data: Dataset = ManifestCaptions(EvalDataset(self.samples, inputs, self.split, None, self.caption))
        elif self.config.format == "imagefolder":
            data = ImageFiles(self.samples, inputs)
        else:
            data = ClipBenchmarkShards(self.samples, inputs, self.config.kind, self.where)
        limit = self.config.max_samples
        return Subset(data, range(min(limit, len(data)))) if limit else data


def resolve_task(task: EvalTaskConfig, where: str, data_root: Path | str | None) -> ResolvedTask:
    """Check `task` against its files; `where` is its dotted field (`eval.tasks[0]`), `data_root` the training
    manifest's folder (for `format: manifest` without a path)."""
    if task.format == "manifest":
        return _manifest_task(task, where, task.path or data_root)
    folder = Path(task.path)
    if not folder.is_dir():
        raise ConfigError(f"{where}.path: {folder}: no such folder")
    if task.format == "imagefolder":
        return _imagefolder_task(task, where, folder)
    return _clip_benchmark_task(task, where, folder)


def _prompts(task: EvalTaskConfig, where: str, folder: Path, classnames_default: str | None) -> tuple[list, list]:
    names = task.classnames if task.classnames is not None else classnames_default
    if names is None:
        raise ConfigError(f"{where}.classnames: required for a {task.format} task (e.g. imagenet1k)")
    classnames = resolve_classnames(names, folder, f"{where}.classnames")
    templates_default = "zeroshot_classification_templates.txt" if task.format == "clip_benchmark" else None
    templates = task.templates if task.templates is not None else templates_default or "openai_imagenet"
    return classnames, resolve_templates(templates, folder, f"{where}.templates")


def _imagefolder_task(task: EvalTaskConfig, where: str, folder: Path) -> ResolvedTask:
    classnames, templates = _prompts(task, where, folder, None)
    try:
        folders, index = find_classes(folder)
    except FileNotFoundError:
        raise ConfigError(f"{where}.path: {folder}: no class folders inside (expected <class>/<image> files)") from None
    if len(folders) != len(classnames):
        raise ConfigError(
            f"{where}.classnames: {len(classnames)} names but {folder} has {len(folders)} class folders "
            f"(label i is the i-th folder in sorted order, e.g. {folders[0]!r})"
        )
    suffixes = tuple(f".{extension}" for extension in IMAGE_EXTENSIONS)  # what decode_pil reads (any case)
    files = make_dataset(str(folder), index, extensions=suffixes, allow_empty=True)
    if not files:
        raise ConfigError(f"{where}.path: {folder}: no images ({', '.join(suffixes)}) in its class folders")
    return ResolvedTask(task, where, files, classnames, templates)


def _clip_benchmark_task(task: EvalTaskConfig, where: str, folder: Path) -> ResolvedTask:
    kind_file = folder / "dataset_type.txt"
    declared = kind_file.read_text().strip().lower() if kind_file.is_file() else "classification"
    expected = {"zero_shot": "classification", "retrieval": "retrieval"}[task.kind]
    if declared != expected:
        raise ConfigError(
            f"{where}.kind: {task.kind!r}, but {kind_file} says {declared!r} (supported: classification as "
            "zero_shot, retrieval as retrieval)"
        )
    split = task.split or CLIP_BENCHMARK_SPLIT
    shards = _shard_paths(folder / split, f"{where}.split")
    if task.kind == "retrieval":
        return ResolvedTask(task, where, shards, split=split)
    classnames, templates = _prompts(task, where, folder, "classnames.txt")
    first = IndexedShards(shards[:1], required=[IMAGE_EXTENSIONS, ("cls",)])
    if len(first) == 0:
        raise ConfigError(f"{where}.path: {shards[0]}: no sample with an image and a cls member")
    label = _integer_label(first[0], f"{where}.path: {shards[0]}")
    if not 0 <= label < len(classnames):
        raise ConfigError(f"{where}.classnames: {shards[0]} has label {label}, but there are {len(classnames)} names")
    return ResolvedTask(task, where, shards, classnames, templates, split)


def _shard_paths(split_folder: Path, where: str) -> list[Path]:
    """clip_benchmark's `<split>/nshards.txt` + `0.tar ... n-1.tar`, or every `*.tar` when nshards.txt is absent."""
    if not split_folder.is_dir():
        raise ConfigError(f"{where}: {split_folder}: no such split folder")
    count_file = split_folder / "nshards.txt"
    if count_file.is_file():
        text = count_file.read_text().strip()
        if not text.isdigit() or int(text) < 1:
            raise ConfigError(f"{where}: {count_file}: expected a positive shard count, got {text!r}")
        shards = [split_folder / f"{index}.tar" for index in range(int(text))]
        missing = [str(path) for path in shards if not path.is_file()]
        if missing:
            raise ConfigError(f"{where}: {count_file} says {text} shards but {missing[0]} is missing")
        return shards
    shards = sorted(split_folder.glob("*.tar"), key=lambda p: (len(p.stem), p.stem))
    if not shards:
        raise ConfigError(f"{where}: {split_folder}: no .tar shards")
    return shards


def _integer_label(sample: dict, where: str) -> int:
    raw = sample["cls"].decode("utf-8").strip()
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(
            f"{where}: sample {sample['__key__']} has cls {raw!r}; clip_benchmark labels are class indices"
        ) from None


def _manifest_task(task: EvalTaskConfig, where: str, root: Path | str | None) -> ResolvedTask:
    if root is None:
        raise ConfigError(f"{where}.path: the run has no data.root, so name the manifest's folder")
    try:
        manifest = load_manifest(root)
    except FileNotFoundError as err:
        raise ConfigError(f"{where}.path: {err}") from None
    retrieval = manifest.retrieval
    split = task.split or (retrieval.split if retrieval else "val")
    if split not in manifest.splits:
        raise ConfigError(f"{where}.split: {split!r} is not a split of {root} (has {sorted(manifest.splits)})")
    caption = task.caption or (retrieval.caption if retrieval else "txt")
    if caption != "txt" and not (caption.startswith("syn") and caption[3:].isdigit()):
        raise ConfigError(f"{where}.caption: {caption!r} is neither txt nor synN")
    return ResolvedTask(task, where, manifest, split=split, caption=caption)


class ImageFiles(Dataset):
    """An ImageFolder's (file, label) list as (image, label) at the model's evaluation view."""

    def __init__(self, files: list[tuple[str, int]], inputs: InputSpec) -> None:
        self.files, self.inputs = files, inputs

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.files[index]
        sample = {"__key__": path, Path(path).suffix.lower().lstrip("."): Path(path).read_bytes()}
        return model_view(decode_pil(sample), self.inputs), label


class ClipBenchmarkShards(Dataset):
    """clip_benchmark webdataset samples: (image, integer `cls`), or (image, tokens of each `txt` line)."""

    def __init__(self, shards: list[Path], inputs: InputSpec, kind: str, where: str) -> None:
        self.kind, self.where, self.inputs = kind, where, inputs
        self.shards = IndexedShards(shards, required=[IMAGE_EXTENSIONS, ("cls" if kind == "zero_shot" else "txt",)])
        self.tokenizer = clip_tokenizer(inputs.context_length)

    def __len__(self) -> int:
        return len(self.shards)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int | torch.Tensor]:
        sample = self.shards[index]
        image = decode_sample_image(sample, self.inputs)
        if self.kind == "zero_shot":
            return image, _integer_label(sample, f"{self.where}.path")
        captions = [line.strip() for line in sample["txt"].decode("utf-8").splitlines() if line.strip()]
        return image, self.tokenizer(captions)


class ManifestCaptions(Dataset):
    """A manifest split as retrieval pairs; a sample without its caption keeps its image and has no text."""

    def __init__(self, samples: EvalDataset) -> None:
        self.samples = samples

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, tokens, _ = self.samples[index]
        return image, tokens[None] if tokens.any() else tokens.new_zeros((0, len(tokens)))
