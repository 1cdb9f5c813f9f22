"""What every `ablate` verb shares: the typer apps, the consoles, and one way to fail with a user error.

Expected problems (a bad config, an unknown study, a missing file) are printed as one clear message and exit
with status 2; a traceback means a bug.
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape

from ablate.core.config.base import ConfigError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    help="Ablation studies for efficient CLIP training: train, launch studies, report.",
)
data_app = typer.Typer(no_args_is_help=True, help="Datasets: the bundled benchmark, inspection, quality.")
app.add_typer(data_app, name="data")
teachers_app = typer.Typer(no_args_is_help=True, help="Teacher ensembles for distillation.")
app.add_typer(teachers_app, name="teachers")
cluster_app = typer.Typer(no_args_is_help=True, help="A single-node SLURM cluster with accounting on this machine.")
app.add_typer(cluster_app, name="cluster")
mlflow_app = typer.Typer(no_args_is_help=True, help="The MLflow tracking server trial jobs log through.")
app.add_typer(mlflow_app, name="mlflow")
console = Console()
errors = Console(stderr=True)

RUNS_ROOT = typer.Option(Path("runs"), help="where launched studies keep their files")
# ConfigError covers core.models.UnknownModelError; importing nothing heavier keeps the CLI's start fast.
# Path problems are the user's too: a file where a folder goes, a folder that may not be written.
USER_ERRORS: tuple[type[Exception], ...] = (
    ConfigError,
    FileNotFoundError,
    NotADirectoryError,
    IsADirectoryError,
    PermissionError,
    FileExistsError,
)


MAX_ERROR_LINES, MAX_LINE_CHARS = 12, 400  # messages quote excerpts already; this bounds any that do not


def fail(message: str) -> None:
    lines = [
        line if len(line) <= MAX_LINE_CHARS else line[: MAX_LINE_CHARS - 3] + "..." for line in message.splitlines()
    ]
    if len(lines) > MAX_ERROR_LINES:
        lines = [*lines[:MAX_ERROR_LINES], f"... ({len(lines) - MAX_ERROR_LINES} more lines)"]
    # escaped: a quoted value such as `[/x]` is text, not rich markup (unescaped, it raised a MarkupError);
    # soft-wrapped: rich would otherwise break lines at 80 columns where no terminal is (CI and SLURM logs),
    # splitting a path inside the message into two halves that can no longer be copied or searched for
    errors.print("[bold red]error:[/] " + escape("\n".join(lines)), highlight=False, soft_wrap=True)
    raise typer.Exit(code=2)
