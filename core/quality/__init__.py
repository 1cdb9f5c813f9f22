"""Caption quality: scores from stored teacher embeddings, quality-filtered subsets, statistical audits."""

from ablate.core.quality.acceptance import PRESETS, PlanRequest, double_plan, error_rate_interval, single_plan
from ablate.core.quality.scores import SCORE_NAMES
from ablate.core.quality.store import QUALITY_FILE, compute_quality, load_scores, select_uids
from ablate.core.quality.subset import filter_dataset, subset_indices

__all__ = [
    "PRESETS",
    "QUALITY_FILE",
    "SCORE_NAMES",
    "PlanRequest",
    "compute_quality",
    "double_plan",
    "error_rate_interval",
    "filter_dataset",
    "load_scores",
    "select_uids",
    "single_plan",
    "subset_indices",
]
