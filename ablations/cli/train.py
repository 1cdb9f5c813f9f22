"""`ablate train`: one training run from a config file, a preset and `--set` overrides."""

from __future__ import annotations

import logging
from pathlib import Path

import typer
from rich.table import Table

from ablate.ablations.cli.common import USER_ERRORS, app, console, fail


@app.command()
def train(
    config: Path | None = typer.Argument(None, help="TrainConfig YAML; omitted: the embedded defaults"),
    overrides: list[str] = typer.Option([], "--set", "-s", help="KEY=VALUE, e.g. optim.lr=1e-3 (repeatable)"),
    preset: str | None = typer.Option(None, help="a named recipe applied before --set, e.g. mobileclip"),
) -> None:
    """Train one model (resumes if its run_dir already holds a checkpoint)."""
    from ablate.core.config.loading import load_train_config
    from ablate.core.teachers.bundled import prepare_inputs
    from ablate.core.training.trainer import train as run_training

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        train_config = load_train_config(config, overrides, preset)
        result = run_training(train_config, inputs=prepare_inputs(train_config, train_config.train.progress))
    except USER_ERRORS as err:
        fail(str(err))
    table = Table("metric", "value", title=f"{result.steps} steps, run {result.run_id}")
    for key, value in result.metrics.items():
        table.add_row(key, f"{value:.4f}")
    console.print(table)
