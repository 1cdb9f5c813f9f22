"""Caption-quality scores from the stored teacher-ensemble embeddings of reinforced shards.

A DataCompDR record already holds everything a CLIPScore- or SIEVE-style filter needs: every teacher's
embedding of the augmented images, of the alt-text (text row 0) and of the synthetic captions (rows 1..S).
Scoring therefore costs no model forward, only dot products on the stored vectors.

Scores per sample (higher = better caption), each the mean over the K teachers of a cosine computed inside
that teacher's own slice of the stored K·d vector (slices never mix: two teachers' spaces are unrelated):

- `clip_score`: image–alt-text cosine, averaged over the stored augmentations. CLIPScore (Hessel et al.) is
  2.5·max(cos, 0) of one image; the affine map and clipping do not change a ranking, so the raw cosine is kept;
  averaging over the A crops makes it less sensitive to one crop missing the object.
- `caption_agreement`: alt-text–synthetic-caption cosine in the teachers' text space, reduced over the S
  synthetic captions by `mean` (default: agreement with the captioner's distribution; robust to one odd
  top-p sample) or `max` (the best-matching caption). This is SIEVE's signal (papers.md §5) with the teachers'
  text towers in place of SIEVE's sentence encoder.
- `combined`: mean of the two scores' z-scores over the dataset, SIEVE's fusion ("weighted average of
  normalised scores", equal weights). z-scores, not raw values, because the two cosines live on different
  scales (image–text cosines of CLIP models sit near 0.2–0.35, text–text ones near 0.5–0.9), so a raw sum
  would be dominated by whichever spreads more. z-scores keep distance information that ranks throw away (a
  caption far below both distributions stays far below), which matters at the low end where filtering acts.
- `combined_rank`: the mean of the two scores' percentile ranks, the scale-free alternative (robust to heavy
  tails; an option for studies).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

Reduction = Literal["mean", "max"]
SCORE_NAMES: tuple[str, ...] = ("clip_score", "caption_agreement", "combined", "combined_rank")
BASE_SCORES: tuple[str, ...] = ("clip_score", "caption_agreement")


def teacher_slices(teacher_dims: Sequence[int], width: int) -> list[slice]:
    """The column range of each teacher inside the stored concatenation [teacher_1 ‖ … ‖ teacher_K]."""
    if not teacher_dims or any(int(d) <= 0 for d in teacher_dims):
        raise ValueError(f"teacher_dims must be positive widths, got {list(teacher_dims)}")
    if sum(teacher_dims) != width:
        raise ValueError(
            f"teacher_dims {list(teacher_dims)} sum to {sum(teacher_dims)}, but the embeddings are {width} wide"
        )
    bounds = np.cumsum([0, *teacher_dims])
    return [slice(int(a), int(b)) for a, b in itertools.pairwise(bounds)]


def record_scores(
    image_emb: torch.Tensor,
    text_emb: torch.Tensor,
    teacher_dims: Sequence[int],
    agreement: Reduction = "mean",
) -> dict[str, float]:
    """`clip_score` and `caption_agreement` of one record (image_emb [A, K·d], text_emb [1+S, K·d]).

    Each slice is re-normalised: the writer stores unit vectors, but bf16 storage leaves them off by ~1e-3.
    `caption_agreement` is NaN for a record without synthetic captions.
    """
    if image_emb.ndim != 2 or text_emb.ndim != 2 or image_emb.shape[1] != text_emb.shape[1]:
        raise ValueError(f"image_emb {tuple(image_emb.shape)} and text_emb {tuple(text_emb.shape)} must be [rows, K·d]")
    if agreement not in ("mean", "max"):
        raise ValueError(f"agreement must be 'mean' or 'max', got {agreement!r}")
    clip, agree = [], []
    for part in teacher_slices(teacher_dims, image_emb.shape[1]):
        images = F.normalize(image_emb[:, part].double(), dim=-1)
        texts = F.normalize(text_emb[:, part].double(), dim=-1)
        clip.append(float((images @ texts[0]).mean()))
        if texts.shape[0] > 1:
            cosines = texts[1:] @ texts[0]
            agree.append(float(cosines.mean() if agreement == "mean" else cosines.max()))
    return {
        "clip_score": float(np.mean(clip)),
        "caption_agreement": float(np.mean(agree)) if agree else float("nan"),
    }


def zscore(values: np.ndarray) -> np.ndarray:
    """(x − mean) / std over the finite entries (population std); a constant column gives zeros."""
    finite = np.isfinite(values)
    if not finite.any():
        return np.full_like(values, np.nan, dtype=float)
    mean, std = values[finite].mean(), values[finite].std()
    return (values - mean) / std if std > 0 else np.where(finite, 0.0, np.nan)


def percentile_rank(values: np.ndarray) -> np.ndarray:
    """Average rank (ties share their mean rank) scaled to (0, 1]: rank / n."""
    from scipy.stats import rankdata

    return rankdata(values, method="average") / len(values)


def combine(clip_score: np.ndarray, caption_agreement: np.ndarray) -> dict[str, np.ndarray]:
    """`combined` (mean z-score) and `combined_rank` (mean percentile rank) over a whole dataset.

    Samples without synthetic captions (NaN agreement) fall back to their clip_score term alone.
    """
    z_clip, z_agree = zscore(clip_score), zscore(caption_agreement)
    combined = np.where(np.isfinite(z_agree), (z_clip + z_agree) / 2, z_clip)
    has_agree = np.isfinite(caption_agreement)
    rank_agree = np.full_like(clip_score, np.nan)
    if has_agree.any():
        rank_agree[has_agree] = percentile_rank(caption_agreement[has_agree])
    rank_clip = percentile_rank(clip_score)
    combined_rank = np.where(has_agree, (rank_clip + rank_agree) / 2, rank_clip)
    return {"combined": combined, "combined_rank": combined_rank}
