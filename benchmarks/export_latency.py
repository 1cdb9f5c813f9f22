"""CPU latency of the train-time model versus its reparameterised form and its torch.export program, measured in
the same process with the same threads and inputs. A benchmark, not a test: run it by hand.

For each model and tower (batch 1, eval mode, inference mode) it reports the median latency of
- train: the model as trained (MobileOne/RepMixer/RepCPE/Text-RepMixer branches, BatchNorms);
- reparam: `reparameterize(model)` (every branch folded into one conv), what `ablate export` writes;
- program: the exported `torch.export` program of the reparameterised model, run through `.module()`;
and the ratios reparam/train and program/train (< 1 means faster), plus the largest |Δ| of the outputs.

    .venv/bin/python benchmarks/export_latency.py [--models tiny mobileclip-tiny MobileCLIP-S0] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from ablate.core.models.efficiency import example_inputs, fixed_threads, median_seconds
from ablate.core.models.factory import create_model
from ablate.core.models.reparam import reparameterize

DEFAULT_MODELS = ("tiny", "mci-tiny", "mct-tiny", "mobileclip-tiny", "MobileCLIP-S0")


def measure(name: str, repeats: int, warmup: int) -> list[dict[str, object]]:
    torch.manual_seed(0)
    trained = create_model(name).eval()
    inference = reparameterize(trained)
    images, tokens = example_inputs(trained, 1)
    rows = []
    for tower, inputs in (("visual", images), ("text", tokens)):
        train_tower, inference_tower = getattr(trained, tower), getattr(inference, tower)
        program = torch.export.export(inference_tower, (inputs,)).module()
        with torch.inference_mode():
            expected = train_tower(inputs)
            diff = max((expected - candidate(inputs)).abs().max().item() for candidate in (inference_tower, program))
            seconds = {
                label: median_seconds(lambda module=module, inputs=inputs: module(inputs), repeats, warmup)
                for label, module in (("train", train_tower), ("reparam", inference_tower), ("program", program))
            }
        rows.append(
            {
                "model": name,
                "tower": tower,
                **{f"{label}_ms": 1000 * value for label, value in seconds.items()},
                "reparam_ratio": seconds["reparam"] / seconds["train"],
                "program_ratio": seconds["program"] / seconds["train"],
                "max_abs_diff": diff,
                "params_train": sum(p.numel() for p in train_tower.parameters()),
                "params_reparam": sum(p.numel() for p in inference_tower.parameters()),
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = parser.parse_args()

    with fixed_threads(args.threads):
        rows = [row for name in args.models for row in measure(name, args.repeats, args.warmup)]
    table = Table(
        "model", "tower", "train ms", "reparam ms", "program ms", "reparam/train", "program/train", "max |Δ|",
        title=f"CPU latency, batch 1, {args.threads} thread(s), median of {args.repeats}",
    )  # fmt: skip
    for row in rows:
        table.add_row(
            row["model"],
            row["tower"],
            f"{row['train_ms']:.2f}",
            f"{row['reparam_ms']:.2f}",
            f"{row['program_ms']:.2f}",
            f"{row['reparam_ratio']:.2f}",
            f"{row['program_ratio']:.2f}",
            f"{row['max_abs_diff']:.1e}",
        )
    Console().print(table)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
