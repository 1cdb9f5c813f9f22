"""Pretrained weights for any model the factory builds, named as open_clip names them, loaded offline.

A weights source is one string, whichever field holds it (`model.pretrained`, `teachers.members[i].checkpoint`):
- a file: an open_clip state dict (`.pt`, `.pth`, `.bin`, `.safetensors`), an open_clip_train `epoch_N.pt`
  (`state_dict` with DDP's `module.` prefixes), one of our `step_*.pt` checkpoints, or Apple's ml-mobileclip
  checkpoints (`mobileclip_s1.pt`, ...; open_clip's `convert_state_dict` maps their keys);
- a run folder of ours (its latest checkpoint);
- `hf-hub:org/repo`: the repo's `open_clip_model.safetensors` (else `open_clip_pytorch_model.bin`);
- a pretrained tag of the model (`openai`, `datacomp_xl_s13b_b90k`, `dfndr2b`): open_clip's registry
  (`open_clip.pretrained`) names the hub repo and file, which are then read like an `hf-hub:` id.
Nothing is ever downloaded: hub files are read from the local Hugging Face cache (`HF_HUB_CACHE`, else
`HF_HOME/hub`) with `local_files_only`, so a missing file is an error that says which repo to fetch, not a
network call. A tag published only as a URL (no hub repo) must be downloaded by hand and given as a file.

Loading reports what it did: tensors loaded, the model's tensors the file lacks (missing), the file's tensors the
model lacks (unexpected) and same-named tensors of another shape (skipped). A file that fits nothing is an error.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

import open_clip
import torch
from huggingface_hub import hf_hub_download
from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError
from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME
from open_clip.convert import convert_state_dict
from open_clip.factory import load_state_dict
from open_clip.model import convert_to_custom_text_state_dict, resize_pos_embed, resize_text_pos_embed

from ablate.core.config.base import ConfigError
from ablate.core.models.clip import CLIP
from ablate.core.models.conversions import apple_mct_to_ours, is_apple_mct, open_clip_text_into_encoder
from ablate.core.training.checkpoint import latest_checkpoint

log = logging.getLogger("ablate.weights")

HUB_PREFIX = "hf-hub:"
HUB_FILES = (HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME)  # open_clip's preference: safetensors first


@dataclass(frozen=True)
class ResolvedWeights:
    """The file a source names and, for a pretrained tag, open_clip's config of that tag (preprocessing)."""

    path: Path
    tag_config: dict = field(default_factory=dict)


@dataclass
class LoadReport:
    """What `load_weights` did; `summary()` is the line the trainer logs."""

    source: str
    path: Path
    loaded: list[str]
    missing: list[str]
    unexpected: list[str]
    mismatched: list[str]
    notes: list[str] = field(default_factory=list)  # how layouts were mapped (conversions.py)

    @property
    def complete(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def summary(self) -> str:
        where = self.source if str(self.path) == self.source else f"{self.source} ({self.path})"
        parts = [f"{len(self.loaded)} tensors loaded from {where}"]
        for name, keys in (("missing", self.missing), ("unexpected", self.unexpected), ("skipped", self.mismatched)):
            if keys:
                parts.append(f"{len(keys)} {name} ({_sample(keys)})")
        return "; ".join(parts + self.notes)


def hub_cache_dir() -> str | None:
    """The Hugging Face cache as huggingface_hub defines it, read now (its constants are frozen at import)."""
    if cache := os.environ.get("HF_HUB_CACHE"):
        return cache
    if home := os.environ.get("HF_HOME"):
        return str(Path(home) / "hub")
    return None


def resolve_weights(model_name: str, source: str, where: str) -> ResolvedWeights:
    """The file `source` names for `model_name`; a ConfigError naming `where` (the field) if there is none."""
    path = Path(source).expanduser()
    if path.is_dir() and not source.startswith(HUB_PREFIX):
        latest = latest_checkpoint(path / "checkpoints") or latest_checkpoint(path)
        if latest is None:
            raise ConfigError(f"{where}: {source!r} is a folder without step_*.pt checkpoints")
        return ResolvedWeights(latest.path)
    if path.is_file():
        return ResolvedWeights(path)
    if source.startswith(HUB_PREFIX):
        repo = source.removeprefix(HUB_PREFIX).strip("/")
        if repo.count("/") >= 2:  # hf-hub:org/repo/file.safetensors names one file of the repo
            owner, name, filename = repo.split("/", 2)
            return ResolvedWeights(_from_hub(f"{owner}/{name}", (filename,), where, source))
        return ResolvedWeights(_from_hub(repo, HUB_FILES, where, source))
    config = open_clip.get_pretrained_cfg(model_name, source)
    if config:
        hub = config.get("hf_hub", "")
        if not hub:
            raise ConfigError(
                f"{where}: tag {source!r} of {model_name} is published only at {config.get('url')}; nothing is "
                "downloaded here: fetch that file yourself and give its path"
            )
        repo, filename = os.path.split(hub)  # open_clip's convention: 'org/repo/' is the repo's default file
        _warn_on_activation_mismatch(model_name, source, config)
        return ResolvedWeights(_from_hub(repo, (filename,) if filename else HUB_FILES, where, source), config)
    tags = open_clip.list_pretrained_tags_by_model(model_name)
    raise ConfigError(
        f"{where}: {source!r} is not a file, a run folder, an hf-hub:org/repo id or a pretrained tag of "
        f"{model_name} (its tags: {', '.join(tags) or 'none'})"
    )


def _from_hub(repo: str, filenames: tuple[str, ...], where: str, source: str) -> Path:
    """The first of `filenames` present in the local cache of `repo`; never a network call."""
    for filename in filenames:
        try:
            return Path(hf_hub_download(repo, filename, cache_dir=hub_cache_dir(), local_files_only=True))
        except LocalEntryNotFoundError:
            continue
        except HFValidationError as err:
            raise ConfigError(f"{where}: {source!r}: not a hub repo id ({err})") from None
    cache = hub_cache_dir() or "the default Hugging Face cache"
    raise ConfigError(
        f"{where}: {source!r}: no {' or '.join(filenames)} of hub repo {repo} in {cache} (offline: run "
        f"`huggingface-cli download {repo}` where there is network, or give a file path)"
    )


def _warn_on_activation_mismatch(model_name: str, tag: str, config: dict) -> None:
    """open_clip's own check: OpenAI's weights were trained with QuickGELU, which `-quickgelu` names select."""
    architecture = open_clip.get_model_config(model_name) or {}
    if bool(config.get("quick_gelu", False)) != bool(architecture.get("quick_gelu", False)):
        log.warning(
            "%s:%s was trained with quick_gelu=%s but %s uses %s; consider the %s architecture",
            model_name,
            tag,
            config.get("quick_gelu", False),
            model_name,
            architecture.get("quick_gelu", False),
            f"{model_name}-quickgelu" if config.get("quick_gelu") else model_name.removesuffix("-quickgelu"),
        )


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a weights file: open_clip's reader (safetensors, `state_dict`, `module.`), plus our checkpoints'
    `model` entry."""
    try:
        state = load_state_dict(str(path))
    except Exception as err:  # a truncated or foreign file: say which one
        raise ConfigError(f"{path}: not a readable weights file ({type(err).__name__}: {err})") from None
    if isinstance(state.get("model"), dict):  # ours: step_*.pt / pruned stage files
        state = state["model"] | state.get("ema", {})  # with optim.ema, the average is the model the run evaluated
    state = {key.removeprefix("module."): value for key, value in state.items() if isinstance(value, torch.Tensor)}
    if not state:
        raise ConfigError(f"{path}: holds no tensors")
    return state


def to_clip_layout(model: CLIP, state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """open_clip's conversions, as its `load_checkpoint` applies them: Apple's ml-mobileclip keys (needs an
    open_clip timm image tower), the pre-CustomTextCLIP layout (text keys at the top level), position
    embeddings resized to the model's grid and context; then ours (conversions.py): Apple's MCt text, and open_clip
    text layers onto our encoder's attention blocks. Returns the state and notes on what was mapped where."""
    if is_apple_mct(state):  # ml-mobileclip's S0: its MCt text is ours renamed; open_clip converts the image
        state = apple_mct_to_ours(state)
    if hasattr(model.visual, "trunk"):
        text = {key: value for key, value in state.items() if key.startswith("text.")}
        state = convert_state_dict(model, {key: value for key, value in state.items() if key not in text}) | text
    state = convert_to_custom_text_state_dict(state)
    if "logit_scale" in state:
        state["logit_scale"] = state["logit_scale"].reshape(model.logit_scale.shape)
    if hasattr(model.visual, "grid_size"):
        resize_pos_embed(state, model)
    if hasattr(model.text, "positional_embedding"):
        resize_text_pos_embed(state, model)
    return open_clip_text_into_encoder(model.text, state)


def load_weights(model: CLIP, model_name: str, source: str, where: str) -> LoadReport:
    """Load what fits of `source` into `model` in place and report the rest; a ConfigError if nothing fits.

    A pretrained tag also sets the model's input normalisation to the tag's (e.g. MobileCLIP2-S3's OpenAI
    mean/std against MobileCLIP's 0/1)."""
    resolved = resolve_weights(model_name, source, where)
    state, notes = to_clip_layout(model, read_state_dict(resolved.path))
    own = model.state_dict()
    fits = {key: value for key, value in state.items() if key in own and own[key].shape == value.shape}
    if not fits:
        raise ConfigError(
            f"{where}: {source!r} ({resolved.path}): no tensor fits model {model_name!r} (the file has e.g. "
            f"{_sample(list(state))}; the model has e.g. {_sample(list(own))})"
        )
    model.load_state_dict(fits, strict=False)
    if "mean" in resolved.tag_config and "std" in resolved.tag_config:
        model.inputs = replace(
            model.inputs, mean=tuple(resolved.tag_config["mean"]), std=tuple(resolved.tag_config["std"])
        )
    return LoadReport(
        source=source,
        path=resolved.path,
        loaded=sorted(fits),
        missing=sorted(set(own) - set(fits)),
        unexpected=sorted(set(state) - set(own)),
        mismatched=sorted(key for key in state if key in own and key not in fits),
        notes=notes,
    )


def _sample(keys: list[str], count: int = 3) -> str:
    shown = ", ".join(keys[:count])
    return f"{shown}, …" if len(keys) > count else shown
