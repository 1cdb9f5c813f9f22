"""The training dataset: one visit = one image view, its caption(s) and, when reinforced, the teachers' view of both.

A visit id is epoch·n + position (see `sampler.StepBatchSampler`); every random choice of a visit (which stored
augmentation, which synthetic caption, mix or not) is drawn from a generator seeded by (seed, visit), so batches
are a pure function of the step and resumed runs stay exact whatever the worker count.

Views:
- reinforced (`store` given): a stored augmentation is replayed at the student's resolution (the crop box is in
  source pixels, so any resolution works) and the matching teacher embeddings are returned as fp32;
- `augment`: a fresh DataCompDR augmentation (online teachers embed the same view the student sees);
- otherwise the centre view, as evaluation reads it.

Images leave as uint8; the trainer normalises them on the device with each model's own `InputSpec`.
"""

from __future__ import annotations

import hashlib
import warnings
import zlib
from dataclasses import dataclass

import torch
from torch.utils.data import Dataset

from ablate.core.config.base import ConfigError
from ablate.core.config.sections import DataConfig
from ablate.core.data.augment import AugmentConfig, RecordedAugment, decompress
from ablate.core.data.dataset import centre_view, decode_pil, pil_to_uint8, read_caption, synthetic_captions
from ablate.core.data.manifest import Manifest
from ablate.core.data.reinforcement_store import DataLossWarning, ReinforcementStore
from ablate.core.data.tar_index import IndexedShards
from ablate.core.data.tokenizer import clip_tokenizer
from ablate.core.models.clip import InputSpec

DECODE_ERRORS = (KeyError, ValueError, OSError, EOFError, RuntimeError, zlib.error)


@dataclass(frozen=True)
class Draw:
    """The random choices of one visit."""

    augmentation: int
    synthetic: int
    synthetic_only: bool  # `mix`: this visit's caption is a synthetic one


class TrainDataset(Dataset):
    def __init__(
        self,
        manifest: Manifest,
        inputs: InputSpec,
        data: DataConfig,
        seed: int,
        store: ReinforcementStore | None = None,
        augment: bool = False,
        split: str = "train",
        keep_uids: set[str] | None = None,
    ) -> None:
        """`keep_uids`: train on these samples only (a caption-quality subset, `data.keep_fraction`)."""
        self.images = IndexedShards(manifest.shard_paths(split))
        self.inputs, self.data, self.seed, self.store = inputs, data, seed, store
        self.augment = RecordedAugment(AugmentConfig(size=inputs.image_size)) if (augment or store) else None
        self.tokenizer = clip_tokenizer(inputs.context_length)
        needs_uids = store is not None or keep_uids is not None  # one read of every sample's json, at most
        self.uids = [self.images.uid(index) for index in range(len(self.images))] if needs_uids else []
        self.pairs = self._join() if store else [(index, -1) for index in range(len(self.images))]
        if keep_uids is not None:
            self.pairs = [pair for pair in self.pairs if self.uids[pair[0]] in keep_uids]
            if not self.pairs:
                raise ConfigError("data.keep_fraction keeps no training sample: the quality scores name other uids")
        self._check_synthetic_captions()

    def _join(self) -> list[tuple[int, int]]:
        """(image index, reinforcement row) for every image whose uid the reinforcement has."""
        assert self.store is not None
        pairs = [(index, self.store.rows.get(uid, -1)) for index, uid in enumerate(self.uids)]
        joined = [pair for pair in pairs if pair[1] >= 0]
        if not joined:
            raise ConfigError(
                f"data.reinforcement {self.store.root}: none of its uids matches an image of data.root "
                f"(e.g. image uid {self.uids[0]!r}); it reinforces another dataset"
            )
        if len(joined) < len(pairs):
            warnings.warn(
                f"{len(pairs) - len(joined)} of {len(pairs)} training images have no reinforcement in "
                f"{self.store.root} and are skipped",
                DataLossWarning,
                stacklevel=2,
            )
        return joined

    def _check_synthetic_captions(self) -> None:
        if self.data.captions == "alt":
            return
        count = self.store.synthetic if self.store else len(synthetic_captions(self.images[0]))
        if count == 0:
            raise ConfigError(f"data.captions={self.data.captions!r} needs synthetic captions; the shards have none")

    def __len__(self) -> int:
        return len(self.pairs)

    def draw(self, visit: int, augmentations: int, synthetic: int) -> Draw:
        """Which stored augmentation and synthetic caption this visit reads: random, or cycled by epoch."""
        generator = self._generator(visit, "draw")
        coin = float(torch.rand((), generator=generator))
        if self.data.sample == "sequential":
            epoch = visit // len(self)
            augmentation, caption = epoch % max(augmentations, 1), epoch % max(synthetic, 1)
        else:
            augmentation = int(torch.randint(max(augmentations, 1), (), generator=generator))
            caption = int(torch.randint(max(synthetic, 1), (), generator=generator))
        return Draw(augmentation, caption, self.data.captions == "mix" and coin < self.data.mix_synthetic_ratio)

    def _generator(self, visit: int, stream: str) -> torch.Generator:
        """An independent random stream per (seed, visit, purpose): a pure function of the step, never shared."""
        digest = hashlib.sha256(f"{self.seed}:{visit}:{stream}".encode()).digest()
        return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)

    def __getitem__(self, visit: int) -> dict[str, torch.Tensor]:
        position = visit % len(self)
        for attempt in range(len(self)):
            image_index, row = self.pairs[(position + attempt) % len(self)]
            try:
                return self._visit(visit, image_index, row)
            except DECODE_ERRORS as err:
                warnings.warn(
                    f"training sample {self.images.samples[image_index].key!r} (reinforcement row {row}) is "
                    f"unreadable and replaced by the next one: {type(err).__name__}: {err}",
                    DataLossWarning,
                    stacklevel=2,
                )
        raise ConfigError("no training sample is readable")

    def _visit(self, visit: int, image_index: int, row: int) -> dict[str, torch.Tensor]:
        sample = self.images[image_index]
        image = decode_pil(sample)
        record = self.store.record(row) if self.store is not None else None
        syn_texts = record.syn_text if record else synthetic_captions(sample)
        draw = self.draw(visit, record.num_augmentations if record else 1, len(syn_texts))
        if record is not None:
            params = decompress(record.param_aug[draw.augmentation], self.store.translate_side)
            view = pil_to_uint8(self.augment.replay_uint8(image, params, self.inputs.image_size))
        elif self.augment is not None:
            view = pil_to_uint8(self.augment.record_uint8(image, self._generator(visit, "augment"))[0])
        else:
            view = centre_view(image, self.inputs.image_size)

        captions = self.data.captions
        first_is_synthetic = captions == "syn" or draw.synthetic_only
        texts = [syn_texts[draw.synthetic] if first_is_synthetic else read_caption(sample, "txt")]
        text_rows = [1 + draw.synthetic if first_is_synthetic else 0]
        if captions == "both":
            texts.append(syn_texts[draw.synthetic])
            text_rows.append(1 + draw.synthetic)
        item = {"image": view, "tokens": self.tokenizer(texts)}  # tokens: [1 or 2, context]
        if record is not None:
            item["teacher_image"] = record.image_emb[draw.augmentation]
            item["teacher_text"] = record.text_emb[text_rows]  # [1 or 2, K·d]
        return item
