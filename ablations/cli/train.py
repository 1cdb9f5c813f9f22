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
    # Said before each slow phase (torch's import alone takes seconds), so the command is never silent for long.
    console.print("loading torch and reading the config", style="dim")
    from ablate.core.config.loading import load_train_config

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        train_config = load_train_config(config, overrides, preset)
        console.print(
            f"{train_config.model.name}, {train_config.train.steps} steps, run folder {train_config.run_dir}: "
            "preparing the run",
            style="dim",
            highlight=False,
        )
        from ablate.core.teachers.bundled import prepare_inputs
        from ablate.core.training.inputs import unprepared_fields
        from ablate.core.training.runtime import resolve_device
        from ablate.core.training.trainer import train as run_training

        resolve_device(train_config.train.device)  # config-only: fails before any bundled teacher is trained
        if unprepared := unprepared_fields(train_config):
            console.print(f"preparing {', '.join(unprepared)} (bundled: built once into the cache)", style="dim")
        result = run_training(train_config, inputs=prepare_inputs(train_config, train_config.train.progress))
    except USER_ERRORS as err:
        fail(str(err))
    from ablate.analysis.formatting import number

    tracked = f", MLflow run {result.run_id}" if result.run_id else ""
    table = Table("metric", "value", title=f"{result.steps} steps{tracked}")
    for key, value in result.metrics.items():
        table.add_row(key, number(value))
    console.print(table)
