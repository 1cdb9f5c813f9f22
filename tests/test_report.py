"""Report generation: template parsing, then real notebook execution against a real MLflow sqlite store."""

from __future__ import annotations

import html as html_module
import re
from pathlib import Path

import nbformat
import pytest
from mlflow import MlflowClient
from mlflow_fixtures import build_study, rich_report

from ablate.analysis import (
    NoFinishedTrialsError,
    ReportError,
    StudyNotFoundError,
    build_comparison_report,
    build_report,
)
from ablate.analysis.notebook import TemplateError, fill_parameters, parse_percent
from ablate.analysis.report import absolute_tracking_uri, template_path

TEMPLATE = '''"""Header, not a cell."""

# %% [markdown]
# # Title
#
# Text with {braces}.

# %% tags=["parameters"]
STUDY = "{study}"
URI = "{tracking_uri}"

# %%
print({"a": 1}, f"{STUDY}")
'''


def _figure_names(out_dir: Path) -> list[str]:
    return sorted(p.name for p in (out_dir / "figures").iterdir())


def _code_cells(notebook_path: Path) -> list[nbformat.NotebookNode]:
    notebook = nbformat.read(notebook_path, as_version=4)
    return [cell for cell in notebook.cells if cell.cell_type == "code"]


def _assert_executed_cleanly(cells: list[nbformat.NotebookNode]) -> None:
    """Every cell ran without error or stderr; all but the parameters cell (assignments only) show output."""
    for cell in cells:
        assert cell.execution_count is not None, cell.source
        assert not [o for o in cell.outputs if o.output_type == "error"], cell.source
        assert not [o for o in cell.outputs if o.get("name") == "stderr"], cell.source
    for cell in cells[1:]:
        assert cell.outputs, cell.source


def test_parse_percent_cells_and_metadata():
    notebook = parse_percent(TEMPLATE)
    assert [c.cell_type for c in notebook.cells] == ["markdown", "code", "code"]
    assert notebook.cells[0].source == "# Title\n\nText with {braces}."
    assert notebook.cells[1].metadata["tags"] == ["parameters"]
    assert notebook.cells[2].source == 'print({"a": 1}, f"{STUDY}")'
    assert notebook.metadata["kernelspec"]["name"] == "python3"
    nbformat.validate(notebook)


def test_fill_parameters_writes_python_literals_into_the_parameters_cell_only():
    notebook = parse_percent(TEMPLATE)
    fill_parameters(notebook, {"study": 'it\'s "odd"', "tracking_uri": "sqlite:////x.db"})
    namespace: dict[str, str] = {}
    exec(notebook.cells[1].source, namespace)
    assert namespace["STUDY"] == 'it\'s "odd"'
    assert namespace["URI"] == "sqlite:////x.db"
    assert notebook.cells[2].source == 'print({"a": 1}, f"{STUDY}")'


def test_fill_parameters_rejects_unknown_and_unfilled_placeholders():
    with pytest.raises(TemplateError, match="exactly once"):
        fill_parameters(parse_percent(TEMPLATE), {"nope": "x"})
    with pytest.raises(TemplateError, match="tracking_uri"):
        fill_parameters(parse_percent(TEMPLATE), {"study": "x"})
    with pytest.raises(TemplateError, match="parameters"):
        fill_parameters(parse_percent("# %%\nx = 1\n"), {"study": "x"})


def test_study_report_template_is_found_and_parses():
    notebook = parse_percent(template_path().read_text())
    code = [c for c in notebook.cells if c.cell_type == "code"]
    assert code[0].metadata["tags"] == ["parameters"]
    assert "from ablate.analysis import" in code[0].source
    with pytest.raises(ReportError, match="not found"):
        template_path("missing.py")


def test_absolute_tracking_uri(tmp_path):
    assert absolute_tracking_uri("sqlite:///mlflow.db", tmp_path) == f"sqlite:///{tmp_path}/mlflow.db"
    assert absolute_tracking_uri("sqlite:////abs/mlflow.db", tmp_path) == "sqlite:////abs/mlflow.db"
    assert absolute_tracking_uri("mlruns", tmp_path) == (tmp_path / "mlruns").as_uri()
    assert absolute_tracking_uri("http://localhost:5000", tmp_path) == "http://localhost:5000"


def test_build_report_executes_exports_and_logs(tmp_path):
    study = build_study(tmp_path)
    out_dir = tmp_path / "report"
    notebook_path = build_report(study.study, study.tracking_uri, out_dir)

    assert notebook_path == out_dir / "report.ipynb"
    cells = _code_cells(notebook_path)
    assert f"STUDY = {study.study!r}" in cells[0].source
    assert f"TRACKING_URI = {study.tracking_uri!r}" in cells[0].source
    _assert_executed_cleanly(cells)

    html = (out_dir / "report.html").read_text()
    assert "mean ± 95% CI" in html
    assert "0.8000 ± 1.2706" in html  # best configuration of the results table
    assert study.config_hashes[2] in html
    assert "data:image/png;base64" in html

    stems = [
        "eval_zeroshot_mean_top1_curves",
        "eval_zeroshot_mean_top1_heatmap_loss.lambda_x_optim.lr",
        "eval_zeroshot_mean_top1_vs_lambda_curve",
        "retrieval",
        *(f"eval_zeroshot_mean_top1_vs_{p}" for p in ("loss.lambda", "optim.lr")),
    ]
    assert _figure_names(out_dir) == sorted(f"{s}.{ext}" for s in stems for ext in ("png", "svg"))

    client = MlflowClient(tracking_uri=study.tracking_uri)
    logged = {a.path for a in client.list_artifacts(study.parent_run_id, "report")}
    assert logged == {"report/report.ipynb", "report/report.html", "report/figures"}
    figures = {Path(a.path).name for a in client.list_artifacts(study.parent_run_id, "report/figures")}
    assert figures == set(_figure_names(out_dir))


@pytest.mark.parametrize(
    ("search_space", "vs_figures"),
    [(["optim.lr"], ["eval_zeroshot_mean_top1_vs_optim.lr"]), ([], [])],
    ids=["one-param", "replicates-only"],
)
def test_build_report_with_one_or_no_varied_param(tmp_path, search_space, vs_figures):
    study = build_study(tmp_path, search_space=search_space, baseline=False, failed=False)
    out_dir = tmp_path / "report"
    build_report(study.study, study.tracking_uri, out_dir, log_to_mlflow=False)

    _assert_executed_cleanly(_code_cells(out_dir / "report.ipynb"))
    stems = ["eval_zeroshot_mean_top1_curves", "retrieval", *vs_figures]
    assert _figure_names(out_dir) == sorted(f"{s}.{ext}" for s in stems for ext in ("png", "svg"))
    assert not MlflowClient(tracking_uri=study.tracking_uri).list_artifacts(study.parent_run_id)


def test_build_report_without_execution_writes_only_the_notebook(tmp_path):
    study = build_study(tmp_path)
    path = build_report(study.study, study.tracking_uri, tmp_path / "report", execute=False)
    assert not _code_cells(path)[0].outputs
    assert sorted(p.name for p in path.parent.iterdir()) == ["report.ipynb"]


def test_build_report_refuses_a_study_without_finished_trials(tmp_path):
    study = build_study(tmp_path, seeds=(), baseline=False, failed=True)
    with pytest.raises(NoFinishedTrialsError, match="no finished trials"):
        build_report(study.study, study.tracking_uri, tmp_path / "report")
    assert not (tmp_path / "report").exists()


def test_build_report_unknown_study(tmp_path):
    study = build_study(tmp_path)
    with pytest.raises(StudyNotFoundError, match="'other'"):
        build_report("other", study.tracking_uri, tmp_path / "report")


def test_rich_report_shows_spec_comparisons_importances_and_every_applicable_figure():
    study, out_dir = rich_report()
    _assert_executed_cleanly(_code_cells(out_dir / "report.ipynb"))
    html = (out_dir / "report.html").read_text()
    text_only = html_module.unescape(re.sub(r"<[^>]+>", "", html))  # code blocks are split into highlighted spans
    for text in (
        "Does distillation weight help a tiny CLIP?",  # the question
        "Study spec (from study/study.json)",
        "Δ vs mobileclip [95% CI]",
        "p (Holm)",
        "Pareto",
        "fANOVA over 6 complete Optuna trials",
        "RuntimeError: loss is NaN",  # the failed trial is listed
        "pruned",
        "2.5 cpu_hours over all runs",
        "ablate launch ablations/studies/quickstart.yaml",
        f"ablate report quickstart --tracking-uri {study.tracking_uri}",
        "MobileCLIP paper (IN-1k, Tab 3b)",
    ):
        assert text in text_only, text
    stems = {p.stem for p in (out_dir / "figures").iterdir()}
    assert {"compute_cpu_hours", "eval_zeroshot_mean_top1_vs_sparsity", "retrieval"} <= stems
    assert "eval_zeroshot_mean_top1_vs_model_params_total_tradeoff" in stems
    assert len(re.findall(r"<img [^>]*src=\"data:image/png;base64,", html)) == len(stems)


def test_comparison_report_puts_two_studies_side_by_side(tmp_path):
    first = build_study(tmp_path / "store", study="alpha")
    build_study(tmp_path / "store", study="beta", seeds=(0, 1, 2), tracking_uri=first.tracking_uri)
    notebook_path = build_comparison_report(["alpha", "beta"], first.tracking_uri, tmp_path / "compare")
    _assert_executed_cleanly(_code_cells(notebook_path))
    assert "STUDIES = ['alpha', 'beta']" in _code_cells(notebook_path)[0].source
    html = (tmp_path / "compare" / "report.html").read_text()
    assert "<code>alpha</code>" in html and "<code>beta</code>" in html
    assert "best configuration" in html
    assert _figure_names(tmp_path / "compare") == [
        "eval_zeroshot_mean_top1_by_study.png",
        "eval_zeroshot_mean_top1_by_study.svg",
    ]
    with pytest.raises(ReportError, match="two different studies"):
        build_comparison_report(["alpha", "alpha"], first.tracking_uri, tmp_path / "again")
    with pytest.raises(StudyNotFoundError, match="gamma"):
        build_comparison_report(["alpha", "gamma"], first.tracking_uri, tmp_path / "again")


def test_cost_table_shows_each_configurations_realised_sparsity():
    """The report's Cost section: per configuration, the mean over replicates of the final model's parameters
    and latency, and the trainer's realised sparsity for compressed runs (none for the dense baseline)."""
    import pandas as pd

    from ablate.analysis import cost_table
    from ablate.analysis.study_data import StudyData

    rows = [("mobileclip", "m", 0.5, 7.8e6, 2.0, None), ("mobileclip", "m", 0.5, 7.8e6, 2.2, None)]
    rows += [(None, "t", 0.5, 4.0e6, 1.2, 0.49), (None, "t", 0.5, 4.2e6, 1.0, 0.51)]
    columns = ["baseline", "config_hash", "param.compression.schedule", "metric.efficiency/params_total"]
    columns += ["metric.efficiency/latency_image_ms", "metric.compression/realised_sparsity"]
    runs = pd.DataFrame(rows, columns=columns).assign(state="finished")
    data = StudyData({"search_space": ["compression.schedule"], "spec": {}}, runs)
    table = cost_table(data)
    assert list(table.columns) == ["parameters", "image latency (ms)", "realised sparsity"]
    compressed = table.drop(index="mobileclip").iloc[0]
    assert compressed.tolist() == pytest.approx([4.1e6, 1.1, 0.5])
    assert table.loc["mobileclip", "parameters"] == 7.8e6 and pd.isna(table.loc["mobileclip", "realised sparsity"])
    _, out_dir = rich_report()
    assert "Cost" in html_module.unescape(re.sub(r"<[^>]+>", "", (out_dir / "report.html").read_text()))
