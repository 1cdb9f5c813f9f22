"""`ablate data ...`: render the bundled benchmark, inspect shards, filter by caption quality, audit."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.table import Table

from ablate.ablations.cli.common import USER_ERRORS, console, data_app, fail


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
        fail(str(err))
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
        fail(str(err))
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
    from ablate.core.quality.detection import detect_noise, noisy_labels
    from ablate.core.quality.store import (
        QUALITY_FILE,
        compute_quality,
        load_reinforcement_info,
        load_scores,
        ranked_keep,
    )
    from ablate.core.quality.subset import filter_dataset

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
        fail(str(err))
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
        fail(f"--preset {preset!r}: choose one of {sorted(PRESETS)}")
    if plan not in ("single", "double") or second_sample not in ("same_lot", "remaining_lot"):
        fail(f"--plan {plan!r} / --second-sample {second_sample!r}: single|double and same_lot|remaining_lot")
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
        fail(str(err))
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
