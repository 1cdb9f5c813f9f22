"""Dataset reinforcement: throughput (samples/s), storage per sample against MobileCLIP's Tab 16 arithmetic, and
what running the teachers with token merging (ToMe) buys and costs.

Same process, same shards, same teachers for every variant, alternating repeats; the figures are ratios against
the exact (r = 0) bf16 run measured here. Teachers are random-init `small` models unless checkpoints are given:
throughput does not depend on the weights, while the cosine of merged to exact embeddings does (pass trained
teachers, e.g. the bundled ones, for a meaningful cosine).

    .venv/bin/python benchmarks/reinforcement.py --samples 128 --repeats 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from ablate.core.config.sections import TeacherSpec
from ablate.core.data.inspect import inspect_shards
from ablate.core.data.reinforce import ReinforceSettings, reinforce_dataset
from ablate.core.data.reinforcement_store import ReinforcementStore
from ablate.core.data.shapes import generate_shapes
from ablate.core.models.factory import create_model

TAB16_SAMPLES = 12_800  # MobileCLIP Tab 16 reports GB per 12.8k samples
TAB16_WIDTH = 1536  # two ViT-L/14 teachers x 768


def tab16_bytes(augmentations: int, texts: int, width: int, bytes_per_value: int) -> int:
    """Embedding payload per sample: (A image rows + 1 + S text rows) x K·d values."""
    return (augmentations + texts) * width * bytes_per_value


def random_teachers(folder: Path, model: str) -> list[TeacherSpec]:
    specs = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        path = folder / f"{model}-{seed}.pt"
        torch.save({"model": create_model(model).state_dict()}, path)
        specs.append(TeacherSpec(model=model, checkpoint=str(path)))
    return specs


def run(source: Path, teachers: list[TeacherSpec], out: Path, settings: ReinforceSettings) -> float:
    started = time.perf_counter()
    info = reinforce_dataset(source, teachers, out, settings, progress=False)
    return sum(info.shards.values()) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=128)
    parser.add_argument("--augmentations", type=int, default=2)
    parser.add_argument("--model", default="small", help="teacher architecture (random init)")
    parser.add_argument("--merge", type=int, default=4, help="ToMe r for the merged variant")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        source = folder / "shapes"
        generate_shapes(source, train=args.samples, val=32, seed=0, samples_per_shard=args.samples)
        teachers = random_teachers(folder, args.model)
        variants = {
            "exact bf16 pth.gz": ReinforceSettings(args.augmentations, embedding_format="pth.gz"),
            "exact fp32 npz": ReinforceSettings(args.augmentations, embedding_format="npz"),
            f"ToMe r={args.merge} bf16": ReinforceSettings(args.augmentations, token_merging_r=args.merge),
        }
        rates: dict[str, list[float]] = {name: [] for name in variants}
        for repeat in range(args.repeats):
            for index, (name, settings) in enumerate(variants.items()):
                rates[name].append(run(source, teachers, folder / f"out-{repeat}-{index}", settings))

        exact = ReinforcementStore(folder / "out-0-0")
        merged = ReinforcementStore(folder / "out-0-2")
        cosines = []
        for uid, row in exact.rows.items():
            a, b = exact.record(row), merged.record(merged.rows[uid])
            for stored, approximate in ((a.image_emb, b.image_emb), (a.text_emb, b.text_emb)):
                for start in range(0, stored.shape[1], stored.shape[1] // 2):  # per teacher slice
                    piece = slice(start, start + stored.shape[1] // 2)
                    cosines.append(torch.cosine_similarity(stored[:, piece], approximate[:, piece], dim=1).mean())
        summaries = {name: inspect_shards([folder / f"out-0-{index}"]) for index, name in enumerate(variants)}

    baseline = statistics.median(rates["exact bf16 pth.gz"])
    texts = 1 + exact.synthetic
    rows = []
    for name, values in rates.items():
        summary = summaries[name]
        embedding_bytes = summary["bytes_per_sample"].get("pth.gz", summary["bytes_per_sample"].get("npz", 0.0))
        rows.append(
            {
                "variant": name,
                "samples_per_s": round(statistics.median(values), 2),
                "speed_ratio": round(statistics.median(values) / baseline, 3),
                "embedding_bytes_per_sample": embedding_bytes,
                "all_bytes_per_sample": summary["total_bytes_per_sample"],
            }
        )
    ours_raw = tab16_bytes(args.augmentations, texts, exact.width, 2)
    paper = {
        f"{a} aug, {s}+1 texts, {'bf16' if b == 2 else 'fp32'}": round(
            tab16_bytes(a, s + 1, TAB16_WIDTH, b) * TAB16_SAMPLES / 1e9, 2
        )
        for a, s, b in ((30, 5, 4), (30, 5, 2), (10, 5, 4), (10, 5, 2), (5, 5, 2), (2, 2, 2))
    }
    report = {
        "teachers": f"2 x {args.model} (random init), width {exact.width}",
        "samples": args.samples,
        "augmentations": args.augmentations,
        "synthetic_captions": exact.synthetic,
        "variants": rows,
        "tome_cosine_to_exact": round(float(torch.stack(cosines).mean()), 5),
        "our_raw_bf16_bytes_per_sample": ours_raw,
        "tab16_embedding_gb_per_12.8k_by_arithmetic": paper,
        "tab16_reported_gb_per_12.8k_including_images": {"30/5 fp32": 3.3, "30/5 bf16": 1.9, "10/5 bf16": 1.4},
    }
    out = Path(__file__).parent / "results" / "reinforcement.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
