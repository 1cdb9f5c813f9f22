"""The bundled benchmark's teachers and its reinforced copy, built once into the cache and reused.

MobileCLIP distils from teachers far stronger than the student (ViT-L/14s trained on billions of clean pairs).
The bundled counterpart: K = 2 `small` models (about 2.7x the `tiny` student's parameters) trained from
different seeds on the benchmark's clean synthetic captions, while students see the noisy alt-text. Like the
benchmark itself, the teachers and the reinforcement are generated on first use under a file lock, so parallel
trials wait for one builder instead of racing, and `ablate teachers train` / `ablate reinforce` can prebuild them.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from ablate.core.config.sections import DataConfig, TeacherSpec, TrainConfig
from ablate.core.data.bundled import cache_dir, resolve_data_root
from ablate.core.data.manifest import load_manifest
from ablate.core.data.reinforce import ReinforceSettings, read_info, reinforce_dataset
from ablate.core.training.inputs import (
    RunInputs,
    check_auto_inheritance,
    direct_inputs,
    explicit_inheritance,
    unprepared_fields,
)
from ablate.core.training.trainer import train


@dataclass(frozen=True)
class TeacherRecipe:
    """How the bundled teachers are trained; its hash names their cache folder."""

    models: tuple[str, ...] = ("small", "small")
    # 300 steps left the teachers no better than a λ = 0 student on zero-shot (0.444 vs 0.442: shape stayed at
    # chance); at 1200 they learn some shape (teacher 0: zero-shot 0.536, i2t R@1 0.47). ~25 min each on 2 cores.
    steps: int = 1200
    batch_size: int = 64
    lr: float = 1e-3
    caption: str = "syn"
    data_train: int = 20000
    data_val: int = 1000
    data_seed: int = 0
    logit_scale: float = 100.0  # DataCompDR's teacher multiplier (papers.md §7 item 4)

    def key(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:12]


log = logging.getLogger("ablate.teachers")

BUNDLED_RECIPE = TeacherRecipe()
# `make demo`'s teacher (`teachers.recipe: demo`): the whole demo must fit ~12 minutes on 2 cores, so one `tiny`
# teacher trained on the clean captions of the demo's own 4000-image benchmark, with twice the student's batch
# (2 threads: nothing else runs yet) for 3x its steps: its edge over the student is data (clean captions only)
# and compute (6x the samples), not size, which also lets the compressed arm inherit it by `inherit: auto`.
DEMO_RECIPE = TeacherRecipe(models=("tiny",), steps=300, batch_size=128, lr=2e-3, data_train=4000, data_val=1000)
RECIPES = {"bundled": BUNDLED_RECIPE, "demo": DEMO_RECIPE}  # the values of TeachersConfig.recipe
BUNDLED_REINFORCEMENT = ReinforceSettings(augmentations=2, synthetic_captions=None, embedding_format="pth.gz")


@contextmanager
def _exclusive(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def teacher_folder(recipe: TeacherRecipe = BUNDLED_RECIPE) -> Path:
    return cache_dir() / "teachers" / recipe.key()


def _teacher_run_dir(recipe: TeacherRecipe, index: int) -> Path:
    return teacher_folder(recipe) / f"teacher-{index}"


def teacher_config(recipe: TeacherRecipe, index: int, run_dir: Path, progress: bool = True) -> TrainConfig:
    """Teacher k: its recipe's model trained from seed k on clean captions, untracked (it is a cache entry)."""
    return TrainConfig.model_validate(
        {
            "seed": index,
            "run_dir": str(run_dir),
            "model": {"name": recipe.models[index]},
            "data": {
                "captions": recipe.caption,
                "shapes_train": recipe.data_train,
                "shapes_val": recipe.data_val,
                "shapes_seed": recipe.data_seed,
            },
            "optim": {"lr": recipe.lr, "warmup_steps": min(100, recipe.steps // 10)},
            "train": {
                "steps": recipe.steps,
                "batch_size": recipe.batch_size,
                "eval_every": max(1, recipe.steps // 6),
                "checkpoint_every": max(1, recipe.steps // 4),
                "keep_checkpoints": 1,
                "progress": progress,
            },
            "tracking": {"enabled": False},
        }
    )


def train_teachers(recipe: TeacherRecipe = BUNDLED_RECIPE, progress: bool = True) -> list[TeacherSpec]:
    """Train (or finish training) every teacher of `recipe`; cached, so a second call returns at once."""
    folder = teacher_folder(recipe)
    specs = []
    with _exclusive(folder):
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "recipe.json").write_text(json.dumps(asdict(recipe), indent=2))
        for index, model in enumerate(recipe.models):
            run_dir = _teacher_run_dir(recipe, index)
            done = run_dir / "result.json"
            if not done.is_file():
                log.info(
                    "training teacher %d of %d (%s, %d steps at batch %d) into %s: built once, cached afterwards",
                    index + 1,
                    len(recipe.models),
                    model,
                    recipe.steps,
                    recipe.batch_size,
                    run_dir,
                )
                result = train(teacher_config(recipe, index, run_dir, progress))
                done.write_text(json.dumps({"steps": result.steps, "metrics": result.metrics}, indent=2))
            specs.append(TeacherSpec(model=model, checkpoint=str(run_dir), logit_scale=recipe.logit_scale))
    return specs


def teacher_metrics(recipe: TeacherRecipe = BUNDLED_RECIPE) -> list[dict[str, float]]:
    """Final evaluation of each trained teacher (empty if not trained yet)."""
    folder = teacher_folder(recipe)
    results = [folder / f"teacher-{index}" / "result.json" for index in range(len(recipe.models))]
    return [json.loads(path.read_text())["metrics"] for path in results if path.is_file()]


def bundled_reinforcement(data: DataConfig, progress: bool = True, recipe: TeacherRecipe = BUNDLED_RECIPE) -> Path:
    """The reinforcement of the benchmark `data` describes by `recipe`'s teachers, built on first use."""
    source = resolve_data_root(data)
    teachers = train_teachers(recipe=recipe, progress=progress)
    key = hashlib.sha256(
        json.dumps([str(source.resolve()), recipe.key(), asdict(BUNDLED_REINFORCEMENT)]).encode()
    ).hexdigest()[:12]
    out = cache_dir() / "reinforced" / f"{source.name}-{key}"
    info = read_info(out)
    if info is not None and len(info.shards) == len(load_manifest(source).shard_paths(BUNDLED_REINFORCEMENT.split)):
        return out
    with _exclusive(out):
        log.info("storing %d teachers' embeddings of %s into %s (built once)", len(teachers), source, out)
        reinforce_dataset(source, teachers, out, BUNDLED_REINFORCEMENT, progress=progress)
    return out


def prepare_inputs(config: TrainConfig, progress: bool = True) -> RunInputs:
    """Every input `config` names, the `bundled` ones built (or found) in the cache: the launcher calls this
    before any trial starts, so that parallel trials neither race on the cache nor spend their time limit
    waiting for it, and each trial calls it again to read the finished paths."""
    unprepared = set(unprepared_fields(config))
    if not unprepared:
        return direct_inputs(config)
    inherit_from = inheritance_of(config)  # before any teacher is trained: a contradiction fails in seconds
    explicit = direct_inputs(_without_bundled(config))
    recipe = RECIPES[config.teachers.recipe]
    teachers = train_teachers(recipe=recipe, progress=progress) if unprepared - {"data.reinforcement"} else []
    return RunInputs(
        reinforcement=bundled_reinforcement(config.data, progress, recipe)
        if "data.reinforcement" in unprepared
        else explicit.reinforcement,
        teachers=teachers if "teachers.members" in unprepared else explicit.teachers,
        inherit_from=inherit_from,
    )


def inheritance_of(config: TrainConfig) -> TeacherSpec | None:
    """The weights a compressed student inherits (None: none), `bundled` resolved to teacher 0's folder and
    architecture without training it, so that the dry run can check them against `model.name`."""
    compression = config.compression
    if compression is None or compression.teacher_checkpoint != "bundled":
        return explicit_inheritance(config)
    named = compression.teacher_model is not None
    recipe = RECIPES[config.teachers.recipe]
    source = TeacherSpec(
        model=compression.teacher_model or recipe.models[0],
        checkpoint=str(_teacher_run_dir(recipe, 0)),
    )
    check_auto_inheritance(config, source, "compression.teacher_model" if named else "the bundled teacher 0")
    return source


def _without_bundled(config: TrainConfig) -> TrainConfig:
    """`config` with its `bundled` inputs unset, so the explicit ones resolve directly."""
    update: dict = {}
    if config.data.reinforcement == "bundled":
        update["data"] = config.data.model_copy(update={"reinforcement": None})
    if config.teachers.members == "bundled":
        update["teachers"] = config.teachers.model_copy(update={"members": []})
    if config.compression and config.compression.teacher_checkpoint == "bundled":
        update["compression"] = config.compression.model_copy(update={"inherit": "none", "teacher_checkpoint": None})
    return config.model_copy(update=update)
