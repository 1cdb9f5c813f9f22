"""Held-out metrics: retrieval R@k ranks the truth pessimistically, so a collapsed model cannot score well."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ablate.core.data.dataset import EvalDataset
from ablate.core.data.manifest import load_manifest
from ablate.core.evaluation.evaluate import evaluate, recall_at_k
from ablate.core.models.factory import create_model


def test_recall_counts_ties_against_the_truth() -> None:
    # Row 0: the truth is strictly best (rank 0). Row 1: tied with one other (pessimistic rank 1).
    # Row 2: two candidates strictly better (rank 2). Row 3: tied with all four (rank 3).
    similarity = torch.tensor(
        [
            [0.9, 0.1, 0.2, 0.3],
            [0.5, 0.5, 0.1, 0.0],
            [0.8, 0.7, 0.6, 0.1],
            [0.4, 0.4, 0.4, 0.4],
        ]
    )
    assert recall_at_k(similarity, ks=(1, 2, 3, 4)) == {1: 0.25, 2: 0.5, 3: 0.75, 4: 1.0}


def test_a_nan_truth_is_never_a_hit() -> None:
    similarity = torch.tensor([[float("nan"), 0.0], [0.0, 1.0]])
    assert recall_at_k(similarity, ks=(1, 2)) == {1: 0.5, 2: 0.5}


class _Collapsed(nn.Module):
    """A tower whose output does not depend on its input (what an over-pruned model can become)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.value = nn.Parameter(torch.ones(dim))

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.value.expand(inputs.shape[0], -1)


def test_a_collapsed_model_scores_no_better_than_chance_at_retrieval(shapes_root: Path) -> None:
    model = create_model("tiny")
    dim = model.encode_text(torch.zeros(1, model.inputs.context_length, dtype=torch.long)).shape[-1]
    model.visual, model.text = _Collapsed(dim), _Collapsed(dim)
    dataset = EvalDataset(load_manifest(shapes_root), model.inputs, "val", max_samples=64)
    metrics = evaluate(model, dataset, batch_size=64, device=torch.device("cpu"))
    for direction in ("i2t", "t2i"):
        assert metrics[f"eval/retrieval/{direction}_r1"] <= 1 / 64
        assert metrics[f"eval/retrieval/{direction}_r5"] <= 5 / 64
