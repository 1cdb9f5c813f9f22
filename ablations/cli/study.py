"""Study verbs: launch, resume, status, cancel, list and report."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.table import Table

from ablate.ablations.cli.common import RUNS_ROOT, USER_ERRORS, app, console, fail
from ablate.core.config.base import ConfigError

if TYPE_CHECKING:
    from ablate.ablations.scheduler import LaunchResult

STATUS_EVERY = typer.Option(
    30.0, "--status-every", min=1, help="seconds between status lines when the output is not a terminal (logs)"
)


@app.command()
def launch(
    study: Path = typer.Argument(..., help="study YAML (see ablations/studies/)"),
    dry_run: bool = typer.Option(False, "--dry-run", help="validate and show the plan; run nothing"),
    status_every: float = STATUS_EVERY,
) -> None:
    """Run (or continue) an Optuna study whose trials are submitit jobs logging to MLflow."""
    from ablate.ablations.plan import describe, plan_study
    from ablate.ablations.scheduler import launch as run_study
    from ablate.ablations.scheduler import prepare

    try:
        if dry_run:
            spec, base = prepare(study)
            for line in describe(plan_study(spec, base, str(study))):
                # markup=False: plan lines quote the study file ("[int]", a description with "[/x]"), not rich markup
                console.print(line, highlight=False, soft_wrap=True, markup=False)
            return
        _log_to_console()  # the first launch builds bundled data and teachers: say so while it happens
        result = run_study(study, console, status_every)
    except USER_ERRORS as err:
        fail(str(err))
    _print_outcomes(result)


_CONSOLE_LOG = logging.StreamHandler()
_CONSOLE_LOG.setFormatter(logging.Formatter("%(message)s"))


def _log_to_console() -> None:
    """Our own INFO lines (teachers being trained, data being reinforced) on stderr; other libraries stay quiet.
    One handler however often `launch` runs in a process (tests, notebooks), so no line is printed twice."""
    ours = logging.getLogger("ablate")
    _CONSOLE_LOG.setStream(sys.stderr)  # the current one (a test runner swaps it per invocation)
    if _CONSOLE_LOG not in ours.handlers:
        ours.addHandler(_CONSOLE_LOG)
    ours.setLevel(logging.INFO)


def _print_outcomes(result: LaunchResult) -> None:
    from ablate.ablations.scheduler import configuration_text
    from ablate.analysis.formatting import number

    spec = result.spec
    metrics = [objective.metric for objective in spec.objectives]
    table = Table("configuration", "state", *metrics, "params", title=f"study {spec.name}: this launch")
    for outcome in result.outcomes:
        values = [number(v) for v in outcome.values] if outcome.values else ["-"] * len(metrics)
        shown = configuration_text(spec, outcome.params, outcome.baseline)
        table.add_row(outcome.label, outcome.state, *values, shown)
    console.print(table)
    console.print(f"MLflow UI: mlflow ui --backend-store-uri {spec.storage.mlflow}")
    console.print(f"Status:    ablate status {spec.name}    Report: ablate report {spec.name}")


@app.command()
def resume(
    name: str = typer.Argument(..., help="study name"),
    runs_root: Path = RUNS_ROOT,
    status_every: float = STATUS_EVERY,
) -> None:
    """Continue a launched study from its recorded spec (same as launching its file again)."""
    from ablate.ablations.control import STUDY_RECORD, load_recorded_spec
    from ablate.ablations.scheduler import launch as run_study

    try:
        load_recorded_spec(name, runs_root)
        result = run_study(runs_root / name / STUDY_RECORD, console, status_every)
    except USER_ERRORS as err:
        fail(str(err))
    _print_outcomes(result)


@app.command()
def status(
    name: str = typer.Argument(..., help="study name"),
    as_json: bool = typer.Option(False, "--json", help="machine-readable output"),
    runs_root: Path = RUNS_ROOT,
) -> None:
    """Trials by state, the best so far per objective, running jobs and compute spent."""
    from ablate.ablations.control import load_recorded_spec, study_status
    from ablate.analysis.formatting import number, params_text

    try:
        info = study_status(load_recorded_spec(name, runs_root))
    except USER_ERRORS as err:
        fail(str(err))
    if as_json:
        typer.echo(json.dumps(info, indent=2, default=str))
        return
    states = ", ".join(f"{count} {state}" for state, count in info["trials"].items()) or "none"
    gpu = f", {info['gpu_hours']:.3f} GPU-hours" if info["gpu_hours"] else ""
    console.print(
        f"study {name}: {states} of a budget of {info['budget']}; launcher "
        f"{'running' if info['launcher_alive'] else 'not running'}; {info['cpu_hours']:.3f} CPU-hours{gpu}"
    )
    for metric, best in info["best"].items():
        line = f"best {metric}: {number(best['value'])} (trial {best['trial']}, {params_text(best['params'])})"
        console.print(line, highlight=False, markup=False)
    for job in info["running_jobs"]:
        console.print(f"running: pid {job['pid']} in {job['run_dir']}", highlight=False)


@app.command()
def cancel(
    name: str = typer.Argument(..., help="study name"),
    runs_root: Path = RUNS_ROOT,
) -> None:
    """Stop a study: its launcher cancels the running jobs; without a launcher, the jobs are stopped here."""
    from ablate.ablations.control import load_recorded_spec, request_cancel

    try:
        console.print(request_cancel(load_recorded_spec(name, runs_root)))
    except USER_ERRORS as err:
        fail(str(err))


@app.command("list")
def list_command(runs_root: Path = RUNS_ROOT) -> None:
    """The studies launched from this directory, with their trial counts."""
    from ablate.ablations.control import list_studies, load_recorded_spec, study_status

    table = Table("study", "trials", "budget", "description")
    for name in list_studies(runs_root):
        spec = load_recorded_spec(name, runs_root)
        info = study_status(spec)
        states = ", ".join(f"{count} {state}" for state, count in info["trials"].items())
        table.add_row(name, states, str(spec.budget.trials), spec.description)
    console.print(table)


@app.command()
def report(
    name: str = typer.Argument(..., help="study name"),
    compare: str | None = typer.Option(None, "--compare", help="a second study to put side by side with NAME"),
    tracking_uri: str | None = typer.Option(None, help="MLflow URI; default: the one the study was launched with"),
    out: Path | None = typer.Option(None, help="output folder; default reports/NAME (or reports/compare_A_vs_B)"),
    runs_root: Path = RUNS_ROOT,
) -> None:
    """Write reports/NAME/report.ipynb (executed) and report.html from the study's MLflow runs."""
    from ablate.ablations.control import STUDY_RECORD, load_recorded_spec
    from ablate.analysis.comparison_report import build_comparison_report
    from ablate.analysis.report import ReportError, build_report
    from ablate.analysis.runs import StudyNotFoundError
    from ablate.core.config.uris import check_tracking_uri

    try:
        try:
            check_tracking_uri(tracking_uri or "sqlite:///mlflow.db")
        except ValueError as err:
            raise ConfigError(f"--tracking-uri {tracking_uri}: {err}") from None
        launched = (runs_root / name / STUDY_RECORD).is_file()
        uri = tracking_uri or (
            load_recorded_spec(name, runs_root).storage.mlflow if launched else "sqlite:///mlflow.db"
        )
        if compare:
            notebook = build_comparison_report(
                [name, compare], uri, out or Path("reports") / f"compare_{name}_vs_{compare}"
            )
        else:
            notebook = build_report(name, uri, out or Path("reports") / name)
    except (StudyNotFoundError, ReportError, *USER_ERRORS) as err:
        fail(str(err))
    console.print(f"report: {notebook} and {notebook.with_suffix('.html')}", soft_wrap=True)
