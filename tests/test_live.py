"""`ablate launch`'s live view: the progress file the trainer writes, the rows the launcher reads from it, the
one-line form for logs (non-TTY) and the in-place table (TTY), and why a pruned trial was pruned, checked
against Optuna's own MedianPruner."""

from __future__ import annotations

import io
import json
from pathlib import Path

import optuna
import pytest
from rich.console import Console

from ablate.ablations.live import JobRow, LiveStatus, ended_counts, job_row, status_line
from ablate.ablations.prune_reason import prune_reason
from ablate.ablations.spec import PrunerSpec
from ablate.ablations.trial import JOB_RECORD
from ablate.core.training.progress import PROGRESS_FILE, RunProgress, read_progress

METRIC = "eval/zeroshot/mean_top1"


def test_progress_file_records_steps_loss_and_last_evaluation(tmp_path: Path) -> None:
    with RunProgress(tmp_path, show_bar=False, total=300, start=100) as progress:
        assert read_progress(tmp_path)["step"] == 100  # written on entry: a reader sees the job has begun
        progress.logged(110, 2.5, 40.0)
        progress.evaluated(110, {METRIC: 0.4})
        progress.logged(120, 2.25, 40.0)
    record = read_progress(tmp_path)
    assert (record["step"], record["total"], record["start_step"], record["loss"]) == (120, 300, 100, 2.25)
    assert record["eval_step"] == 110 and record["eval"] == {METRIC: 0.4}
    assert not (tmp_path / "progress.tmp").exists()  # written through a temporary file, then renamed


def test_progress_file_is_optional(tmp_path: Path) -> None:
    with RunProgress(None, show_bar=False, total=10, start=0) as progress:  # ranks > 0 write nothing
        progress.logged(5, 1.0, 1.0)
    assert read_progress(tmp_path) is None


def write_run(run_dir: Path, progress: dict | None, started: float | None) -> Path:
    run_dir.mkdir(parents=True)
    if progress is not None:
        (run_dir / PROGRESS_FILE).write_text(json.dumps(progress))
    if started is not None:
        (run_dir / JOB_RECORD).write_text(json.dumps({"pid": 1, "started": started}))
    return run_dir


def test_job_row_reads_step_loss_objective_elapsed_and_eta(tmp_path: Path) -> None:
    # Resumed at step 100, 50 steps in 100 s (2 s/step); read 10 s after the last update; job started at t=900.
    progress = {
        "step": 150,
        "total": 300,
        "start_step": 100,
        "started": 1000.0,
        "updated": 1100.0,
        "loss": 2.5,
        "eval": {METRIC: 0.41234},
        "eval_step": 150,
    }
    row = job_row("trial 3", 1, write_run(tmp_path / "run", progress, 900.0), METRIC, now=1110.0)
    assert (row.step, row.total, row.loss, row.objective) == (150, 300, 2.5, 0.41234)
    assert row.elapsed_s == 210.0  # since the job started, start-up included
    assert row.eta_s == 150 * 2.0 - 10.0  # steps left at 2 s/step, less the time since the last update


def test_job_row_before_the_first_log_step(tmp_path: Path) -> None:
    row = job_row("trial 0", 0, write_run(tmp_path / "run", None, 990.0), METRIC, now=1000.0)
    assert row == JobRow("trial 0", 0, elapsed_s=10.0)
    assert job_row("trial 0", 0, tmp_path / "absent", METRIC).elapsed_s is None


def test_status_line_names_every_cell() -> None:
    rows = [
        JobRow("trial 3", 0, 120, 300, 2.3104, 0.41234, 62.0, 95.0),
        JobRow("trial 4", 1, 300, 300, 2.0, 0.5, 3725.0, 0.0),
        JobRow("trial 5", 0, elapsed_s=5.0),
    ]
    line = status_line(rows, ended_counts(["complete", "pruned", "complete"]), METRIC)
    assert line == (
        "2 complete, 1 pruned, 0 failed; 3 running"
        " | trial 3 seed 0: 120/300, loss 2.31, mean_top1 0.4123, 1m02s, ETA 1m35s"
        " | trial 4 seed 1: 300/300, loss 2, mean_top1 0.5, 1h02m, finishing"
        " | trial 5 seed 0: starting, 5s"
    )


def test_non_terminal_prints_a_line_every_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    out = io.StringIO()
    console = Console(file=out, force_terminal=False, width=300)
    clock = iter([0.0, 0.0, 10.0, 31.0, 31.0])
    monkeypatch.setattr("ablate.ablations.live.time.monotonic", lambda: next(clock))
    status = LiveStatus(console, METRIC, every_s=30)
    status.start()
    row = JobRow("trial 1", 0, 10, 20, 3.0, None, 4.0, 4.0)
    for _ in range(3):  # at t = 0 (printed), 10 (too soon), 31 (printed)
        status.show([row], ["failed"])
    status.show([], ["failed"])  # nothing running: nothing to say
    status.stop()
    lines = out.getvalue().splitlines()
    assert lines == ["0 complete, 0 pruned, 1 failed; 1 running | trial 1 seed 0: 10/20, loss 3, 4s, ETA 4s"] * 2


def test_terminal_redraws_a_table_in_place() -> None:
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=120)
    status = LiveStatus(console, METRIC, every_s=3600)
    status.start()
    status.show([JobRow("trial 7", 2, 40, 80, 1.5, 0.25, 30.0, 30.0)], ["complete"])
    status.show([JobRow("trial 7", 2, 60, 80, 1.25, 0.3, 45.0, 15.0)], ["complete"])
    status.stop()
    text = out.getvalue()
    assert "60/80" in text and "40/80" in text and "mean_top1" in text  # redrawn at every show, not once a line
    assert "1 running; 1 complete, 0 pruned, 0 failed" in text
    assert "\x1b[" in text  # cursor movement: the table is replaced, not appended


def median_study(values_by_trial: list[dict[int, float]], pruned: dict[int, float]) -> tuple[optuna.Study, int]:
    """Complete trials with these intermediate values, then one trial reporting `pruned`; its number."""
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.MedianPruner(n_startup_trials=1))
    for values in values_by_trial:
        trial = study.ask()
        for step, value in values.items():
            trial.report(value, step)
        study.tell(trial, list(values.values())[-1])
    trial = study.ask()
    for step, value in pruned.items():
        trial.report(value, step)
    assert trial.should_prune()  # the reference: Optuna's own median rule prunes it
    study.tell(trial, state=optuna.trial.TrialState.PRUNED)
    return study, trial.number


def test_prune_reason_is_the_median_rule_with_its_numbers() -> None:
    complete = [{100: 0.40, 200: 0.431}, {100: 0.42, 200: 0.45}, {100: 0.38, 200: 0.41}]
    study, number = median_study(complete, {100: 0.39, 200: 0.402})
    spec = type("Spec", (), {"pruner": PrunerSpec(name="median")})()
    # The trial's best value so far (0.402) against the median of the complete trials at step 200 (0.431).
    assert prune_reason(study, number, spec) == "at step 200 (0.402 < median 0.431 of 3 complete trials)"


def test_prune_reason_widens_digits_where_three_would_tie() -> None:
    study, number = median_study([{10: 0.4312}, {10: 0.4318}], {10: 0.4311})
    spec = type("Spec", (), {"pruner": PrunerSpec(name="median")})()
    assert prune_reason(study, number, spec) == "at step 10 (0.4311 < median 0.4315 of 2 complete trials)"


def test_training_progress_is_said_in_lines_where_the_console_is_no_terminal(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bar is redrawn only on a terminal; in a log (CI, SLURM, a launcher building teachers) the trainer says
    where it is in lines instead, at most every LINE_EVERY_S and at the last step."""
    from ablate.core.training import progress as progress_module

    monkeypatch.setattr(progress_module, "LINE_EVERY_S", 3600.0)
    with progress_module.RunProgress(tmp_path, True, total=20, start=0) as progress:
        progress.logged(10, 2.5, 100.0)  # within the interval: no line
        progress.logged(20, 1.25, 120.0)  # the last step: always a line
    monkeypatch.setattr(progress_module, "LINE_EVERY_S", 0.0)
    with progress_module.RunProgress(tmp_path, True, total=20, start=0) as progress:
        progress.logged(5, 3.0, 90.0)
    out = capsys.readouterr().out
    assert "train step 10/20" not in out
    assert "train step 20/20, loss 1.250, 120 samples/s" in out and "train step 5/20, loss 3.000" in out


def test_a_baseline_is_named_by_its_description_and_a_trial_by_its_parameters() -> None:
    """The demo's baselines expand the `mobileclip` preset into a dozen overrides: listing them wrapped the
    closing table over a dozen lines; a trial's few searched parameters are what tells it apart."""
    from ablate.ablations.scheduler import configuration_text
    from ablate.ablations.spec import load_study

    spec, _ = load_study(Path(__file__).parents[1] / "ablations" / "studies" / "demo.yaml")
    recipe = spec.baselines["mobileclip"]
    assert len(recipe.overrides) > 10 and recipe.description.startswith("the MobileCLIP-S* recipe")
    assert configuration_text(spec, recipe.overrides, "mobileclip") == recipe.description
    assert configuration_text(spec, {"optim.lr": 0.0013274414292574908}, None) == "lr=1.33e-3"
    assert configuration_text(spec, {}, None) == "base configuration"
    spec.baselines["mobileclip"].description = ""
    assert configuration_text(spec, {"loss.lambda": 0.0}, "mobileclip") == "lambda=0"
