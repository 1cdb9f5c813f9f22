"""The schedules of a compression run (issue 15, items 3 and 4): the model's LR restarts (warmup + cosine) in every
stage as TinyCLIP's per-stage runs, or spans the run (`optim.schedule_per_stage`); the mask LR follows each stage's
mask-phase length (`compression.mask_lr: auto`); a run records which it used. Hand-computed values throughout."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient
from test_compression_training import staged_config
from train_helpers import fast_config

from ablate.core.compression import Compressor, reference_sizes
from ablate.core.config.loading import apply_overrides
from ablate.core.config.sections import TrainConfig
from ablate.core.models.factory import create_model
from ablate.core.training.checkpoint import latest_checkpoint
from ablate.core.training.optim import run_learning_rate, schedule_window
from ablate.core.training.trainer import train


def compression_run(**overrides) -> TrainConfig:
    """A config only (nothing is trained): λ = 1, α = 0.5, reinforcement named, `overrides` by dotted path."""
    tree = {"data": {"reinforcement": "unused"}, "loss": {"lambda": 1.0, "alpha": 0.5}, "optim": {"lr": 1.0}}
    return TrainConfig.model_validate(apply_overrides(tree, overrides))


def cosine(progress: float) -> float:
    return 0.5 * (1 + math.cos(math.pi * progress))


def test_restart_warms_up_and_decays_in_every_stage_continuous_once() -> None:
    """12 steps, two stages of 6, warmup 2: restart repeats [½, 1, 1, cos(¼), cos(½), cos(¾)] per stage."""
    stages = {"compression": {"schedule": [0.2, 0.4]}, "train.steps": 12, "optim.warmup_steps": 2}
    restart = compression_run(**stages)
    assert restart.optim.schedule_per_stage == "restart"  # the default: TinyCLIP's stages are separate runs
    one_stage = [0.5, 1.0, 1.0, cosine(1 / 4), cosine(2 / 4), cosine(3 / 4)]
    assert [run_learning_rate(step, restart) for step in range(12)] == pytest.approx(one_stage * 2, abs=1e-12)
    assert schedule_window(7, restart) == (1, 6)

    continuous = compression_run(**stages, **{"optim.schedule_per_stage": "continuous"})
    expected = [0.5, 1.0] + [cosine((step - 2) / 10) for step in range(2, 12)]
    assert [run_learning_rate(step, continuous) for step in range(12)] == pytest.approx(expected, abs=1e-12)
    assert run_learning_rate(6, continuous) == pytest.approx(0.6545085, abs=1e-7)  # stage 2 starts at 0.65·lr

    dense = TrainConfig.model_validate({"train": {"steps": 12}, "optim": {"lr": 1.0, "warmup_steps": 2}})
    assert [run_learning_rate(step, dense) for step in range(12)] == pytest.approx(expected, abs=1e-12)


def test_restart_needs_a_warmup_shorter_than_every_stage() -> None:
    stages = {"compression": {"schedule": [0.2, 0.4]}, "train.steps": 12, "optim.warmup_steps": 6}
    with pytest.raises(
        ValueError, match=r"optim.warmup_steps \(6 steps\) must be shorter than compression.stages\[0\]"
    ):
        compression_run(**stages)
    compression_run(**stages, **{"optim.schedule_per_stage": "continuous"})  # one warmup over 12 steps is fine


@pytest.mark.parametrize(
    ("schedule", "expected"),
    [("0.75", [15 / 450]), ("0.5,0.75", [15 / 225] * 2), ("0.25,0.5,0.75", [0.1] * 3)],
)
def test_auto_mask_lr_follows_each_stage_mask_phase(schedule: str, expected: list[float]) -> None:
    """The stage_schedules arms (900 steps, half of each stage masked): 450-, 225- and 150-step mask phases."""
    config = compression_run(**{"compression": {"schedule": schedule}, "train.steps": 900}).compression
    assert config.mask_lr == "auto"
    assert [config.mask_lr_for(index) for index in range(len(config.stages))] == pytest.approx(expected)


def test_auto_mask_lr_keeps_the_reference_lr_for_long_phases_and_numbers_win() -> None:
    def long(**overrides) -> float:
        stage = {"target_sparsity": 0.5, "steps": 6000, "mask_steps": 3000}
        config = compression_run(**{"compression": {"stages": [stage]}, "train.steps": 6000, **overrides})
        return config.compression.mask_lr_for(0)

    assert long() == 0.02  # TinyCLIP's code: 15 / 3000 would be lower
    assert long(**{"compression.hyperparameters": "paper"}) == 0.01
    assert long(**{"compression.mask_lr": 0.05}) == 0.05
    assert long(**{"compression.mask_lr": None}) == 0.02
    with pytest.raises(ValueError, match="mask_lr"):
        long(**{"compression.mask_lr": -0.05})


def test_the_compressor_of_each_stage_trains_log_alpha_at_that_stage_mask_lr() -> None:
    config = compression_run(**{"compression": {"schedule": "0.25,0.5,0.75"}, "train.steps": 900}).compression
    model = create_model("tiny")
    third = Compressor(model, config, stage=2, reference=reference_sizes(model, config))
    groups = {group["name"]: group for group in third.parameter_groups()}
    assert groups["compression/log_alpha"]["lr"] == pytest.approx(0.1)
    assert third.log_metrics()["compression/mask_lr"] == pytest.approx(0.1)


@pytest.mark.slow  # trains (about a minute on 2 cores)
def test_a_two_stage_run_logs_its_lr_restart_mask_lr_and_sparsity_definition(
    small_shapes: Path, reinforced_small: Path, tmp_path: Path
) -> None:
    """8 steps, two stages of 4 (mask phase 2), warmup 1: the LR is back at its peak when stage 2 starts (the
    continuous schedule would be at 0.61·lr there); the mask LR is 15 / 2 in both stages."""
    tree = fast_config(
        tmp_path, small_shapes, {"train.steps": 8, "train.batch_size": 16, "train.log_every": 1, "data.num_workers": 0}
    )
    tree = apply_overrides(
        tree,
        {
            "train.eval_every": 8,
            "train.checkpoint_every": 8,
            "eval.max_samples": 32,
            "optim.warmup_steps": 1,
            "data.reinforcement": str(reinforced_small),
            "loss.lambda": 1.0,
            "loss.alpha": 0.5,
            "compression": {"schedule": [0.2, 0.4], "mask_fraction": 0.5, "q_warmup_fraction": 0.5},
        },
    )
    config = TrainConfig.model_validate(tree)
    train(config)
    run_id = json.loads((Path(config.run_dir) / "mlflow_run.json").read_text())["run_id"]
    client = MlflowClient(config.tracking.uri)

    def history(name: str) -> dict[int, float]:
        return {m.step: m.value for m in client.get_metric_history(run_id, name)}

    lr = 1e-3  # fast_config's
    stage = [lr, lr, lr * cosine(1 / 3), lr * cosine(2 / 3)]
    logged = history("train/lr")  # logged after step s as step s + 1
    assert [logged[done] for done in range(1, 9)] == pytest.approx(stage * 2, rel=1e-9)
    assert history("compression/mask_lr") == pytest.approx({1: 7.5, 2: 7.5, 5: 7.5, 6: 7.5})
    assert history("compression/stage0/mask_lr") == pytest.approx({2: 7.5})
    original = history("compression/stage1/prunable_original")[6]
    kept = history("compression/stage1/prunable")[6]
    assert history("compression/stage1/realised_sparsity")[6] == pytest.approx(1 - kept / original)

    run = client.get_run(run_id)
    assert run.data.tags["ablate.lr_schedule"] == "restart"
    assert run.data.params["optim.schedule_per_stage"] == "restart"
    assert "image: heads+intermediate+hidden" in run.data.tags["ablate.sparsity"]


@pytest.mark.slow  # trains (about a minute on 2 cores)
def test_a_restart_run_resumed_at_a_stage_boundary_ends_as_the_uninterrupted_one(
    small_shapes: Path, reinforced_small: Path, tmp_path: Path
) -> None:
    """Stopped right after stage 1 (step 6 of 12: the LR is about to warm up again and stage 2's masks to be
    attached) and resumed: the same weights, bit for bit, as the run that never stopped."""
    straight = staged_config(tmp_path / "straight", small_shapes, reinforced_small)
    interrupted = staged_config(tmp_path / "interrupted", small_shapes, reinforced_small)
    assert straight.optim.schedule_per_stage == "restart" and straight.compression.plan()[1].start_step == 6
    train(straight)
    first = train(interrupted, [lambda step, metrics: step == 6])  # eval_every 6: asked once, at the boundary
    assert first.stopped_early and first.steps == 6
    train(interrupted)
    final = [torch.load(latest_checkpoint(Path(c.run_dir) / "checkpoints").path) for c in (straight, interrupted)]
    assert final[0]["model"].keys() == final[1]["model"].keys()
    for name, tensor in final[0]["model"].items():
        assert torch.equal(tensor, final[1]["model"][name]), name
