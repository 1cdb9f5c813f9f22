"""`eval.tasks`: evaluation suites that do not depend on the training data, as config sections.

Each task is one zero-shot classification or retrieval benchmark read from one of three layouts:
- `imagefolder`: `path/<class folder>/*.JPEG` (ImageNet's `val/<wnid>/`); the label of an image is the index of
  its folder among the sorted folder names, torchvision's `ImageFolder` rule, which is ImageNet's class order;
- `clip_benchmark`: the DataComp / clip_benchmark webdataset layout (`path/<split>/nshards.txt`, `0.tar`, ...,
  `path/classnames.txt`, `path/zeroshot_classification_templates.txt`, `path/dataset_type.txt`), samples with an
  image member (`webp`, `png`, `jpg`, `jpeg`) and an integer `cls`, or captions in `txt` for retrieval;
- `manifest`: retrieval on a split of the training manifest (`data.root`), or of the manifest under `path`.

The section only says what to read; `core/evaluation/tasks.py` resolves and checks it against the files.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from ablate.core.config.base import StrictModel

TaskFormat = Literal["imagefolder", "clip_benchmark", "manifest"]


class EvalTaskConfig(StrictModel):
    """One evaluation task; its metrics are `eval/zeroshot/<name>/top1|top5` or `eval/retrieval/<name>/...`."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$", description="the task's part of the metric names")
    kind: Literal["zero_shot", "retrieval"] = "zero_shot"
    format: TaskFormat
    path: str | None = Field(None, description="the task's folder; manifest: None reads the training data.root")
    split: str | None = Field(
        None, description="clip_benchmark: the split folder (default test); manifest: default its retrieval.split"
    )
    classnames: str | list[str] | None = Field(
        None,
        description="a built-in name (imagenet1k), a text file with one name per line, or the names; "
        "clip_benchmark: default its classnames.txt",
    )
    templates: str | list[str] | None = Field(
        None,
        description="a built-in name (openai_imagenet, simple_imagenet), a text file with one template per line, "
        "or the templates, each with one {c} or {} for the class name; clip_benchmark: default its "
        "zeroshot_classification_templates.txt, others: openai_imagenet",
    )
    caption: str | None = Field(None, description="manifest retrieval: txt or synN; default its retrieval.caption")
    max_samples: int | None = Field(None, ge=1, description="evaluate on the first N samples only")

    @model_validator(mode="after")
    def _layout_fits_the_kind(self) -> EvalTaskConfig:
        if self.format == "imagefolder" and self.kind != "zero_shot":
            raise ValueError(f"an imagefolder holds classes, so its kind must be zero_shot (got {self.kind!r})")
        if self.format == "manifest" and self.kind != "retrieval":
            raise ValueError(
                "format manifest evaluates retrieval; the manifest's own zero_shot tasks already run on its val split"
            )
        if self.format != "manifest" and self.path is None:
            raise ValueError(f"format {self.format} needs a path (the task's folder)")
        if self.kind == "retrieval" and (self.classnames is not None or self.templates is not None):
            raise ValueError("classnames and templates belong to zero_shot tasks, not retrieval")
        return self
