"""Teacher verbs: train the bundled ensemble, store teacher embeddings (`ablate reinforce`)."""

from __future__ import annotations

import logging
from pathlib import Path

import typer

from ablate.ablations.cli.common import USER_ERRORS, app, console, fail, teachers_app
from ablate.core.config.base import ConfigError


@teachers_app.command("train")
def teachers_train(
    steps: int | None = typer.Option(None, help="training steps per teacher (default: the recipe's)"),
    recipe_name: str = typer.Option("bundled", "--recipe", help="bundled (2 small, ~25 min each) | demo (make demo's)"),
) -> None:
    """Train the bundled benchmark's teacher ensemble on clean captions (cached; later commands reuse it)."""
    from dataclasses import replace

    from ablate.core.teachers.bundled import RECIPES, teacher_metrics, train_teachers

    if recipe_name not in RECIPES:
        fail(f"--recipe: unknown recipe {recipe_name!r} (known: {', '.join(RECIPES)})")
    recipe = replace(RECIPES[recipe_name], steps=steps) if steps else RECIPES[recipe_name]
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        specs = train_teachers(recipe)
    except (ValueError, *USER_ERRORS) as err:
        fail(str(err))
    for spec, metrics in zip(specs, teacher_metrics(recipe), strict=False):
        zero_shot = {k.removeprefix("eval/"): round(v, 3) for k, v in metrics.items() if k.startswith("eval/")}
        console.print(f"{spec.model} @ {spec.checkpoint}: {zero_shot}", soft_wrap=True)


@app.command()
def reinforce(
    source: Path | None = typer.Argument(None, help="dataset folder with manifest.json; omitted: the bundled one"),
    out: Path | None = typer.Option(None, help="output folder; omitted with no SOURCE: the bundled cache entry"),
    teacher: list[str] = typer.Option(
        [],
        help="MODEL=WEIGHTS[@SCALE], repeatable: any `ablate models` or open_clip name; WEIGHTS a file, run folder, "
        "hf-hub:org/repo or pretrained tag (local HF cache); omitted: the bundled teachers (trained if missing)",
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
    from ablate.core.config.sections import DataConfig, TeacherSpec
    from ablate.core.data.bundled import resolve_data_root
    from ablate.core.data.reinforce import ReinforceSettings, reinforce_dataset
    from ablate.core.teachers.bundled import bundled_reinforcement, train_teachers

    try:
        if source is None and out is None and not teacher:
            console.print(f"bundled reinforcement: {bundled_reinforcement(DataConfig())}")
            return
        if out is None:
            fail("--out is required when SOURCE or --teacher is given")
        specs = [_teacher_spec(text, TeacherSpec) for text in teacher] if teacher else train_teachers()
        settings = ReinforceSettings(
            augmentations, synthetic, embedding_format, seed=seed, batch_size=batch_size, token_merging_r=merge
        )
        reinforce_dataset(source or resolve_data_root(DataConfig()), specs, out, settings, workers)
    except (ValueError, *USER_ERRORS) as err:
        fail(str(err))


def _teacher_spec(text: str, spec_type: type) -> object:
    """MODEL=WEIGHTS[@SCALE] -> TeacherSpec, checked before any teacher loads: WEIGHTS is a file, a run folder,
    hf-hub:org/repo or a pretrained tag of MODEL (ViT-L-14=datacomp_xl_s13b_b90k@100)."""
    from ablate.core.teachers.ensemble import check_teacher

    model, equals, rest = text.partition("=")
    if not equals or not model or not rest:
        raise ConfigError(f"--teacher {text!r}: expected MODEL=WEIGHTS[@SCALE]")
    checkpoint, at, scale = rest.rpartition("@") if "@" in rest else (rest, "", "")
    try:
        spec = spec_type(model=model, checkpoint=checkpoint, **({"logit_scale": float(scale)} if at else {}))
        check_teacher(spec, "teacher")
    except ValueError as err:
        raise ConfigError(f"--teacher {text!r}: {err}") from None
    return spec
