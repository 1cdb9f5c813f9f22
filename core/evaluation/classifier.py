"""Zero-shot classifiers, built once per (text-tower weights, class names, templates) and reused.

A classifier is open_clip's `build_zero_shot_classifier`: for each class the mean of its L2-normalised prompt
embeddings, renormalised. Building one for ImageNet (1000 classes x 80 templates) runs the text tower 80 000
times, so it is cached at three levels:
- tokenised prompts, keyed by the prompts and the context length: they never change, even while the text tower
  trains, so they live as long as the cache object (the trainer keeps one for the run);
- classifiers in memory, keyed by the text tower's weights version (a hash of its state) and the task's class
  names and templates: tasks that share both (ImageNet and its variants) build it once per evaluation;
- classifiers on disk (`directory`), same key: a frozen or exported model evaluated again, in another run or
  process, reads it back. The trainer leaves this off, since its text tower changes between evaluations.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ablate.core.data.tokenizer import clip_tokenizer
from ablate.core.evaluation.prompts import render
from ablate.core.models.clip import CLIP

PROMPT_BATCH = 1024  # prompts per text-tower forward when building a classifier


def weights_version(module: nn.Module) -> str:
    """A digest of a module's parameters and buffers (names, dtypes, shapes, bytes): equal iff the weights are."""
    digest = hashlib.blake2b(digest_size=16)
    for name, tensor in sorted(module.state_dict().items()):
        data = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}:{data.dtype}:{tuple(data.shape)};".encode())
        digest.update(data.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _prompts_key(classnames: Sequence[str], templates: Sequence[str], context_length: int) -> str:
    digest = hashlib.blake2b(digest_size=16)
    digest.update(f"{context_length}\n".encode())
    digest.update("\x1f".join(classnames).encode() + b"\x1e" + "\x1f".join(templates).encode())
    return digest.hexdigest()


class ZeroShotClassifiers:
    """The caches above; `directory` None keeps classifiers in memory only."""

    def __init__(self, directory: Path | None = None) -> None:
        self.directory = directory
        self.tokens: dict[str, torch.Tensor] = {}
        self.classifiers: dict[tuple[str, str], torch.Tensor] = {}
        self.built = 0  # classifiers computed with the text tower (not read from a cache): what tests count

    def keep_only(self, version: str) -> None:
        """Drop in-memory classifiers of other weights: a training run would otherwise hold one per evaluation."""
        self.classifiers = {key: value for key, value in self.classifiers.items() if key[0].startswith(version)}

    def tokenized(self, classnames: Sequence[str], templates: Sequence[str], context_length: int) -> torch.Tensor:
        """[classes * templates, context] token ids, class-major (all templates of class 0 first)."""
        key = _prompts_key(classnames, templates, context_length)
        if key not in self.tokens:
            tokenizer = clip_tokenizer(context_length)
            self.tokens[key] = tokenizer([render(t, c) for c in classnames for t in templates])
        return self.tokens[key]

    def get(
        self,
        model: CLIP,
        version: str,
        classnames: Sequence[str],
        templates: Sequence[str],
        device: torch.device,
        autocast: bool = False,
    ) -> torch.Tensor:
        """[classes, d] float32 unit vectors on the CPU; `version` is `weights_version(model.text)`, computed
        once per evaluation by the caller."""
        context = model.inputs.context_length
        key = (f"{version}-{'bf16' if autocast else 'fp32'}", _prompts_key(classnames, templates, context))
        if key in self.classifiers:
            return self.classifiers[key]
        path = self.directory / f"{key[0]}-{key[1]}.pt" if self.directory is not None else None
        if path is not None and path.is_file():
            weights = torch.load(path, map_location="cpu", weights_only=True)
        else:
            tokens = self.tokenized(classnames, templates, context)
            weights = _build(model, tokens, len(classnames), len(templates), device, autocast)
            self.built += 1
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                partial = path.with_suffix(f".{id(self)}.tmp")
                torch.save(weights, partial)
                partial.replace(path)  # atomic: a parallel evaluation never reads half a file
        self.classifiers[key] = weights
        return weights


@torch.no_grad()
def _build(
    model: CLIP, tokens: torch.Tensor, classes: int, templates: int, device: torch.device, autocast: bool
) -> torch.Tensor:
    was_training = model.training
    model.eval()
    precision = torch.autocast(device.type, dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
    with precision:
        embeddings = [
            model.encode_text(tokens[start : start + PROMPT_BATCH].to(device)).float().cpu()
            for start in range(0, len(tokens), PROMPT_BATCH)
        ]
    model.train(was_training)
    per_class = torch.cat(embeddings).reshape(classes, templates, -1)
    return F.normalize(per_class.mean(dim=1), dim=-1)
