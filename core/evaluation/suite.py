"""Everything a run evaluates, in one call: the training manifest's held-out split and `eval.tasks`.

The trainer and `ablate eval` both build an `EvaluationSuite` from a run's `eval` section and call it on a
model, so the standalone numbers are the in-training numbers by construction. Metric names:
- the manifest's zero-shot tasks and retrieval: `eval/zeroshot/<task>/top1`, `eval/retrieval/{i2t,t2i}_r{1,5}`
  (on the manifest's `retrieval.split`, default `val`);
- each zero-shot task of `eval.tasks`: `eval/zeroshot/<name>/top1` and `/top5` (clip_benchmark's two);
- each retrieval task: `eval/retrieval/<name>/{i2t,t2i}_r{1,5}`, clip_benchmark's recall (an image counts as
  found when any of its captions is in the top k);
- `eval/zeroshot/mean_top1`: the mean top-1 over every zero-shot task above.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from ablate.core.config.base import ConfigError
from ablate.core.config.sections import EvalConfig
from ablate.core.data.dataset import EvalDataset
from ablate.core.data.manifest import Manifest
from ablate.core.evaluation.classifier import ZeroShotClassifiers, weights_version
from ablate.core.evaluation.config import EvalTaskConfig
from ablate.core.evaluation.evaluate import RECALL_KS, evaluate, evaluation_metric_names
from ablate.core.evaluation.tasks import ResolvedTask, resolve_task
from ablate.core.models.clip import CLIP, InputSpec

TOP_KS = (1, 5)


def resolve_tasks(tasks: Sequence[EvalTaskConfig], data_root: Path | str | None) -> list[ResolvedTask]:
    """Check every task against its files (the dry run's check); names must be unique."""
    seen: set[str] = set()
    for index, task in enumerate(tasks):
        if task.name in seen:
            raise ConfigError(f"eval.tasks[{index}].name: {task.name!r} names two tasks (metric names would clash)")
        seen.add(task.name)
    return [resolve_task(task, f"eval.tasks[{index}]", data_root) for index, task in enumerate(tasks)]


def suite_metric_names(manifest_tasks: Iterable[str], tasks: Sequence[EvalTaskConfig]) -> list[str]:
    """Every name the suite reports for a run with these manifest zero-shot tasks and `eval.tasks`."""
    names = [n for n in evaluation_metric_names(manifest_tasks) if n != "eval/zeroshot/mean_top1"]
    for task in tasks:
        if task.kind == "zero_shot":
            names += [f"eval/zeroshot/{task.name}/top{k}" for k in TOP_KS]
        else:
            names += [f"eval/retrieval/{task.name}/{d}_r{k}" for d in ("i2t", "t2i") for k in RECALL_KS]
    if any(name.startswith("eval/zeroshot/") for name in names):
        names.append("eval/zeroshot/mean_top1")
    return names


class EvaluationSuite:
    """Built once per run: datasets opened at the model's resolution, prompts tokenised once (`classifiers`)."""

    def __init__(
        self,
        config: EvalConfig,
        manifest: Manifest | None,
        inputs: InputSpec,
        classifiers: ZeroShotClassifiers | None = None,
        tasks: Sequence[EvalTaskConfig] | None = None,
        held_out: bool = True,
    ) -> None:
        """`manifest`: the training data (None: none); `tasks`: instead of `config.tasks`; `held_out`: evaluate
        the manifest's own zero-shot tasks and retrieval split (else it only anchors `format: manifest` tasks)."""
        self.batch_size = config.batch_size
        self.classifiers = classifiers or ZeroShotClassifiers()
        self.held_out = None
        if manifest is not None and held_out:
            split = manifest.retrieval.split if manifest.retrieval else "val"
            self.held_out = EvalDataset(manifest, inputs, split, config.max_samples)
        root = manifest.root if manifest is not None else None
        self.tasks = [
            (task, task.dataset(inputs)) for task in resolve_tasks(config.tasks if tasks is None else tasks, root)
        ]

    @torch.no_grad()
    def __call__(self, model: CLIP, device: torch.device, autocast: bool = False) -> dict[str, float]:
        version = weights_version(model.text)  # once per evaluation: the tasks share it
        self.classifiers.keep_only(version)
        metrics: dict[str, float] = {}
        if self.held_out is not None:
            metrics |= evaluate(model, self.held_out, self.batch_size, device, autocast, self.classifiers, version)
            metrics.pop("eval/zeroshot/mean_top1", None)
        for task, dataset in self.tasks:
            if task.config.kind == "zero_shot":
                metrics |= self._zero_shot(model, task, dataset, version, device, autocast)
            else:
                metrics |= self._retrieval(model, task, dataset, device, autocast)
        top1 = [value for key, value in metrics.items() if key.startswith("eval/zeroshot/") and key.endswith("/top1")]
        if top1:
            metrics["eval/zeroshot/mean_top1"] = sum(top1) / len(top1)
        return metrics

    def _zero_shot(self, model, task: ResolvedTask, dataset, version: str, device, autocast: bool) -> dict:
        weights = self.classifiers.get(model, version, task.classnames, task.templates, device, autocast)
        features, labels = [], []
        for images, label in self._batches(model, dataset, autocast, device):
            features.append(model.encode_image(images.to(device)).float().cpu())
            labels.append(torch.as_tensor(label))
        target = torch.cat(labels)
        if (target >= len(task.classnames)).any() or (target < 0).any():
            raise ConfigError(f"{task.where}: a label lies outside the {len(task.classnames)} class names")
        ranked = (torch.cat(features) @ weights.T).topk(min(max(TOP_KS), len(task.classnames)), dim=1).indices
        hits = ranked == target[:, None]
        return {f"eval/zeroshot/{task.name}/top{k}": hits[:, :k].any(dim=1).float().mean().item() for k in TOP_KS}

    def _retrieval(self, model, task: ResolvedTask, dataset, device, autocast: bool) -> dict:
        images, texts, owners, count = [], [], [], 0
        for batch_images, tokens, owner in self._batches(model, dataset, autocast, device, _caption_batch):
            images.append(model.encode_image(batch_images.to(device)).float().cpu())
            if len(tokens):
                texts.append(model.encode_text(tokens.to(device)).float().cpu())
            owners.append(owner + count)
            count += len(batch_images)
        if not texts:
            raise ConfigError(f"{task.where}: no sample has a caption to retrieve")
        image_features, text_features, owner = torch.cat(images), torch.cat(texts), torch.cat(owners)
        recall = multi_caption_recall(image_features, text_features, owner)
        return {f"eval/retrieval/{task.name}/{key}": value for key, value in recall.items()}

    def _batches(self, model: CLIP, dataset, autocast: bool, device: torch.device, collate=None):
        """The dataset in evaluation batches, the model in eval mode and autocast around each batch."""
        was_training = model.training
        model.eval()
        precision = torch.autocast(device.type, dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
        try:
            # Own generator: iterating must not move the global RNG (see evaluate.evaluate).
            for batch in DataLoader(dataset, self.batch_size, generator=torch.Generator(), collate_fn=collate):
                with precision:
                    yield batch
        finally:
            model.train(was_training)


def _caption_batch(samples: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Images stacked, every caption's tokens concatenated, and for each caption the index of its image."""
    images = torch.stack([image for image, _ in samples])
    tokens = torch.cat([captions for _, captions in samples])
    owner = torch.cat([torch.full((len(captions),), i) for i, (_, captions) in enumerate(samples)])
    return images, tokens, owner


def multi_caption_recall(
    image_features: torch.Tensor, text_features: torch.Tensor, owner: torch.Tensor, ks: tuple[int, ...] = RECALL_KS
) -> dict[str, float]:
    """clip_benchmark's retrieval recall with images that own several captions (`owner[j]`: caption j's image).

    i2t: an image is found at k when its best caption ranks within the top k captions; t2i: a caption finds its
    image within the top k images. Ranks are pessimistic as in `evaluate.recall_at_k` (ties count against the
    truth, a NaN truth is a miss), so with one caption per image this equals `recall_at_k`.
    """
    similarity = image_features @ text_features.T  # [images, captions]
    owns = owner[None, :] == torch.arange(len(image_features))[:, None]
    best_own = similarity.masked_fill(~owns, float("-inf")).amax(dim=1, keepdim=True)
    i2t_rank = ((similarity >= best_own) & ~owns).sum(dim=1)
    i2t_rank = torch.where(best_own.squeeze(1).isnan(), len(owner), i2t_rank)  # amax propagates a NaN
    true_scores = similarity.gather(0, owner[None, :]).squeeze(0)  # each caption against its own image
    t2i_rank = ((similarity >= true_scores[None, :]) & ~owns).sum(dim=0)
    t2i_rank = torch.where(true_scores.isnan(), len(image_features), t2i_rank)
    has_caption = owns.any(dim=1)
    metrics = {}
    for k in ks:
        metrics[f"i2t_r{k}"] = (i2t_rank[has_caption] < k).float().mean().item()
        metrics[f"t2i_r{k}"] = (t2i_rank < k).float().mean().item()
    return metrics
