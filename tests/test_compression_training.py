"""TinyCLIP stages inside the trainer: masks, sparsity logged, prune-to-dense mid-run, exact resume across a prune."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient
from rich.console import Console
from train_helpers import fast_config, trial_runs, write_study_yaml

from ablate.ablations.scheduler import launch
from ablate.core.config.loading import apply_overrides
from ablate.core.config.sections import TrainConfig
from ablate.core.training.checkpoint import latest_checkpoint
from ablate.core.training.trainer import train


def staged_config(tmp_path: Path, small_shapes: Path, reinforced_small: Path, **overrides) -> TrainConfig:
    """12 steps, two stages of 6 (mask phase 3, q ramp over 2); masks start half-open so a few steps prune."""
    tree = fast_config(tmp_path, small_shapes, {"train.steps": 12, "train.batch_size": 16, "train.log_every": 1})
    compression = {"schedule": [0.2, 0.4], "mask_fraction": 0.5, "q_warmup_fraction": 0.67, "log_alpha_init": 0.5}
    tree = apply_overrides(
        tree,
        {
            "train.eval_every": 6,
            "train.checkpoint_every": 2,
            "eval.max_samples": 32,
            "optim.warmup_steps": 1,
            "data.reinforcement": str(reinforced_small),
            "loss.lambda": 1.0,
            "loss.alpha": 0.5,
            "compression": compression,
            **overrides,
        },
    )
    return TrainConfig.model_validate(tree)


def history(config: TrainConfig, name: str) -> dict[int, float]:
    run_id = json.loads((Path(config.run_dir) / "mlflow_run.json").read_text())["run_id"]
    return {m.step: m.value for m in MlflowClient(config.tracking.uri).get_metric_history(run_id, name)}


def test_two_stage_schedule_prunes_twice_and_logs_every_quantity(
    small_shapes: Path, reinforced_small: Path, tmp_path: Path
) -> None:
    config = staged_config(tmp_path, small_shapes, reinforced_small)
    assert [(s.target_sparsity, s.steps, s.mask_steps, s.q_warmup_steps) for s in config.compression.stages] == [
        (0.2, 6, 3, 2),
        (0.4, 6, 3, 2),
    ]
    result = train(config)
    assert result.steps == 12
    q = history(config, "compression/target_sparsity")
    assert q == pytest.approx({1: 0.0, 2: 0.1, 3: 0.2, 7: 0.2, 8: 0.3, 9: 0.4})  # ramps; logged in mask phases only
    assert set(history(config, "compression/expected_sparsity")) == {1, 2, 3, 7, 8, 9}
    assert set(history(config, "train/sparsity")) == {1, 2, 3, 7, 8, 9}
    p = history(config, "compression/expected_sparsity")
    lambda1 = [value for _, value in sorted(history(config, "compression/lambda1").items())]
    assert lambda1 == sorted(lambda1)  # one-sided: λ1 only ever rises (gradient ascent on max(q−p, 0) ≥ 0) ...
    assert (lambda1[-1] > lambda1[0]) == any(p[t] < q[t] for t in p)  # ... and does whenever p trailed q

    # After each prune the model is smaller, and the realised sparsity is what the parameter counts say.
    first, second = (history(config, f"compression/stage{i}/total") for i in (0, 1))
    initial = history(config, "model/params_total")[0]
    assert first[3] < initial and second[9] < first[3]
    assert result.metrics["model/params_image"] == history(config, "compression/stage1/image")[9]
    assert result.metrics["compression/realised_sparsity"] == history(config, "compression/stage1/realised_sparsity")[9]
    assert all((Path(config.run_dir) / "pruned" / f"stage-{i}.pt").is_file() for i in (0, 1))


def test_resume_across_a_prune_is_exact(small_shapes: Path, reinforced_small: Path, tmp_path: Path) -> None:
    """A run stopped mid second mask phase and resumed ends with the uninterrupted run's weights."""
    straight = staged_config(tmp_path / "straight", small_shapes, reinforced_small)
    train(straight)

    interrupted = staged_config(tmp_path / "interrupted", small_shapes, reinforced_small, **{"train.eval_every": 2})
    first = train(interrupted, [lambda step, metrics: step == 8])  # stage 1 pruned at 3, stage 2 masks on
    assert first.stopped_early and first.steps == 8
    train(interrupted)

    final = [torch.load(latest_checkpoint(Path(c.run_dir) / "checkpoints").path) for c in (straight, interrupted)]
    assert final[0]["model"].keys() == final[1]["model"].keys()
    for name, tensor in final[0]["model"].items():
        assert torch.equal(tensor, final[1]["model"][name]), name


def test_compression_settings_are_checked(small_shapes: Path, reinforced_small: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"schedule\[1\] \(0.3\) must be greater than schedule\[0\] \(0.5\)"):
        staged_config(tmp_path, small_shapes, reinforced_small, **{"compression.schedule": [0.5, 0.3]})
    with pytest.raises(ValueError, match=r"compression needs loss.lambda > 0 and loss.alpha > 0"):
        staged_config(tmp_path, small_shapes, reinforced_small, **{"loss.alpha": 0.0})
    with pytest.raises(ValueError, match=r"schedule\[0\] \(1.0\) must lie in \[0, 1\)"):
        staged_config(tmp_path, small_shapes, reinforced_small, **{"compression.schedule": [1.0]})


@pytest.mark.slow
def test_one_and_two_stage_schedules_run_from_one_study_file(
    small_shapes: Path, reinforced_small: Path, tmp_path: Path
) -> None:
    """Issue 4: a one-stage and a two-stage schedule to the same q, as two values of one study parameter."""
    base = staged_config(tmp_path, small_shapes, reinforced_small).model_dump(mode="json", by_alias=True)
    del base["run_dir"], base["tracking"]
    base["compression"] = {"schedule": "0.4", "log_alpha_init": 0.5}
    study = {
        "name": "schedules",
        "base": base,
        "search_space": {"compression.schedule": {"type": "categorical", "choices": ["0.4", "0.2,0.4"]}},
        "sampler": {"name": "grid"},
        "pruner": {"name": "none"},
        "budget": {"trials": 2, "parallel": 2},
        "executor": {"kind": "local", "threads_per_trial": 1, "poll_seconds": 0.5, "timeout_min": 10},
    }
    result = launch(write_study_yaml(tmp_path, study), Console(quiet=True))
    assert [outcome.state for outcome in result.outcomes] == ["complete", "complete"], result.outcomes
    runs = {run.data.params["compression.schedule"]: run for run in trial_runs(tmp_path / "study.yaml")}
    assert set(runs) == {"[0.4]", "[0.2, 0.4]"}
    one, two = runs["[0.4]"], runs["[0.2, 0.4]"]
    assert "compression/stage1/realised_sparsity" in two.data.metrics
    assert "compression/stage1/realised_sparsity" not in one.data.metrics
    assert {"compression/realised_sparsity", "eval/zeroshot/mean_top1"} <= set(one.data.metrics)


def test_an_auto_inherited_student_takes_the_run_model_axes_and_resumes(
    small_shapes: Path, reinforced_small: Path, tmp_path: Path
) -> None:
    """inherit: auto trains a copy of the teacher, so `model.image_size`, `model.attention` and the logit-scale
    clamp used to be dropped without a word (the 64 px softmax teacher trained as itself) and the resume, which
    rebuilds by name with the axes, could not load the checkpoint. Now the copy takes the axes: 32 px (16 patches
    + class token), a learnable sigmoid bias in every block and the clamp; a run stopped at step 6 resumes."""
    teacher = TrainConfig.model_validate(fast_config(tmp_path / "teacher", small_shapes, {"train.steps": 2}))
    train(teacher)
    axes = {"model.image_size": 32, "model.attention": "sigmoid", "model.sigmoid_bias": "learnable"}
    axes["model.max_logit_scale"] = 10.0  # below the teacher's ~14: the clamp binds from the first step
    inherit = {"compression.inherit": "auto", "compression.teacher_checkpoint": teacher.run_dir}
    config = staged_config(tmp_path / "student", small_shapes, reinforced_small, **axes, **inherit)
    first = train(config, [lambda step, metrics: step == 6])
    assert first.stopped_early and first.steps == 6
    state = torch.load(latest_checkpoint(Path(config.run_dir) / "checkpoints").path)["model"]
    assert state["visual.pos_embed"].shape[:2] == (1, 17)  # the width is pruned by then
    assert state["logit_scale"] <= math.log(10.0) + 1e-6
    assert {name for name in state if name.endswith("attn.bias_offset")} == {
        f"{tower}.blocks.{i}.attn.bias_offset" for tower, depth in (("visual", 4), ("text", 3)) for i in range(depth)
    }
    assert train(config).steps == 12
