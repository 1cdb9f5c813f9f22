"""The DataCompDR sample layout, read and written (papers.md §1.1 "Per-sample keys").

One reinforced sample is a webdataset record with

- `url.txt` and `json` ({"uid": ...}): which image it reinforces; images are joined by uid, because the published
  DataCompDR shards carry no pixels.
- `syn.json` {"syn_text": [S strings]}: the synthetic captions.
- `paug.json` {"param_aug": [A compressed augmentations]}: see `augment.compress`. The Hugging Face copy stores this
  field as a JSON *string* holding the list, so both forms are read. Translate magnitudes are pixels of the
  224-px recorded view in the published shards and fractions of the side in ours; `ReinforcementInfo.translate`
  says which, and shards without our `reinforcement.json` are read as published (`translate_side`).
- `pth.gz` (gzip of a torch pickle, bf16) or `npz` (numpy, fp32): `image_emb` [A, K·d], one row per augmentation,
  and `text_emb` [1+S, K·d], row 0 the ground-truth caption and rows 1..S the synthetic ones. Each row is the
  concatenation of the K teachers' L2-normalised embeddings.

Nothing here assumes our writer: any shard following the layout decodes, which a test checks with a minimal
independent writer.
"""

from __future__ import annotations

import gzip
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from ablate.core.config.base import ConfigError

EmbeddingFormat = Literal["pth.gz", "npz"]
EMBEDDING_KEYS: tuple[EmbeddingFormat, ...] = ("pth.gz", "npz")
INFO_FILE = "reinforcement.json"
# The view size DataCompDR's augmentations were drawn at (ml-mobileclip training/configs/datacompdr*.json:
# random_resized_crop size 224), i.e. what its Translate pixels are pixels of.
PUBLISHED_VIEW_SIZE = 224


@dataclass(frozen=True)
class ReinforcedRecord:
    """One decoded sample; embeddings are fp32 whatever they were stored as."""

    uid: str
    syn_text: list[str]
    param_aug: list[Any]
    image_emb: torch.Tensor  # [A, K·d]
    text_emb: torch.Tensor  # [1 + S, K·d]

    @property
    def num_augmentations(self) -> int:
        return self.image_emb.shape[0]


class TeacherRecord(BaseModel):
    """Who made one slice of the stored vectors: enough to check and to reproduce it."""

    model_config = ConfigDict(extra="ignore")

    name: str
    dim: int = Field(gt=0)
    logit_scale: float = Field(100.0, gt=0)
    checkpoint: str | None = None


class ReinforcementInfo(BaseModel):
    """`reinforcement.json` beside the shards: what the embeddings are, so a trainer can check widths before
    its first step. Optional for third-party shards (the trainer then needs `loss.teacher_dims`)."""

    model_config = ConfigDict(extra="ignore")

    source: str = Field(description="the image dataset (folder with manifest.json) the uids refer to")
    split: str = "train"
    teachers: list[TeacherRecord] = Field(min_length=1)
    augmentations: int = Field(ge=1)
    synthetic_captions: int = Field(ge=0)
    embedding_format: EmbeddingFormat = "pth.gz"
    token_merging_r: int = Field(0, ge=0, description="teachers ran with ToMe merging r tokens per layer (0: exact)")
    augment: dict[str, Any] = Field(default_factory=dict, description="the AugmentConfig the records were drawn with")
    translate: Literal["fraction", "pixels"] | None = Field(
        None,
        description="unit of stored Translate magnitudes: fractions of the side (our writer) or pixels of the "
        "recorded view (DataCompDR; of augment.size, else 224). Unset: fraction when `augment` was recorded (our "
        "writer before this field existed), else pixels",
    )
    shards: dict[str, int] = Field(default_factory=dict, description="finished shard file -> samples in it")

    @model_validator(mode="after")
    def _translate_unit(self) -> ReinforcementInfo:
        if self.translate is None:
            self.translate = "fraction" if self.augment else "pixels"
        return self

    @property
    def teacher_dims(self) -> list[int]:
        return [teacher.dim for teacher in self.teachers]

    @property
    def teacher_logit_scales(self) -> list[float]:
        return [teacher.logit_scale for teacher in self.teachers]


def translate_side(info: ReinforcementInfo | None) -> int | None:
    """How a shard set's stored Translate magnitudes read (see `augment.decompress`): None for fractions of the
    side, else the width in pixels of the view they are pixels of. No `reinforcement.json`: published shards."""
    if info is None:
        return PUBLISHED_VIEW_SIZE
    if info.translate == "fraction":
        return None
    return int(info.augment.get("size", PUBLISHED_VIEW_SIZE))


def encode_embeddings(image_emb: torch.Tensor, text_emb: torch.Tensor, fmt: EmbeddingFormat) -> bytes:
    """bf16 in a gzipped torch pickle (MobileCLIP's storage, Tab 16) or fp32 in an npz."""
    if fmt == "pth.gz":
        buffer = io.BytesIO()
        tensors = {"image_emb": image_emb.to(torch.bfloat16).contiguous(), "text_emb": text_emb.to(torch.bfloat16)}
        torch.save(tensors, buffer)
        return gzip.compress(buffer.getvalue(), compresslevel=6, mtime=0)
    if fmt == "npz":
        buffer = io.BytesIO()
        np.savez(buffer, image_emb=image_emb.float().numpy(), text_emb=text_emb.float().numpy())
        return buffer.getvalue()
    raise ValueError(f"embedding format must be one of {EMBEDDING_KEYS}, got {fmt!r}")


def stored_embeddings(sample: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Every array of the sample's embedding member, in the dtype it was stored in."""
    if "pth.gz" in sample:
        tensors = torch.load(io.BytesIO(gzip.decompress(sample["pth.gz"])), map_location="cpu", weights_only=True)
        return {name: torch.as_tensor(value) for name, value in tensors.items()}
    if "npz" in sample:
        with np.load(io.BytesIO(sample["npz"])) as arrays:
            return {name: torch.from_numpy(arrays[name]) for name in arrays.files}
    raise KeyError(f"sample {sample.get('__key__')!r} has no embeddings (looked for {', '.join(EMBEDDING_KEYS)})")


def decode_embeddings(sample: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """(image_emb, text_emb) as fp32 from whichever embedding member the sample has."""
    tensors = stored_embeddings(sample)
    image_emb, text_emb = (tensors[name].float() for name in ("image_emb", "text_emb"))
    if image_emb.ndim != 2 or text_emb.ndim != 2 or image_emb.shape[1] != text_emb.shape[1]:
        raise ValueError(
            f"sample {sample.get('__key__')!r}: image_emb {tuple(image_emb.shape)} and text_emb "
            f"{tuple(text_emb.shape)} must be [rows, width] with the same width"
        )
    return image_emb, text_emb


def _json(sample: dict[str, Any], key: str) -> Any:
    value = sample[key]
    return json.loads(value.decode("utf-8") if isinstance(value, bytes) else value)


def sample_uid(sample: dict[str, Any]) -> str:
    """The join key: `json`'s uid when present (DataComp's and ours), else the webdataset key."""
    if "json" in sample:
        meta = _json(sample, "json")
        if isinstance(meta, dict) and "uid" in meta:
            return str(meta["uid"])
    return str(sample["__key__"])


def decode_param_aug(sample: dict[str, Any]) -> list[Any]:
    """`paug.json`'s list of compressed augmentations; the Hugging Face copy nests it as a JSON string."""
    params = _json(sample, "paug.json")["param_aug"]
    return json.loads(params) if isinstance(params, str) else params


def decode_record(sample: dict[str, Any]) -> ReinforcedRecord:
    """A raw webdataset sample (bytes per member) -> `ReinforcedRecord`, checking the rows agree."""
    image_emb, text_emb = decode_embeddings(sample)
    syn_text = _json(sample, "syn.json")["syn_text"] if "syn.json" in sample else []
    param_aug = decode_param_aug(sample)
    key = sample.get("__key__")
    if len(param_aug) != image_emb.shape[0]:
        raise ValueError(f"sample {key!r}: {len(param_aug)} stored augmentations but {image_emb.shape[0]} image rows")
    if text_emb.shape[0] != 1 + len(syn_text):
        raise ValueError(
            f"sample {key!r}: text_emb has {text_emb.shape[0]} rows, expected 1 + {len(syn_text)} synthetic captions"
        )
    return ReinforcedRecord(sample_uid(sample), list(syn_text), list(param_aug), image_emb, text_emb)


def encode_record(record: ReinforcedRecord, key: str, fmt: EmbeddingFormat, url: str = "") -> dict[str, Any]:
    """`ReinforcedRecord` -> webdataset fields (bytes), our writer's side of the layout."""

    def dumps(value: Any) -> bytes:
        return json.dumps(value, separators=(",", ":")).encode("utf-8")

    return {
        "__key__": key,
        "url.txt": url.encode("utf-8"),
        "json": dumps({"uid": record.uid}),
        "syn.json": dumps({"syn_text": record.syn_text}),
        "paug.json": dumps({"param_aug": record.param_aug}),
        fmt: encode_embeddings(record.image_emb, record.text_emb, fmt),
    }


def write_info(path: Path, info: ReinforcementInfo) -> None:
    temporary = path.with_suffix(".json.partial")
    temporary.write_text(info.model_dump_json(indent=2))
    os.replace(temporary, path)


def read_info(root: Path) -> ReinforcementInfo | None:
    path = Path(root) / INFO_FILE
    if not path.is_file():
        return None
    try:
        return ReinforcementInfo.model_validate_json(path.read_text())
    except ValueError as err:
        raise ConfigError(f"{path}: invalid reinforcement record: {err}") from None
