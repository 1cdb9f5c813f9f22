"""Parameters and CPU latency of pruned vs unpruned dual encoders (TinyCLIP prune-to-dense). A benchmark, not a
test: run it by hand.

For each model (registry "tiny", "small") and target sparsity q (0.5, 0.75), deterministic masks are set to keep a
fraction √(1−q) of the hidden dims, of every layer's heads and of every FFN's units in both towers (attention and
FFN parameters scale with hidden × heads and hidden × units, so about 1−q of them remain), the model is pruned to
dense, and image + text forward passes are timed at batch 1 and batch 64. Latency is the median over rounds; each
round times every variant once, in turn, so drift on a shared machine hits all of them alike.

    .venv/bin/python benchmarks/pruned_latency.py [--models tiny small] [--threads 1] [--rounds 21]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time

import torch
from rich.console import Console
from rich.table import Table

from ablate.core.compression import CompressionConfig, CompressionStage, Compressor, tower_parameters
from ablate.core.models import CLIP
from ablate.core.models.factory import create_model

SPARSITIES = (0.5, 0.75)
BATCHES = (1, 64)


def keep_fraction_masks(compressor: Compressor, keep: float, seed: int = 0) -> None:
    """Deterministic masks keeping a random `keep` fraction (at least one) of every gate row."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for gate in compressor.gates:
            kept = max(1, round(keep * gate.size))
            order = torch.randperm(gate.size, generator=generator)
            gate.log_alpha.fill_(-10.0)  # P(z≠0) ≈ 3e-4: deterministically off
            gate.log_alpha[order[:kept]] = 10.0


def prune_to(model: CLIP, sparsity: float) -> tuple[CLIP, dict[str, float]]:
    config = CompressionConfig(stages=[CompressionStage(target_sparsity=sparsity, steps=1, mask_steps=1)])
    compressor = Compressor(model, config)
    keep_fraction_masks(compressor, math.sqrt(1 - sparsity))
    dense, result = compressor.prune()
    compressor.detach()
    return dense.eval(), result.counts


def make_inputs(model: CLIP, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    size, length = model.inputs.image_size, model.inputs.context_length
    tokens = torch.randint(1, 49407, (batch, length))
    tokens[:, length // 2] = 49407  # an end-of-text token for argmax pooling
    return torch.randn(batch, 3, size, size), tokens


@torch.inference_mode()
def median_latencies(variants: dict[str, CLIP], batch: int, rounds: int, warmup: int = 3) -> dict[str, float]:
    images, tokens = make_inputs(next(iter(variants.values())), batch)
    for model in variants.values():
        for _ in range(warmup):
            model(images, tokens)
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, model in variants.items():
            start = time.perf_counter()
            model(images, tokens)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["tiny", "small"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=21)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    console, rows = Console(width=200), []
    for name in args.models:
        base = create_model(name).eval()
        variants, counts = {"unpruned": base}, {"unpruned": {**tower_parameters(base), "realised_sparsity": 0.0}}
        for sparsity in SPARSITIES:
            variants[f"q={sparsity}"], counts[f"q={sparsity}"] = prune_to(base, sparsity)
        latency = {batch: median_latencies(variants, batch, args.rounds) for batch in BATCHES}
        for variant in variants:
            row = {"model": name, "variant": variant, **{k: counts[variant][k] for k in ("image", "text", "total")}}
            row["realised_sparsity"] = counts[variant]["realised_sparsity"]
            row["param_ratio"] = counts[variant]["total"] / counts["unpruned"]["total"]
            for batch in BATCHES:
                row[f"ms_b{batch}"] = 1000 * latency[batch][variant]
                row[f"speedup_b{batch}"] = latency[batch]["unpruned"] / latency[batch][variant]
            rows.append(row)

    table = Table(title=f"Pruned vs unpruned, CPU, {args.threads} threads, median of {args.rounds} rounds")
    columns = ["model", "variant", "image", "text", "total", "param_ratio", "realised_sparsity"]
    columns += [f"{kind}_b{batch}" for batch in BATCHES for kind in ("ms", "speedup")]
    for column in columns:
        table.add_column(column, justify="left" if column in ("model", "variant") else "right")
    for row in rows:
        table.add_row(*(f"{row[c]:.3f}" if isinstance(row[c], float) else str(row[c]) for c in columns))
    console.print(table)
    console.print("(image/text/total: parameters, text without its token embedding, as TinyCLIP reports them)")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
