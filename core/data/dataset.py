"""Image decoding shared by the training and evaluation datasets, and the evaluation dataset itself.

Evaluation reads the centre view, the retrieval caption and the zero-shot labels from each sample's `json`.
"""

from __future__ import annotations

import io
import json

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image
from torch.utils.data import Dataset

from ablate.core.data.manifest import Manifest
from ablate.core.data.tar_index import IndexedShards
from ablate.core.data.tokenizer import clip_tokenizer
from ablate.core.models.clip import InputSpec

IMAGE_EXTENSIONS = ("png", "jpg", "jpeg", "webp")


def decode_pil(sample: dict) -> Image.Image:
    extension = next((ext for ext in IMAGE_EXTENSIONS if ext in sample), None)
    if extension is None:
        raise KeyError(f"sample {sample['__key__']} has no image (looked for {', '.join(IMAGE_EXTENSIONS)})")
    with Image.open(io.BytesIO(sample[extension])) as decoded:
        return decoded.convert("RGB")


def pil_to_uint8(image: Image.Image) -> torch.Tensor:
    """PIL RGB -> uint8 CHW tensor (one copy)."""
    return torch.from_numpy(np.array(image)).permute(2, 0, 1).contiguous()


def centre_view(image: Image.Image, size: int) -> torch.Tensor:
    """The evaluation view: bicubic resize of the shorter side to `size`, then a centre crop; uint8 CHW."""
    pixels = pil_to_uint8(image)
    if pixels.shape[-2:] != (size, size):
        pixels = TF.resize(pixels, size, interpolation=TF.InterpolationMode.BICUBIC, antialias=True)
        pixels = TF.center_crop(pixels, size)
    return pixels


def model_view(image: Image.Image, inputs: InputSpec) -> torch.Tensor:
    """PIL RGB -> normalised float CHW at the model's resolution (the centre view)."""
    pixels = centre_view(image, inputs.image_size).float().div_(255.0)
    return TF.normalize(pixels, list(inputs.mean), list(inputs.std))


def decode_sample_image(sample: dict, inputs: InputSpec) -> torch.Tensor:
    """Bytes -> normalised float CHW at the model's resolution (the centre view)."""
    return model_view(decode_pil(sample), inputs)


def synthetic_captions(sample: dict) -> list[str]:
    return json.loads(sample["syn.json"])["syn_text"] if "syn.json" in sample else []


def read_caption(sample: dict, which: str) -> str:
    """`txt` is the alt-text; `synN` the N-th synthetic caption."""
    if which == "txt":
        return sample["txt"].decode("utf-8")
    return synthetic_captions(sample)[int(which.removeprefix("syn"))]


def lookup(tree: dict, dotted: str) -> object:
    for part in dotted.split("."):
        tree = tree[part]
    return tree


class EvalDataset(Dataset):
    """Held-out samples, their retrieval caption and one label per zero-shot task (-1 if absent).

    A sample without the retrieval caption gets all-zero tokens (a real caption starts with the start token), so
    zero-shot still scores its image and retrieval leaves it out. A label is the class index when the json holds
    an integer, else the position of the class name (names repeated in a list need integer labels)."""

    def __init__(
        self, manifest: Manifest, inputs: InputSpec, split: str, max_samples: int | None, caption: str | None = None
    ) -> None:
        self.shards = IndexedShards(manifest.shard_paths(split))
        self.length = min(len(self.shards), max_samples or len(self.shards))
        self.inputs = inputs
        self.tasks = manifest.zero_shot
        self.caption = caption or (manifest.retrieval.caption if manifest.retrieval else "txt")
        self.tokenizer = clip_tokenizer(inputs.context_length)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        sample = self.shards[index]
        meta = json.loads(sample["json"]) if "json" in sample else {}
        labels = [self._label(meta, task.label_key, task.classnames) for task in self.tasks.values()]
        try:
            tokens = self.tokenizer(read_caption(sample, self.caption))[0]
        except (KeyError, IndexError):
            tokens = torch.zeros(self.inputs.context_length, dtype=torch.long)
        return decode_sample_image(sample, self.inputs), tokens, torch.tensor(labels, dtype=torch.long)

    @staticmethod
    def _label(meta: dict, key: str, classnames: list[str]) -> int:
        try:
            value = lookup(meta, key)
            if isinstance(value, int) and not isinstance(value, bool):
                return value if 0 <= value < len(classnames) else -1
            return classnames.index(str(value))
        except (KeyError, ValueError, TypeError):
            return -1
