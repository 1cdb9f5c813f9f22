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
from ablate.ablations.cli.common import app


def main() -> None:
    app()
