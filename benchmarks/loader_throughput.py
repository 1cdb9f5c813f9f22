"""Reinforced-loader throughput, and the share of training time the trainer spends waiting for it.

The reinforced loader does, per sample: decode the PNG from its tar shard, replay the stored augmentation
(RandomResizedCrop + RandAugment) at the student's resolution, tokenise the real and synthetic captions, and read
and upcast the bf16 teacher embeddings from a `pth.gz` member. This script measures
1. the loader alone: samples/s of the trainer's DataLoader (StepBatchSampler, batch `--batch`, prefetch 4,
   persistent workers) for each worker count in `--workers`, rounds alternating between counts;
2. the trainer on it: a short `ablate.core.training.trainer.train` run per worker count, reading the
   `train/data_wait_fraction` it logs (time blocked on the loader iterator / step time) from MLflow.

Data: `--reinforcement` (e.g. the bundled one, `ablate reinforce`) over `--data`; without them a 2048-sample
shapes benchmark is generated and reinforced by two random-init `small` teachers (the bundled layout: 2 × 256,
5 augmentations, bf16 pth.gz) under benchmarks/results/loader-data/, reused afterwards. Teacher quality does not
change the loader's work.

    .venv/bin/python benchmarks/loader_throughput.py --workers 0 1 2 --threads 1
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
from mlflow.tracking import MlflowClient
from rich.console import Console
from rich.table import Table
from torch.utils.data import DataLoader

from ablate.core.config.sections import DataConfig, TeacherSpec, TrainConfig
from ablate.core.data.manifest import load_manifest
from ablate.core.data.reinforce import ReinforceSettings, reinforce_dataset
from ablate.core.data.reinforcement_store import ReinforcementStore
from ablate.core.data.sampler import StepBatchSampler
from ablate.core.data.shapes import generate_shapes
from ablate.core.data.train_dataset import TrainDataset
from ablate.core.models.factory import create_model
from ablate.core.training.trainer import train

RESULTS = Path(__file__).parent / "results"


def benchmark_data(folder: Path) -> tuple[Path, Path]:
    """(shapes root, reinforcement) generated once into `folder`."""
    root, out = folder / "shapes", folder / "reinforced"
    generate_shapes(root, train=2048, val=256, seed=0, image_size=64, samples_per_shard=512)
    specs = []
    for seed in range(2):
        path = folder / f"teacher-{seed}.pt"
        if not path.is_file():
            torch.manual_seed(seed)
            torch.save({"model": create_model("small").state_dict()}, path)
        specs.append(TeacherSpec(model="small", checkpoint=str(path), logit_scale=100.0))
    if not (out / "reinforcement.json").is_file() or not list((out / "train").glob("*.tar")):
        reinforce_dataset(root, specs, out, ReinforceSettings(augmentations=5, embedding_format="pth.gz"))
    return root, out


def loader_speed(dataset: TrainDataset, workers: int, batch: int, batches: int, start: int) -> float:
    """samples/s over `batches` batches after the workers' first batch (start-up is not throughput)."""
    sampler = StepBatchSampler(len(dataset), batch, seed=0, start_step=start, end_step=start + batches + 1)
    loader = DataLoader(dataset, batch_sampler=sampler, num_workers=workers, prefetch_factor=4 if workers else None)
    iterator = iter(loader)
    next(iterator)
    began = time.perf_counter()
    for _ in iterator:
        pass
    return batches * batch / (time.perf_counter() - began)


def data_wait(root: Path, reinforcement: Path, workers: int, args: argparse.Namespace, folder: Path) -> dict:
    """A short tracked run of the real trainer; its logged data-wait fractions and samples/s."""
    config = TrainConfig.model_validate(
        {
            "run_dir": str(folder / f"run-{workers}"),
            "model": {"name": args.model},
            "data": {
                "root": str(root),
                "reinforcement": str(reinforcement),
                "captions": "both",
                "num_workers": workers,
            },
            "loss": {"lambda": 1.0},
            "optim": {"warmup_steps": 2},
            "train": {
                "steps": args.train_steps,
                "batch_size": args.batch,
                "log_every": args.train_steps // 3,
                "eval_every": 10**6,
                "checkpoint_every": 10**6,
                "threads": args.threads,
                "progress": False,
            },
            "eval": {"max_samples": 32},
            "tracking": {"uri": f"sqlite:///{folder / 'mlflow.db'}", "experiment": "loader"},
        }
    )
    train(config)
    client = MlflowClient(config.tracking.uri)
    run_id = json.loads((Path(config.run_dir) / "mlflow_run.json").read_text())["run_id"]
    history = {
        name: [m.value for m in client.get_metric_history(run_id, f"train/{name}")]
        for name in ("data_wait_fraction", "samples_per_s")
    }
    return {"workers": workers, **history}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=None, help="shapes-layout root (with --reinforcement)")
    parser.add_argument("--reinforcement", type=Path, default=None)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--batches", type=int, default=12, help="batches per loader measurement")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--train-steps", type=int, default=30)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--skip-trainer", action="store_true")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.reinforcement is None:
        root, reinforcement = benchmark_data(RESULTS / "loader-data")
    else:
        root, reinforcement = args.data, args.reinforcement
    dataset = TrainDataset(
        load_manifest(root),
        create_model(args.model).inputs,
        DataConfig(root=str(root), reinforcement=str(reinforcement), captions="both"),
        seed=0,
        store=ReinforcementStore(reinforcement),
    )
    load_before = os.getloadavg()
    speeds: dict[int, list[float]] = {workers: [] for workers in args.workers}
    for round_index in range(args.rounds):
        for workers in args.workers:
            start = round_index * (args.batches + 1) * 7 + workers  # fresh batches each time: no page-cache favours
            speeds[workers].append(loader_speed(dataset, workers, args.batch, args.batches, start))
    waits = []
    if not args.skip_trainer:
        with tempfile.TemporaryDirectory() as folder:
            waits = [data_wait(root, reinforcement, workers, args, Path(folder)) for workers in args.workers]
    report = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "settings": {k: str(v) for k, v in vars(args).items()},
        "cpus": len(os.sched_getaffinity(0)),
        "load_average": [load_before, os.getloadavg()],
        "loader_samples_per_s": {str(k): v for k, v in speeds.items()},
        "trainer": waits,
    }
    out = RESULTS / f"loader_throughput-{int(time.time())}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    table = Table(title=f"reinforced loader (captions: both), batch {args.batch}, {report['cpus']} CPUs")
    for column in ("workers", "loader samples/s (median)", "rounds", "trainer data wait", "trainer samples/s"):
        table.add_column(column)
    by_workers = {entry["workers"]: entry for entry in waits}
    for workers, values in speeds.items():
        entry = by_workers.get(workers, {})
        wait = entry.get("data_wait_fraction", [])
        table.add_row(
            str(workers),
            f"{statistics.median(values):.0f}",
            " ".join(f"{value:.0f}" for value in values),
            " ".join(f"{100 * value:.1f}%" for value in wait),
            " ".join(f"{value:.1f}" for value in entry.get("samples_per_s", [])),
        )
    Console().print(table)
    Console().print(f"load average {report['load_average']}; written to {out}")


if __name__ == "__main__":
    main()
