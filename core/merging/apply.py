"""Apply a merge schedule to a model's towers: `apply_token_merging(model, config) -> MergeHandle`.

Towers are found by type under the model: timm `VisionTransformer` (ToMe in every block), timm `FastVit` /
MobileCLIP MCi (merge → attention → unmerge in the attention stage), open_clip `TextTransformer` (ToMe with EOT
and padding respected). A CLIP-like model with `.visual` and `.text` gets `config.image` on the first and
`config.text` on the second; a bare TextTransformer gets `config.text`; any other module is an image tower.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from open_clip.transformer import TextTransformer
from timm.models.fastvit import FastVit
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from ablate.core.merging.fastvit import attention_blocks, patch_fastvit
from ablate.core.merging.handle import MergeHandle
from ablate.core.merging.schedule import MergeSchedule, TokenMergingConfig
from ablate.core.merging.text import patch_text_transformer
from ablate.core.merging.vit import patch_vit


def _find(module: nn.Module, kinds: tuple[type, ...]) -> list[nn.Module]:
    """Outermost modules of the given kinds (a ViT inside a wrapper, not its children)."""
    found: list[nn.Module] = []
    if isinstance(module, kinds):
        return [module]
    for child in module.children():
        found += _find(child, kinds)
    return found


def _patch_image_tower(tower: nn.Module, schedule: MergeSchedule, handle: MergeHandle) -> None:
    vits = _find(tower, (VisionTransformer,))
    if vits:
        for vit in vits:
            patch_vit(vit, schedule, handle)
        return
    if _find(tower, (FastVit,)) or attention_blocks(tower):
        patch_fastvit(tower, schedule, handle)
        return
    raise ValueError(f"token merging: no timm VisionTransformer or FastViT found in {type(tower).__name__}")


def _patch_text_tower(tower: nn.Module, schedule: MergeSchedule, handle: MergeHandle) -> None:
    texts = _find(tower, (TextTransformer,))
    if not texts:
        raise ValueError(f"token merging: no open_clip TextTransformer found in {type(tower).__name__}")
    for text in texts:
        patch_text_transformer(text, schedule, handle)


def apply_token_merging(model: nn.Module, config: TokenMergingConfig | MergeSchedule) -> MergeHandle:
    """Patch the towers' module instances for `config`; `handle.remove()` restores them exactly.

    A bare `MergeSchedule` is the image schedule. Towers whose schedule removes no token are left untouched,
    so r = 0 changes nothing at all.
    """
    if isinstance(config, MergeSchedule):
        config = TokenMergingConfig(image=config)
    handle = MergeHandle(during_training=config.during_training)
    try:
        visual, text = getattr(model, "visual", None), getattr(model, "text", None)
        if visual is not None or text is not None:
            if config.image.enabled and visual is not None:
                _patch_image_tower(visual, config.image, handle)
            if config.text.enabled and text is not None:
                _patch_text_tower(text, config.text, handle)
        elif isinstance(model, TextTransformer):
            if config.text.enabled:
                _patch_text_tower(model, config.text, handle)
        elif config.image.enabled:
            _patch_image_tower(model, config.image, handle)
    except Exception:
        handle.remove()
        raise
    return handle


@contextmanager
def token_merging(model: nn.Module, config: TokenMergingConfig | MergeSchedule) -> Iterator[MergeHandle]:
    """`with token_merging(teacher, schedule): ...` runs the block with merging on, then restores the model.

    Meant for the reinforcement writer: teachers embed every augmentation and caption, so a cheaper forward
    speeds up dataset generation (see benchmarks/token_merging.py for the speed/fidelity trade-off).
    """
    handle = apply_token_merging(model, config)
    try:
        yield handle
    finally:
        handle.remove()
