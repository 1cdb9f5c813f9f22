"""Study reports: a notebook generated from a template, executed, exported to HTML and logged to MLflow.

The notebook is the report's source of truth rather than a by-product: it holds the study name and an absolute
tracking URI in its first cell, so anyone can reopen it in Jupyter and rerun or extend the analysis.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlparse

import nbformat
from nbclient import NotebookClient
from nbconvert import HTMLExporter
from nbformat import NotebookNode

from ablate.analysis.mlflow_client import MlflowClient
from ablate.analysis.notebook import fill_parameters, parse_percent
from ablate.analysis.plots import FIGURE_FORMATS
from ablate.analysis.runs import has_finished_trials, study_info

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


def check_reportable(study: str, tracking_uri: str) -> dict:
    """The study's `study_info`, once it is known to have an objective and at least one finished trial."""
    info = study_info(study, tracking_uri)
    if not info["objectives"]:
        raise ReportError(f"study {study!r} has no objective: its parent run lacks the ablate.objective tag")
    if not has_finished_trials(study, tracking_uri):
        raise NoFinishedTrialsError(f"study {study!r} has no finished trials in {tracking_uri!r}: nothing to report")
    return info


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
    info = check_reportable(study, tracking_uri)
    notebook_path = render_notebook(
        template, {"study": study, "tracking_uri": tracking_uri}, Path(out_dir), execute, cell_timeout_s
    )
    if execute and log_to_mlflow:
        documents = [notebook_path, notebook_path.with_name(HTML_NAME)]
        _log_artifacts(tracking_uri, info["parent_run_id"], documents, figures(notebook_path.parent / FIGURE_DIR))
    return notebook_path


def render_notebook(
    template: str, parameters: Mapping[str, object], out_dir: Path, execute: bool, cell_timeout_s: int
) -> Path:
    """Fill `template`'s parameters cell and write `out_dir/report.ipynb`; when executing, run it from
    `out_dir` (figures land in `out_dir/figures`, cleared first) and export `report.html` beside it."""
    notebook = parse_percent(template_path(template).read_text(encoding="utf-8"))
    fill_parameters(notebook, parameters)
    out_dir = out_dir.resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    notebook_path = out_dir / NOTEBOOK_NAME
    if not execute:
        nbformat.write(notebook, notebook_path)
        return notebook_path
    for path in figures(out_dir / FIGURE_DIR):  # a figure no longer applicable must not linger
        path.unlink()
    _execute(notebook, out_dir, cell_timeout_s, notebook_path)
    html, _ = HTMLExporter().from_notebook_node(notebook)
    (out_dir / HTML_NAME).write_text(html, encoding="utf-8")
    return notebook_path


def figures(figure_dir: Path) -> list[Path]:
    return sorted(p for fmt in FIGURE_FORMATS for p in figure_dir.glob(f"*.{fmt}"))


def _execute(notebook: NotebookNode, out_dir: Path, cell_timeout_s: int, notebook_path: Path) -> None:
    client = NotebookClient(
        notebook, timeout=cell_timeout_s, kernel_name="python3", resources={"metadata": {"path": str(out_dir)}}
    )
    try:
        client.execute()
    finally:
        nbformat.write(notebook, notebook_path)


def _log_artifacts(tracking_uri: str, run_id: str, documents: list[Path], figure_paths: list[Path]) -> None:
    client = MlflowClient(tracking_uri=tracking_uri)
    for path in documents:
        client.log_artifact(run_id, str(path), ARTIFACT_DIR)
    for path in figure_paths:
        client.log_artifact(run_id, str(path), f"{ARTIFACT_DIR}/{FIGURE_DIR}")
