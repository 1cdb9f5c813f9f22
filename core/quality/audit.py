"""Auditing a shard set's caption error rate with an acceptance-sampling plan (arXiv 2405.11919).

The lot is every sample of one split (e.g. a quality-filtered training set). A seeded permutation of the lot
fixes which items are inspected: stage one reads its first n items, a double plan's stage two the next n, so
the draw is reproducible and the second stage never repeats an item. Judgements ("is this caption wrong for
its image?") come from
- `auto`: the sample's own ground truth (`json.alt_noisy`, which the bundled benchmark carries), or
- a CSV file a person fills in. The first run writes the template (uid, key, caption, synthetic captions, an
  empty `error` column) and stops; the next run reads it. A double plan that does not decide after stage one
  appends the stage-two rows and stops again.
"""

from __future__ import annotations

import csv
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from ablate.core.config.base import ConfigError
from ablate.core.data.manifest import load_manifest
from ablate.core.data.tar_index import IndexedShards
from ablate.core.quality.acceptance import (
    DoublePlan,
    PlanRequest,
    RateInterval,
    SecondSample,
    SinglePlan,
    double_plan,
    error_rate_interval,
    single_plan,
)
from ablate.core.quality.subset import sample_uids

TEMPLATE_COLUMNS = ("stage", "position", "uid", "key", "caption", "synthetic_caption", "error")
_TRUE, _FALSE = {"1", "yes", "y", "true", "t", "x"}, {"0", "no", "n", "false", "f"}


class JudgementsPending(Exception):
    """The judgement file lacks answers; the message says which file and how many rows to fill in."""

    def __init__(self, path: Path, missing: int, stage: int) -> None:
        super().__init__(
            f"{path}: fill in the `error` column (1 = caption wrong, 0 = fine) for {missing} "
            f"stage-{stage} rows, then run the audit again"
        )
        self.path, self.missing, self.stage = path, missing, stage


@dataclass
class AuditReport:
    data_root: str
    split: str
    lot_size: int
    seed: int
    request: dict
    plan: dict
    kind: Literal["single", "double"]
    decision: Literal["accept", "reject"]
    stages: list[dict] = field(default_factory=list)
    interval: dict = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


class Lot:
    """The split being audited: its samples in index order, read on demand."""

    def __init__(self, data_root: Path | str, split: str) -> None:
        self.root, self.split = Path(data_root), split
        self.shards = IndexedShards(load_manifest(data_root).shard_paths(split))
        self.uids = sample_uids(self.shards)

    def __len__(self) -> int:
        return len(self.shards)

    def draw(self, seed: int, count: int) -> np.ndarray:
        """The first `count` items of the lot's seeded permutation."""
        return np.random.default_rng(seed).permutation(len(self))[:count]

    def row(self, index: int, stage: int, position: int) -> dict[str, str]:
        sample = self.shards[int(index)]
        syn = json.loads(sample["syn.json"])["syn_text"] if "syn.json" in sample else []
        return {
            "stage": str(stage),
            "position": str(position),
            "uid": self.uids[int(index)],
            "key": str(sample["__key__"]),
            "caption": sample["txt"].decode("utf-8") if "txt" in sample else "",
            "synthetic_caption": syn[0] if syn else "",
            "error": "",
        }

    def auto_error(self, index: int) -> bool:
        sample = self.shards[int(index)]
        meta = json.loads(sample["json"]) if "json" in sample else {}
        if "alt_noisy" not in meta:
            raise ConfigError(
                f"{self.root} split {self.split!r}: sample {sample['__key__']!r} has no `alt_noisy` in its json, so "
                "it cannot be judged automatically; use a judgement file (--judgements FILE)"
            )
        return bool(meta["alt_noisy"])


def _parse_error(value: str, path: Path, line: int) -> bool | None:
    text = value.strip().lower()
    if not text:
        return None
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ConfigError(f"{path}: line {line}: error = {value!r}; write 1/0 (or yes/no, true/false)")


class FileJudge:
    """Judgements from a CSV a person fills in; writes or extends the template when rows are missing."""

    def __init__(self, path: Path | str, lot: Lot) -> None:
        self.path, self.lot = Path(path), lot

    def _read(self) -> list[dict[str, str]]:
        if not self.path.is_file():
            return []
        with self.path.open(newline="") as handle:
            reader = csv.DictReader(handle)
            missing = set(TEMPLATE_COLUMNS) - set(reader.fieldnames or [])
            if missing:
                raise ConfigError(f"{self.path}: missing columns {sorted(missing)} (expected {list(TEMPLATE_COLUMNS)})")
            return list(reader)

    def _write(self, rows: list[dict[str, str]]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=TEMPLATE_COLUMNS, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)

    def judge(self, indices: np.ndarray, stage: int) -> list[bool]:
        rows = self._read()
        existing = [r for r in rows if r["stage"] == str(stage)]
        wanted = [self.lot.uids[int(i)] for i in indices]
        if not existing:
            start = sum(1 for r in rows if int(r["stage"]) < stage)
            rows += [self.lot.row(i, stage, start + p) for p, i in enumerate(indices)]
            self._write(rows)
            raise JudgementsPending(self.path, len(indices), stage)
        if [r["uid"] for r in existing] != wanted:
            raise ConfigError(
                f"{self.path}: its stage-{stage} rows are not the items this audit draws (another seed, plan or "
                "dataset?); use the same --seed and plan, or start a new judgement file"
            )
        offset = 2 + rows.index(existing[0])  # header is line 1
        answers = [_parse_error(r["error"], self.path, offset + p) for p, r in enumerate(existing)]
        missing = sum(a is None for a in answers)
        if missing:
            raise JudgementsPending(self.path, missing, stage)
        return [bool(a) for a in answers]


def run_audit(
    data_root: Path | str,
    request: PlanRequest | None = None,
    *,
    p_accept: float = 0.01,
    p_reject: float = 0.03,
    alpha: float = 0.01,
    beta: float = 0.05,
    kind: Literal["single", "double"] = "single",
    second_sample: SecondSample = "same_lot",
    split: str = "train",
    seed: int = 0,
    judgements: Path | str | None = None,
    confidence: float = 0.95,
) -> AuditReport:
    """Design the plan for the split's lot size, draw, judge (auto, or from `judgements`), decide.

    Raises `JudgementsPending` when a judgement file still needs answers (it has been written or extended).
    The interval is for the lot's error rate from every item judged.
    """
    lot = Lot(data_root, split)
    request = request or PlanRequest(p_accept, p_reject, alpha, beta, lot_size=len(lot))
    if request.lot_size != len(lot):
        raise ConfigError(f"plan lot_size {request.lot_size} != {len(lot)} samples in {data_root} split {split!r}")
    judge = FileJudge(judgements, lot).judge if judgements else (lambda idx, _stage: [lot.auto_error(i) for i in idx])

    plan: SinglePlan | DoublePlan = single_plan(request) if kind == "single" else double_plan(request, second_sample)
    drawn = lot.draw(seed, plan.n if kind == "single" else min(2 * plan.n, len(lot)))
    stage_items = [drawn[: plan.n]] if kind == "single" else [drawn[: plan.n], drawn[plan.n :]]

    stages: list[dict] = []
    first = judge(stage_items[0], 1)
    errors_first = int(sum(first))
    stages.append(
        {"stage": 1, "inspected": len(first), "errors": errors_first, "error_uids": _errors(lot, stage_items[0], first)}
    )
    if isinstance(plan, SinglePlan):
        decision = plan.decide(errors_first)
    else:
        outcome = plan.decide_first(errors_first)
        stages[0]["outcome"] = outcome
        if outcome == "continue":
            second = judge(stage_items[1], 2)
            stages.append(
                {
                    "stage": 2,
                    "inspected": len(second),
                    "errors": int(sum(second)),
                    "error_uids": _errors(lot, stage_items[1], second),
                }
            )
            decision = plan.decide_second(errors_first, int(sum(second)))
        else:
            decision = outcome
    inspected = sum(s["inspected"] for s in stages)
    interval: RateInterval = error_rate_interval(sum(s["errors"] for s in stages), inspected, len(lot), confidence)
    return AuditReport(
        data_root=str(data_root),
        split=split,
        lot_size=len(lot),
        seed=seed,
        request=asdict(request),
        plan=asdict(plan),
        kind=kind,
        decision=decision,
        stages=stages,
        interval=asdict(interval),
    )


def _errors(lot: Lot, indices: np.ndarray, judged: list[bool]) -> list[str]:
    return [lot.uids[int(i)] for i, bad in zip(indices, judged, strict=True) if bad]
