"""Study reports: a notebook generated from a template, executed, exported to HTML and logged to MLflow.

The notebook is the report's source of truth rather than a by-product: it holds the study name and an absolute
tracking URI in its first cell, so anyone can reopen it in Jupyter and rerun or extend the analysis.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse

import nbformat
from mlflow import MlflowClient
from nbclient import NotebookClient
from nbconvert import HTMLExporter

from ablate.analysis.notebook import fill_parameters, parse_percent
from ablate.analysis.plots import FIGURE_FORMATS
from ablate.analysis.runs import finished, load_runs, study_info

TEMPLATE_DIR = Path(__file__).resolve().parents[1] / "reports" / "templates"
DEFAULT_TEMPLATE = "study_report.py"
NOTEBOOK_NAME = "report.ipynb"
HTML_NAME = "report.html"
FIGURE_DIR = "figures"  # relative to the report folder; the template saves its figures there
ARTIFACT_DIR = "report"


class ReportError(RuntimeError):
    """The study cannot be reported on (no objective recorded) or the template is missing."""


class NoFinishedTrialsError(ReportError):
    """Every trial failed, was pruned or is still running: there are no results to summarise yet."""


def template_path(name: str = DEFAULT_TEMPLATE) -> Path:
    """The template file; `reports/` is not a package, so it is looked up beside the installed sources."""
    path = TEMPLATE_DIR / name
    if not path.is_file():
        raise ReportError(
            f"report template {name!r} not found at {path}: the repository's reports/templates folder "
            "must be present next to the ablate sources (use an editable install or a source checkout)"
        )
    return path


def absolute_tracking_uri(tracking_uri: str, base: Path | None = None) -> str:
    """`tracking_uri` with a relative sqlite or file location resolved against `base` (default: the cwd).

    The notebook runs from its own folder, where `sqlite:///mlflow.db` would name a different, empty store.
    """
    base = Path.cwd() if base is None else base
    if tracking_uri.startswith("sqlite:///"):
        location = tracking_uri.removeprefix("sqlite:///")
        if location.startswith("/"):
            return tracking_uri
        return f"sqlite:///{(base / location).resolve()}"
    scheme = urlparse(tracking_uri).scheme
    if scheme in ("", "file") and not Path(tracking_uri.removeprefix("file:")).is_absolute():
        return (base / tracking_uri.removeprefix("file:")).resolve().as_uri()
    return tracking_uri


def build_report(
    study: str,
    tracking_uri: str,
    out_dir: Path,
    *,
    execute: bool = True,
    log_to_mlflow: bool = True,
    template: str = DEFAULT_TEMPLATE,
    cell_timeout_s: int = 600,
) -> Path:
    """Write `out_dir/report.ipynb` and return its path; when executed, also `report.html` and `figures/`.

    With `log_to_mlflow` the executed report and its figures become artifacts of the study's parent run under
    `report/`, so the MLflow UI shows them next to the trials. A cell that fails still leaves the partially
    executed notebook on disk for debugging before the error propagates.
    """
    tracking_uri = absolute_tracking_uri(tracking_uri)
    out_dir = Path(out_dir).resolve()
    info = study_info(study, tracking_uri)
    if not info["objectives"]:
        raise ReportError(f"study {study!r} has no objective: its parent run lacks the ablate.objective tag")
    if finished(load_runs(study, tracking_uri)).empty:
        raise NoFinishedTrialsError(
            f"study {study!r} has no finished trials in {tracking_uri!r}: nothing to report"
        )

    notebook = parse_percent(template_path(template).read_text(encoding="utf-8"))
    fill_parameters(notebook, {"study": study, "tracking_uri": tracking_uri})
    out_dir.mkdir(parents=True, exist_ok=True)
    notebook_path = out_dir / NOTEBOOK_NAME
    if not execute:
        nbformat.write(notebook, notebook_path)
        return notebook_path

    figure_dir = out_dir / FIGURE_DIR
    _clear_figures(figure_dir)
    client = NotebookClient(
        notebook,
        timeout=cell_timeout_s,
        kernel_name="python3",
        resources={"metadata": {"path": str(out_dir)}},
    )
    try:
        client.execute()
    finally:
        nbformat.write(notebook, notebook_path)
    html, _ = HTMLExporter().from_notebook_node(notebook)
    html_path = out_dir / HTML_NAME
    html_path.write_text(html, encoding="utf-8")
    if log_to_mlflow:
        _log_artifacts(tracking_uri, info["parent_run_id"], [notebook_path, html_path], _figures(figure_dir))
    return notebook_path


def _clear_figures(figure_dir: Path) -> None:
    """Remove figures of an earlier build, so a parameter no longer varied leaves no stale plot."""
    for path in _figures(figure_dir):
        path.unlink()


def _figures(figure_dir: Path) -> list[Path]:
    return sorted(p for fmt in FIGURE_FORMATS for p in figure_dir.glob(f"*.{fmt}"))


def _log_artifacts(tracking_uri: str, run_id: str, documents: list[Path], figures: list[Path]) -> None:
    client = MlflowClient(tracking_uri=tracking_uri)
    for path in documents:
        client.log_artifact(run_id, str(path), ARTIFACT_DIR)
    for path in figures:
        client.log_artifact(run_id, str(path), f"{ARTIFACT_DIR}/{FIGURE_DIR}")
