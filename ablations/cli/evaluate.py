"""`ablate eval`: evaluate a run folder, checkpoint or export on its own evaluation or on `--tasks`."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from ablate.ablations.cli.common import USER_ERRORS, app, console, fail


def read_tasks(path: Path) -> list:
    """`eval.tasks` from a YAML file: a `tasks:` list, or a run config's `eval.tasks`; errors name the field."""
    from pydantic import ValidationError

    from ablate.core.config.base import ConfigError, StrictModel
    from ablate.core.config.loading import describe_validation_error, read_yaml
    from ablate.core.evaluation.config import EvalTaskConfig

    class TaskFile(StrictModel):
        tasks: list[EvalTaskConfig]

    tree = read_yaml(path)
    if "tasks" not in tree and isinstance(tree.get("eval"), dict) and "tasks" in tree["eval"]:
        tree = {"tasks": tree["eval"]["tasks"]}
    if "tasks" not in tree:
        raise ConfigError(f"{path}: expected a 'tasks:' list (or a run config with eval.tasks)")
    try:
        return TaskFile.model_validate({"tasks": tree["tasks"]}).tasks
    except ValidationError as err:
        raise ConfigError(describe_validation_error(err, TaskFile, str(path))) from None


@app.command("eval")
def evaluate(
    source: Path = typer.Argument(
        ..., help="a run folder, a checkpoints/step_*.pt file or an exported model_reparam.pt"
    ),
    tasks: Path | None = typer.Option(None, "--tasks", help="YAML with a tasks: list; omitted: the run's evaluation"),
    config: Path | None = typer.Option(None, help="the run's TrainConfig YAML, if the run folder cannot say"),
    model: str | None = typer.Option(None, help="model name, for a checkpoint without a run config"),
    device: str = typer.Option("cpu", help="cpu or cuda"),
    log: bool = typer.Option(True, "--log/--no-log", help="log the metrics to the run's MLflow run"),
    cache: bool = typer.Option(True, "--cache/--no-cache", help="keep zero-shot classifiers on disk for next time"),
) -> None:
    """Zero-shot and retrieval metrics of a saved model, logged to its run at the checkpoint's step."""
    from ablate.core.evaluation.standalone import evaluate_saved

    try:
        chosen = read_tasks(tasks) if tasks is not None else None
        result = evaluate_saved(
            source, chosen, config_file=config, model_name=model, device=device, log=log, disk_cache=cache
        )
    except USER_ERRORS as err:
        fail(str(err))
    where = f"logged to run {result.run_id}" if result.run_id else "not logged"
    table = Table("metric", "value", title=f"step {result.step} of {result.checkpoint} ({where})")
    for key, value in result.metrics.items():
        table.add_row(key, f"{value:.4f}")
    console.print(table)
