"""The `ablate` command line: thin typer verbs over library calls (each tested directly).

Expected problems (a bad config, an unknown study, a missing file) are printed as one clear message and exit
with status 2; a traceback means a bug.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.table import Table

from ablate.core.config_io import ConfigError
from ablate.core.models import UnknownModelError

if TYPE_CHECKING:
    from ablate.ablations.scheduler import LaunchResult

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
USER_ERRORS: tuple[type[Exception], ...] = (ConfigError, FileNotFoundError, UnknownModelError)


def _fail(message: str) -> None:
    errors.print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(code=2)


@app.command()
def train(
    config: Path | None = typer.Argument(None, help="TrainConfig YAML; omitted: the embedded defaults"),
    overrides: list[str] = typer.Option([], "--set", "-s", help="KEY=VALUE, e.g. optim.lr=1e-3 (repeatable)"),
    preset: str | None = typer.Option(None, help="a named recipe applied before --set, e.g. mobileclip"),
) -> None:
    """Train one model (resumes if its run_dir already holds a checkpoint)."""
    from ablate.core.config_io import load_train_config
    from ablate.core.trainer import train as run_training

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        train_config = load_train_config(config, overrides, preset)
        result = run_training(train_config)
    except USER_ERRORS as err:
        _fail(str(err))
    table = Table("metric", "value", title=f"{result.steps} steps, run {result.run_id}")
    for key, value in result.metrics.items():
        table.add_row(key, f"{value:.4f}")
    console.print(table)


@app.command()
def launch(
    study: Path = typer.Argument(..., help="study YAML (see ablations/studies/)"),
    dry_run: bool = typer.Option(False, "--dry-run", help="validate and show the plan; run nothing"),
) -> None:
    """Run (or continue) an Optuna study whose trials are submitit jobs logging to MLflow."""
    from ablate.ablations.plan import describe, plan_study
    from ablate.ablations.scheduler import launch as run_study
    from ablate.ablations.scheduler import prepare

    try:
        if dry_run:
            spec, base = prepare(study)
            for line in describe(plan_study(spec, base, str(study))):
                console.print(line, highlight=False, soft_wrap=True)
            return
        result = run_study(study, console)
    except USER_ERRORS as err:
        _fail(str(err))
    _print_outcomes(result)


def _print_outcomes(result: LaunchResult) -> None:
    spec = result.spec
    metrics = [objective.metric for objective in spec.objectives]
    table = Table("configuration", "state", *metrics, "params", title=f"study {spec.name}: this launch")
    for outcome in result.outcomes:
        values = [f"{v:.4f}" for v in outcome.values] if outcome.values else ["-"] * len(metrics)
        table.add_row(outcome.label, outcome.state, *values, json.dumps(outcome.params, default=str))
    console.print(table)
    console.print(f"MLflow UI: mlflow ui --backend-store-uri {spec.storage.mlflow}")
    console.print(f"Status:    ablate status {spec.name}    Report: ablate report {spec.name}")


@app.command()
def resume(
    name: str = typer.Argument(..., help="study name"),
    runs_root: Path = RUNS_ROOT,
) -> None:
    """Continue a launched study from its recorded spec (same as launching its file again)."""
    from ablate.ablations.control import STUDY_RECORD, load_recorded_spec
    from ablate.ablations.scheduler import launch as run_study

    try:
        load_recorded_spec(name, runs_root)
        result = run_study(runs_root / name / STUDY_RECORD, console)
    except USER_ERRORS as err:
        _fail(str(err))
    _print_outcomes(result)


@app.command()
def status(
    name: str = typer.Argument(..., help="study name"),
    as_json: bool = typer.Option(False, "--json", help="machine-readable output"),
    runs_root: Path = RUNS_ROOT,
) -> None:
    """Trials by state, the best so far per objective, running jobs and compute spent."""
    from ablate.ablations.control import load_recorded_spec, study_status

    try:
        info = study_status(load_recorded_spec(name, runs_root))
    except USER_ERRORS as err:
        _fail(str(err))
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
        console.print(f"best {metric}: {best['value']:.4f} (trial {best['trial']}, {best['params']})", highlight=False)
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
        _fail(str(err))


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

    launched = (runs_root / name / STUDY_RECORD).is_file()
    uri = tracking_uri or (load_recorded_spec(name, runs_root).storage.mlflow if launched else "sqlite:///mlflow.db")
    try:
        if compare:
            notebook = build_comparison_report(
                [name, compare], uri, out or Path("reports") / f"compare_{name}_vs_{compare}"
            )
        else:
            notebook = build_report(name, uri, out or Path("reports") / name)
    except (StudyNotFoundError, ReportError, *USER_ERRORS) as err:
        _fail(str(err))
    console.print(f"report: {notebook} and {notebook.with_suffix('.html')}", soft_wrap=True)


@data_app.command("shapes")
def data_shapes(
    out: Path = typer.Option(..., help="output folder (manifest.json + train/ and val/ shards)"),
    train: int = typer.Option(20000, help="training samples"),
    val: int = typer.Option(1000, help="held-out samples"),
    seed: int = typer.Option(0),
    image_size: int = typer.Option(64, help="pixels per side"),
    noisy_fraction: float = typer.Option(0.3, help="fraction of alt-texts that are uninformative or wrong"),
    workers: int = typer.Option(1, help="processes"),
) -> None:
    """Render the synthetic shapes benchmark as webdataset shards (deterministic from the seed)."""
    from ablate.core.data.shapes import generate_shapes

    try:
        manifest = generate_shapes(
            out,
            train=train,
            val=val,
            seed=seed,
            image_size=image_size,
            noisy_fraction=noisy_fraction,
            workers=workers,
            progress=True,
        )
    except (ValueError, *USER_ERRORS) as err:
        _fail(str(err))
    counts = {split: info["num_samples"] for split, info in manifest["splits"].items()}
    console.print(f"wrote {counts} to {out}")


@data_app.command("inspect")
def data_inspect(
    shards: list[Path] = typer.Argument(..., help="tar shards or folders holding them"),
    as_json: bool = typer.Option(False, "--json", help="machine-readable output"),
) -> None:
    """Samples, members, embedding shapes/dtypes, augmentations, synthetic captions and bytes per sample."""
    from ablate.core.data.inspect import inspect_shards

    try:
        summary = inspect_shards(shards)
    except (ValueError, *USER_ERRORS) as err:
        _fail(str(err))
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
        return
    table = Table("field", "value", show_header=False)
    for key, value in summary.items():
        shown = "\n".join(f"{k}: {v}" for k, v in value.items()) if isinstance(value, dict) else str(value)
        table.add_row(key, "\n".join(value) if isinstance(value, list) else shown)
    console.print(table)


@data_app.command("filter")
def data_filter(
    reinforced: Path = typer.Argument(..., help="reinforced folder (reinforcement.json + DataCompDR-layout shards)"),
    out: Path = typer.Option(..., help="new dataset folder: manifest.json, kept train shards, reinforced/"),
    score: str = typer.Option("combined", help="clip_score, caption_agreement, combined or combined_rank"),
    keep: float = typer.Option(..., help="fraction of samples to keep (highest scores), in (0, 1]"),
    data: Path | None = typer.Option(None, help="image dataset; default: the reinforcement's source"),
    agreement: str = typer.Option("mean", help="reduce alt-vs-synthetic cosines by mean or max (new scores only)"),
    rescore: bool = typer.Option(False, help="recompute quality.parquet even if it exists"),
) -> None:
    """Keep the best-captioned fraction of a reinforced dataset as a new dataset (scores cached beside shards)."""
    from ablate.core.quality import QUALITY_FILE, compute_quality, filter_dataset, load_scores
    from ablate.core.quality.detection import detect_noise, noisy_labels
    from ablate.core.quality.store import load_reinforcement_info, ranked_keep

    try:
        if rescore or not (reinforced / QUALITY_FILE).is_file():
            compute_quality(reinforced, agreement)  # type: ignore[arg-type]
        scores = load_scores(reinforced)
        kept = set(scores.loc[ranked_keep(scores, score, keep, str(reinforced / QUALITY_FILE)), "uid"])
        source = data or Path(load_reinforcement_info(reinforced).source)
        result = filter_dataset(
            source, kept, out, reinforced=reinforced, provenance={"score": score, "keep_fraction": keep}
        )
    except (ValueError, *USER_ERRORS) as err:
        _fail(str(err))
    console.print(f"kept {result.kept} of {result.total} samples by {score} -> {out}", highlight=False)
    try:
        labels = noisy_labels(source)
    except (ValueError, *USER_ERRORS):
        return  # real data: no ground truth to report against
    table = Table("score", "precision", "recall", "AUROC", title="finding noisy alt-texts (flag = lowest scores)")
    for name in [c for c in scores.columns if c != "uid"]:
        found = detect_noise(scores, labels, name, flag_fraction=1 - keep)
        table.add_row(name, f"{found.precision:.3f}", f"{found.recall:.3f}", f"{found.auroc:.3f}")
    console.print(table)


@data_app.command("audit")
def data_audit(
    data: Path = typer.Argument(..., help="dataset folder with manifest.json (e.g. the output of data filter)"),
    split: str = typer.Option("train"),
    preset: str = typer.Option("strict", help="strict, relaxed (the paper's plans), strict_table, relaxed_table"),
    p_accept: float | None = typer.Option(None, help="acceptable error rate (overrides the preset)"),
    p_reject: float | None = typer.Option(None, help="rejectable error rate"),
    alpha: float | None = typer.Option(None, help="producer's risk"),
    beta: float | None = typer.Option(None, help="consumer's risk"),
    plan: str = typer.Option("single", help="single or double"),
    second_sample: str = typer.Option("same_lot", help="double plans: same_lot (paper) or remaining_lot (exact)"),
    seed: int = typer.Option(0, help="which items are drawn"),
    judgements: Path | None = typer.Option(None, help="CSV to fill in; omitted: judge from json alt_noisy"),
    confidence: float = typer.Option(0.95, help="of the error-rate interval"),
    report: Path | None = typer.Option(None, help="write the audit report JSON here"),
) -> None:
    """Accept or reject a shard set from a small judged sample (hypergeometric acceptance sampling)."""
    from ablate.core.quality.acceptance import PRESETS
    from ablate.core.quality.audit import JudgementsPending, run_audit

    if preset not in PRESETS:
        _fail(f"--preset {preset!r}: choose one of {sorted(PRESETS)}")
    if plan not in ("single", "double") or second_sample not in ("same_lot", "remaining_lot"):
        _fail(f"--plan {plan!r} / --second-sample {second_sample!r}: single|double and same_lot|remaining_lot")
    chosen = dict(zip(("p_accept", "p_reject", "alpha", "beta"), PRESETS[preset], strict=True))
    given = {"p_accept": p_accept, "p_reject": p_reject, "alpha": alpha, "beta": beta}
    chosen.update({k: v for k, v in given.items() if v is not None})
    try:
        result = run_audit(
            data,
            **chosen,
            kind=plan,
            second_sample=second_sample,
            split=split,
            seed=seed,  # type: ignore[arg-type]
            judgements=judgements,
            confidence=confidence,
        )
    except JudgementsPending as pending:
        console.print(str(pending), highlight=False, soft_wrap=True)
        raise typer.Exit(code=3) from None
    except (ValueError, *USER_ERRORS) as err:
        _fail(str(err))
    if report:
        report.write_text(result.to_json() + "\n")
    shown = {k: v for k, v in result.plan.items() if k in ("n", "c", "c1", "c2")}
    console.print(f"lot {result.lot_size}, {plan} plan {shown} for {chosen}", highlight=False)
    for stage in result.stages:
        console.print(f"stage {stage['stage']}: {stage['errors']} errors in {stage['inspected']}", highlight=False)
    ci = result.interval
    console.print(
        f"[bold]{result.decision.upper()}[/]; error rate {ci['estimate']:.4f} "
        f"({ci['confidence']:.0%} exact interval {ci['lower']:.4f}-{ci['upper']:.4f})",
        highlight=False,
    )


@teachers_app.command("train")
def teachers_train(
    steps: int | None = typer.Option(None, help="training steps per teacher (default: the bundled recipe's)"),
) -> None:
    """Train the bundled benchmark's teacher ensemble on clean captions (cached; later commands reuse it)."""
    from dataclasses import replace

    from ablate.core.bundled_teachers import BUNDLED_RECIPE, teacher_metrics, train_teachers

    recipe = replace(BUNDLED_RECIPE, steps=steps) if steps else BUNDLED_RECIPE
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        specs = train_teachers(recipe)
    except (ValueError, *USER_ERRORS) as err:
        _fail(str(err))
    for spec, metrics in zip(specs, teacher_metrics(recipe), strict=False):
        zero_shot = {k.removeprefix("eval/"): round(v, 3) for k, v in metrics.items() if k.startswith("eval/")}
        console.print(f"{spec.model} @ {spec.checkpoint}: {zero_shot}", soft_wrap=True)


@app.command()
def reinforce(
    source: Path | None = typer.Argument(None, help="dataset folder with manifest.json; omitted: the bundled one"),
    out: Path | None = typer.Option(None, help="output folder; omitted with no SOURCE: the bundled cache entry"),
    teacher: list[str] = typer.Option(
        [], help="MODEL=CHECKPOINT[@SCALE], repeatable; omitted: the bundled teachers (trained if missing)"
    ),
    augmentations: int = typer.Option(5, help="stored augmentations per image (MobileCLIP: 30 for 12M, 10 for 1B)"),
    synthetic: int | None = typer.Option(None, help="synthetic captions to embed per image (default: all)"),
    embedding_format: str = typer.Option("pth.gz", "--format", help="pth.gz (bf16) or npz (fp32)"),
    batch_size: int = typer.Option(256, help="augmented images per teacher forward"),
    workers: int = typer.Option(1, help="processes, each reinforcing whole shards"),
    seed: int = typer.Option(0),
    merge: int = typer.Option(0, help="run the teachers with ToMe, merging this many tokens per layer (0: exact)"),
) -> None:
    """Store teacher embeddings of A augmentations, the caption and S synthetic captions (DataCompDR layout)."""
    from ablate.core.bundled_teachers import bundled_reinforcement, train_teachers
    from ablate.core.config import DataConfig, TeacherSpec
    from ablate.core.data.bundled import resolve_data_root
    from ablate.core.data.reinforce import ReinforceSettings, reinforce_dataset

    try:
        if source is None and out is None and not teacher:
            console.print(f"bundled reinforcement: {bundled_reinforcement(DataConfig())}")
            return
        if out is None:
            _fail("--out is required when SOURCE or --teacher is given")
        specs = [_teacher_spec(text, TeacherSpec) for text in teacher] if teacher else train_teachers()
        settings = ReinforceSettings(
            augmentations, synthetic, embedding_format, seed=seed, batch_size=batch_size, token_merging_r=merge
        )
        reinforce_dataset(source or resolve_data_root(DataConfig()), specs, out, settings, workers)
    except (ValueError, *USER_ERRORS) as err:
        _fail(str(err))


def _teacher_spec(text: str, spec_type: type) -> object:
    """MODEL=CHECKPOINT[@SCALE] -> TeacherSpec."""
    model, equals, rest = text.partition("=")
    if not equals or not model or not rest:
        raise ConfigError(f"--teacher {text!r}: expected MODEL=CHECKPOINT[@SCALE]")
    checkpoint, at, scale = rest.rpartition("@") if "@" in rest else (rest, "", "")
    try:
        return spec_type(model=model, checkpoint=checkpoint, **({"logit_scale": float(scale)} if at else {}))
    except ValueError as err:
        raise ConfigError(f"--teacher {text!r}: {err}") from None


@app.command()
def models(
    name: str | None = typer.Argument(None, help="one model; omitted: all"),
    as_json: bool = typer.Option(False, "--json", help="machine-readable output"),
) -> None:
    """List the model factory's names: towers and parameter counts (also without the token embedding)."""
    from ablate.core.models import list_models
    from ablate.core.models.summary import model_summary

    entries = [entry for entry in list_models() if name in (None, entry.name)]
    if name and not entries:
        _fail(str(UnknownModelError(f"unknown model {name!r}; available: {[e.name for e in list_models()]}")))
    rows = [model_summary(entry) for entry in entries]
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    table = Table("name", "image tower", "text tower", "image M", "text M", "total M", "w/o tok-emb M", "px", "ctx")
    for row in rows:
        table.add_row(
            row["name"],
            row["image_tower"],
            row["text_tower"],
            f"{row['image'] / 1e6:.2f}",
            f"{row['text'] / 1e6:.2f}",
            f"{row['total'] / 1e6:.2f}",
            f"{row['total_no_token_embedding'] / 1e6:.2f}",
            str(row["image_size"]),
            str(row["context_length"]),
        )
    console.print(table)


@app.command()
def export(
    source: Path = typer.Argument(..., help="a run folder (its latest checkpoint) or a checkpoints/step_*.pt file"),
    out: Path = typer.Option(..., "--out", help="folder for model_reparam.pt, model.pt2 and export.json"),
    config: Path | None = typer.Option(None, help="the run's TrainConfig YAML, if the run folder cannot say"),
    model: str | None = typer.Option(None, help="model name, for a checkpoint of a default-option model"),
    program: bool = typer.Option(True, "--program/--no-program", help="also write a torch.export program"),
    tolerance: float = typer.Option(1e-5, help="largest |Δ| of outputs allowed against the train-time model"),
) -> None:
    """Fold every train-time branch (MobileOne, RepMixer, RepCPE, Text-RepMixer) and write the inference model."""
    from ablate.core.config import ModelConfig
    from ablate.core.models.export import export_model

    try:
        model_config = ModelConfig(name=model) if model else None
        result = export_model(
            source, out, config=model_config, config_file=config, program=program, tolerance=tolerance
        )
    except (RuntimeError, *USER_ERRORS) as err:
        _fail(str(err))
    table = Table("output", "max |Δ| vs train-time", title=f"{result.model_name} step {result.step} → {out}")
    for key, value in result.max_abs_diff.items():
        table.add_row(key, f"{value:.2e}")
    console.print(table)
    console.print(f"checkpoint: {result.checkpoint}", soft_wrap=True)
    console.print(f"program:    {result.program or 'not written'}", soft_wrap=True)
    for note in result.notes:
        console.print(note, soft_wrap=True, highlight=False)


CLUSTER_DIR = typer.Option(
    None, "--folder", help="state, logs and config; default $ABLATE_CLUSTER_DIR or ~/.local/state"
)


def _cluster_config(folder: Path | None):
    from ablate.slurm.cluster import ClusterConfig

    return ClusterConfig(folder=folder) if folder else ClusterConfig()


def _print_cluster(info: dict, as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(info, indent=2))
        return
    for daemon, pid in info["daemons"].items():
        console.print(f"{daemon:10} {'pid ' + str(pid) if pid else 'not running'}")
    console.print(f"ready: {info['ready']}; state and logs in {info['folder']}", soft_wrap=True)
    if not info["system_conf_linked"]:
        console.print(f"export SLURM_CONF={info['slurm_conf']}", soft_wrap=True)


@cluster_app.command("up")
def cluster_up(folder: Path | None = CLUSTER_DIR, as_json: bool = typer.Option(False, "--json")) -> None:
    """Install (apt-get, as root) if needed and start munge, MariaDB, slurmdbd, slurmctld, slurmd; idempotent."""
    from ablate.slurm.cluster import ClusterError, up

    try:
        _print_cluster(up(_cluster_config(folder)), as_json)
    except ClusterError as err:
        _fail(str(err))


@cluster_app.command("down")
def cluster_down(folder: Path | None = CLUSTER_DIR) -> None:
    """Stop the daemons `up` started (by their recorded pids); state and logs stay for the next `up`."""
    from ablate.slurm.cluster import down

    stopped = down(_cluster_config(folder))
    console.print(f"stopped: {', '.join(stopped) or 'nothing was running'}")


@cluster_app.command("status")
def cluster_status(folder: Path | None = CLUSTER_DIR, as_json: bool = typer.Option(False, "--json")) -> None:
    """Which daemons run, and whether the node takes jobs."""
    from ablate.slurm.cluster import status

    _print_cluster(status(_cluster_config(folder)), as_json)


@mlflow_app.command("serve")
def mlflow_serve(
    backend_store_uri: str = typer.Option("sqlite:///mlflow.db", help="where runs are stored"),
    host: str = typer.Option("127.0.0.1", help="listen address; 0.0.0.0 lets other nodes log (trusted networks)"),
    port: int = typer.Option(5000),
    artifacts: Path = typer.Option(Path("mlartifacts"), help="where the server keeps artifacts"),
) -> None:
    """Serve MLflow for trial jobs (1 worker, no job execution); studies log to it with storage.mlflow: URL."""
    from ablate.slurm.mlflow_server import serve

    console.print(f"MLflow at http://{host}:{port} (storage.mlflow in a study file); Ctrl-C stops it")
    raise typer.Exit(code=serve(backend_store_uri, host, port, artifacts))


def main() -> None:
    app()
