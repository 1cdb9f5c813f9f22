"""Zero-shot classification and image<->text retrieval on a held-out split.

Zero-shot follows open_clip's `build_zero_shot_classifier`: each class embedding is the renormalised mean of
its prompt-template embeddings; an image is assigned the class with the highest cosine similarity. Retrieval
ranks all held-out captions for each image (and all images for each caption); R@k is the fraction whose true
partner is among the top k, ties counting against the truth (see `recall_at_k`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable

import torch
from torch.utils.data import DataLoader

from ablate.core.data.dataset import EvalDataset
from ablate.core.evaluation.classifier import ZeroShotClassifiers, weights_version
from ablate.core.evaluation.prompts import canonical_template
from ablate.core.models.clip import CLIP

RECALL_KS = (1, 5)


def evaluation_metric_names(tasks: Iterable[str]) -> list[str]:
    """The names `evaluate` logs for these zero-shot tasks (studies validate their objectives against it)."""
    names = [f"eval/zeroshot/{task}/top1" for task in tasks]
    if names:
        names.append("eval/zeroshot/mean_top1")
    return names + [f"eval/retrieval/{d}_r{k}" for d in ("i2t", "t2i") for k in RECALL_KS]


def recall_at_k(similarity: torch.Tensor, ks: tuple[int, ...] = RECALL_KS) -> dict[int, float]:
    """Row i's true partner is column i; R@k = fraction of rows where it ranks within the top k.

    The rank is pessimistic: every other candidate scoring at least as high as the truth ranks above it. With
    "strictly better" ranks a collapsed model (constant embeddings, all scores tied) would score R@k = 1.0;
    this way it scores 0, and a NaN truth (nothing compares >= NaN) is a miss, never a hit.
    """
    true_scores = similarity.diagonal().unsqueeze(1)
    others = ~torch.eye(*similarity.shape, dtype=torch.bool, device=similarity.device)
    rank = ((similarity >= true_scores) & others).sum(dim=1)
    rank = torch.where(true_scores.squeeze(1).isnan(), similarity.shape[1], rank)
    return {k: (rank < k).float().mean().item() for k in ks}


@torch.no_grad()
def evaluate(
    model: CLIP,
    dataset: EvalDataset,
    batch_size: int,
    device: torch.device,
    autocast: bool = False,
    classifiers: ZeroShotClassifiers | None = None,
    version: str | None = None,
) -> dict[str, float]:
    """The manifest's zero-shot tasks and retrieval on `dataset`; samples without a caption take part in
    zero-shot only. `classifiers`/`version`: a shared cache and the text tower's `weights_version`."""
    classifiers = classifiers or ZeroShotClassifiers()
    version = version or weights_version(model.text)
    was_training = model.training
    model.eval()
    precision = torch.autocast(device.type, dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
    images, texts, labels, captioned = [], [], [], []
    with precision:
        # Its own generator: a DataLoader draws a base seed when iterated, which must not move the global RNG
        # (masks sample from it), or how often a run evaluates would change how it trains.
        for image, tokens, label in DataLoader(dataset, batch_size=batch_size, generator=torch.Generator()):
            images.append(model.encode_image(image.to(device)).float().cpu())
            has_text = tokens.any(dim=1)  # a missing caption is all zeros
            if has_text.any():
                texts.append(model.encode_text(tokens[has_text].to(device)).float().cpu())
            labels.append(label)
            captioned.append(has_text)
    model.train(was_training)
    weights_by_task = {
        name: classifiers.get(
            model,
            version,
            task.classnames,
            [canonical_template(t, f"zero_shot.{name}.templates") for t in task.templates],
            device,
            autocast,
        )
        for name, task in dataset.tasks.items()
    }
    image_features, label_matrix = torch.cat(images), torch.cat(labels)

    metrics: dict[str, float] = {}
    for column, (name, weights) in enumerate(weights_by_task.items()):
        target = label_matrix[:, column]
        known = target >= 0
        if known.any():
            predicted = (image_features[known] @ weights.T).argmax(dim=1)
            metrics[f"eval/zeroshot/{name}/top1"] = (predicted == target[known]).float().mean().item()
    top1 = [value for key, value in metrics.items() if key.endswith("/top1")]
    if top1:
        metrics["eval/zeroshot/mean_top1"] = sum(top1) / len(top1)

    if not texts:
        return metrics
    similarity = image_features[torch.cat(captioned)] @ torch.cat(texts).T
    for direction, matrix in (("i2t", similarity), ("t2i", similarity.T)):
        for k, value in recall_at_k(matrix).items():
            metrics[f"eval/retrieval/{direction}_r{k}"] = value
    return metrics
