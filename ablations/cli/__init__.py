"""The `ablate` command line: thin typer verbs over library calls (each tested directly), one module per verb
group: `train`, `study` (launch, resume, status, cancel, list, report), `data`, `teachers` (and reinforce),
`models` (and export), `eval`, `services` (cluster, mlflow)."""

# Importing a verb module registers its verbs; `ablate --help` lists them in this order.
# isort: off
from ablate.ablations.cli import train  # noqa: F401
from ablate.ablations.cli import study  # noqa: F401
from ablate.ablations.cli import data  # noqa: F401
from ablate.ablations.cli import teachers  # noqa: F401
from ablate.ablations.cli import models  # noqa: F401
from ablate.ablations.cli import evaluate  # noqa: F401
from ablate.ablations.cli import services  # noqa: F401

# isort: on
import logging
import os
import sys

from ablate.ablations.cli.common import app


def main() -> None:
    """The console script and `python -m ablate`. When a command has returned, what it wrote is closed (checkpoints,
    MLflow runs, reports; the launcher's fork server and the trainer's loader workers are stopped), so it leaves
    through os._exit: the interpreter's teardown of torch, timm and mlflow took ~2.4 s after every command and
    wrote nothing. An exception still leaves the normal way, with its traceback."""
    try:
        app()
        code: int | str | None = 0
    except SystemExit as end:
        code = end.code
    if isinstance(code, str):  # what the interpreter would do with sys.exit("message")
        print(code, file=sys.stderr)
        code = 1
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code or 0)
