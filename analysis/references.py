"""Published numbers a study's figures can be read against.

Only numbers printed in the papers are here: MobileCLIP (arXiv 2311.17049), Table 3b. They come from another
scale (DataCompDR-12M, ViT-B/16, 30k iterations) and another benchmark, so figures show them on a secondary
axis, clearly labelled, as a shape to compare with and never as a level.
"""

from __future__ import annotations

from dataclasses import dataclass

LAMBDA_PARAM = "param.loss.lambda"


@dataclass(frozen=True)
class PaperCurve:
    """A published metric as a function of one parameter."""

    label: str
    param: str
    x: tuple[float, ...]
    y: tuple[float, ...]
    unit: str


_LAMBDAS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
MOBILECLIP_LAMBDA_IN1K = PaperCurve(
    "MobileCLIP paper (IN-1k, Tab 3b)",
    LAMBDA_PARAM,
    _LAMBDAS,
    (54.4, 56.3, 57.4, 58.2, 59.5, 60.3, 60.7, 61.5, 61.6, 61.7),
    "IN-1k zero-shot top-1 (%)",
)
MOBILECLIP_LAMBDA_FLICKR = PaperCurve(
    "MobileCLIP paper (Flickr30k, Tab 3b)",
    LAMBDA_PARAM,
    _LAMBDAS,
    (71.4, 71.5, 71.8, 72.2, 73.8, 73.6, 74.2, 73.1, 73.2, 72.0),
    "Flickr30k retrieval (%)",
)


def paper_reference(metric: str, param: str) -> PaperCurve | None:
    """The published curve matching a metric against a parameter: zero-shot against the IN-1k column of
    MobileCLIP's λ ablation, retrieval against its Flickr30k column; None when nothing comparable exists."""
    if param != LAMBDA_PARAM:
        return None
    name = metric.removeprefix("metric.")
    if name.startswith("eval/zeroshot/"):
        return MOBILECLIP_LAMBDA_IN1K
    if name.startswith("eval/retrieval/"):
        return MOBILECLIP_LAMBDA_FLICKR
    return None
