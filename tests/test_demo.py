"""`make demo`'s study asks the research question: the MobileCLIP recipe against plain CLIP and against a
TinyCLIP-compressed student inside the recipe, 3 seeds each, with teachers from the fast `demo` recipe."""

from __future__ import annotations

import typing
from pathlib import Path

from ablate.ablations.spec import load_study
from ablate.core.config.loading import apply_overrides, validate_train_config
from ablate.core.config.sections import TeachersConfig, TeacherSpec, TrainConfig

DEMO = Path(__file__).parents[1] / "ablations" / "studies" / "demo.yaml"


def _arms() -> dict[str, TrainConfig]:
    spec, base = load_study(DEMO)
    trees = {name: apply_overrides(base, baseline.overrides) for name, baseline in spec.baselines.items()}
    (param,) = spec.search_space.items()
    for choice in param[1].choices:
        trees[f"{param[0]}={choice}"] = apply_overrides(base, {param[0]: choice})
    return {name: validate_train_config(tree, str(DEMO)) for name, tree in trees.items()}


def test_demo_arms_are_the_recipe_plain_clip_and_a_compressed_student() -> None:
    spec, _ = load_study(DEMO)
    assert next(iter(spec.baselines)) == "mobileclip"  # the reference the report compares every arm to
    assert len(spec.replicates.seeds) >= 3
    arms = _arms()
    recipe, clip = arms.pop("mobileclip"), arms.pop("clip")
    assert (recipe.loss.lambda_, recipe.loss.alpha, recipe.compression) == (1.0, 0.0, None)
    assert recipe.data.captions == "both" and recipe.data.reinforcement == "bundled"
    assert (clip.loss.lambda_, clip.compression) == (0.0, None)
    assert arms, "no compressed arm"
    for compressed in arms.values():
        assert compressed.loss.lambda_ > 0 and compressed.loss.alpha > 0
        assert compressed.compression.schedule and min(compressed.compression.schedule) > 0
    everything = [recipe, clip, *arms.values()]
    assert {c.teachers.recipe for c in everything} == {"demo"}
    # every arm trains inside the recipe: its optimiser, schedule and captions, the same data and steps
    for config in everything:
        assert (config.optim.beta2, config.optim.weight_decay, config.optim.min_lr_ratio) == (0.95, 0.2, 0.001)
        # one warmup and LR for all: the preset's 1 % warmup (one step here) left plain CLIP at chance
        assert (config.optim.lr, config.optim.warmup_fraction) == (recipe.optim.lr, recipe.optim.warmup_fraction)
        assert config.optim.warmup_for(config.train.steps) >= 10
        assert (config.data.captions, config.data.shapes_train, config.train.steps) == (
            "both",
            recipe.data.shapes_train,
            recipe.train.steps,
        )


def test_demo_recipe_has_its_own_cache_and_serves_every_bundled_input(monkeypatch) -> None:
    """`teachers.recipe: demo` trains its own teachers (a separate cache key, the other studies keep theirs),
    and `bundled` inheritance and reinforcement both resolve to them."""
    import ablate.core.teachers.bundled as bundled

    assert set(bundled.RECIPES) == set(typing.get_args(TeachersConfig.model_fields["recipe"].annotation))
    assert bundled.RECIPES["demo"].key() != bundled.RECIPES["bundled"].key()
    assert bundled.teacher_folder(bundled.DEMO_RECIPE) != bundled.teacher_folder(bundled.BUNDLED_RECIPE)

    compressed = next(config for name, config in _arms().items() if name.startswith("compression"))
    source = bundled.inheritance_of(compressed)
    assert source.model == bundled.DEMO_RECIPE.models[0] == compressed.model.name
    assert Path(source.checkpoint).parent == bundled.teacher_folder(bundled.DEMO_RECIPE)

    asked = []

    def fake_teachers(recipe, progress=True):
        asked.append(("teachers", recipe))
        return [TeacherSpec(model=m, checkpoint=f"t{i}") for i, m in enumerate(recipe.models)]

    def fake_reinforcement(data, progress=True, recipe=bundled.BUNDLED_RECIPE):
        asked.append(("reinforcement", recipe))
        return Path("reinforced")

    monkeypatch.setattr(bundled, "train_teachers", fake_teachers)
    monkeypatch.setattr(bundled, "bundled_reinforcement", fake_reinforcement)
    inputs = bundled.prepare_inputs(compressed, progress=False)
    assert inputs.reinforcement == Path("reinforced")
    assert {recipe for _, recipe in asked} == {bundled.DEMO_RECIPE}
