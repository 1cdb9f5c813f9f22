"""How long `build_report` takes on a study of 500 runs, cold and with the history cache warm.

Builds a synthetic MLflow sqlite store (100 configurations of loss.lambda x loss.alpha, 5 seeds each, plus 5
baseline runs and a failed one, each with train and eval metric histories) in a temporary folder, then times:

- the raw MLflow fetch a report cannot avoid without a cache: `search_runs` over every run, then one
  `get_metric_history` per run for the objective;
- `build_report` with an empty cache (cold) and again (warm: ended runs' histories come from the cache).

Run: `.venv/bin/python benchmarks/report_500_runs.py [--keep DIR]`. Target: the cold report under 60 s.
"""

from __future__ import annotations

import argparse
import itertools
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the synthetic-study builder

from mlflow import MlflowClient
from mlflow_fixtures import DEFAULTS, OBJECTIVE, build_study

from ablate.analysis import build_report
from ablate.analysis.runs import search_all

LAMBDAS = [round(0.1 * i, 1) for i in range(10)]
ALPHAS = [round(0.1 * i, 1) for i in range(10)]
SEEDS = range(5)


def objective(config_index: int, seed_index: int) -> float:
    """Accuracy rising with λ, a bump at α = 0.5, and seed noise: a report with something to find."""
    lam, alpha = LAMBDAS[config_index // len(ALPHAS)], ALPHAS[config_index % len(ALPHAS)]
    return 0.4 + 0.2 * lam - 0.1 * (alpha - 0.5) ** 2 + 0.01 * ((seed_index * 7919 + config_index) % 5 - 2)


def raw_fetch_s(tracking_uri: str, experiment_id: str) -> float:
    """Seconds for what MLflow itself must serve: every run, and the objective's history of each."""
    client = MlflowClient(tracking_uri=tracking_uri)
    start = time.perf_counter()
    runs = search_all(client, experiment_id, "")
    for run in runs:
        client.get_metric_history(run.info.run_id, OBJECTIVE)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", type=Path, help="build the store and reports here and keep them")
    args = parser.parse_args()
    root = args.keep or Path(tempfile.mkdtemp(prefix="ablate-bench-"))
    os.environ["ABLATE_CACHE"] = str(root / "cache")  # cold means cold: no histories cached from elsewhere
    try:
        start = time.perf_counter()
        configs = [{**DEFAULTS, "loss.lambda": lam, "loss.alpha": a} for lam, a in itertools.product(LAMBDAS, ALPHAS)]
        study = build_study(
            root / "store",
            study="bench500",
            search_space=("loss.alpha", "loss.lambda"),
            seeds=SEEDS,
            configs=configs,
            value=objective,
        )
        n_runs = len(study.run_ids)
        print(f"built a store of {n_runs} trial runs in {time.perf_counter() - start:.1f} s")

        raw = raw_fetch_s(study.tracking_uri, study.experiment_id)
        timings = {}
        for label in ("cold", "warm"):
            start = time.perf_counter()
            build_report(study.study, study.tracking_uri, root / "report", log_to_mlflow=False)
            timings[label] = time.perf_counter() - start
        print(f"raw MLflow fetch (search_runs + {n_runs} get_metric_history): {raw:.2f} s")
        for label, seconds in timings.items():
            print(f"build_report {label}: {seconds:.1f} s ({seconds / raw:.1f}x the raw fetch)")
        print(f"target: cold under 60 s -> {'met' if timings['cold'] < 60 else 'MISSED'}")
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
