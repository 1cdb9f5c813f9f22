"""Model verbs: list the factory's models, export a trained one for inference."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.table import Table

from ablate.ablations.cli.common import USER_ERRORS, app, console, fail


@app.command()
def models(
    name: str | None = typer.Argument(None, help="one model; omitted: all"),
    as_json: bool = typer.Option(False, "--json", help="machine-readable output"),
) -> None:
    """List the model factory's names: towers and parameter counts (also without the token embedding). NAME may
    also be any open_clip architecture (ViT-L-14), which the factory builds too."""
    from ablate.core.models.factory import create_model, is_known, list_models, unknown_model_message
    from ablate.core.models.registry import ModelEntry
    from ablate.core.models.summary import model_summary

    entries = [entry for entry in list_models() if name in (None, entry.name)]
    if name and not entries and is_known(name):
        entries = [ModelEntry(name, create_model, f"open_clip architecture {name} (random init)")]
    if name and not entries:
        fail(unknown_model_message(name))
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
    from ablate.core.config.sections import ModelConfig
    from ablate.core.models.export import export_model

    try:
        model_config = ModelConfig(name=model) if model else None
        result = export_model(
            source, out, config=model_config, config_file=config, program=program, tolerance=tolerance
        )
    except (RuntimeError, *USER_ERRORS) as err:
        fail(str(err))
    table = Table("output", "max |Δ| vs train-time", title=f"{result.model_name} step {result.step} → {out}")
    for key, value in result.max_abs_diff.items():
        table.add_row(key, f"{value:.2e}")
    console.print(table)
    console.print(f"checkpoint: {result.checkpoint}", soft_wrap=True)
    console.print(f"program:    {result.program or 'not written'}", soft_wrap=True)
    for note in result.notes:
        console.print(note, soft_wrap=True, highlight=False)
