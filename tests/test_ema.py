"""Weight EMA (`optim.ema`, MobileCLIP Tab 12): the update rule, evaluation on the average, pruning alongside the
student, and an exact resume."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_compression_training import staged_config
from torch import nn

from ablate.core.compression import apply_prune_record
from ablate.core.config.loading import apply_overrides
from ablate.core.config.presets import preset_overrides
from ablate.core.config.sections import TrainConfig
from ablate.core.data.bundled import resolve_data_root
from ablate.core.data.manifest import load_manifest
from ablate.core.evaluation.suite import EvaluationSuite
from ablate.core.models.factory import create_model
from ablate.core.training.checkpoint import latest_checkpoint
from ablate.core.training.ema import WeightAverage
from ablate.core.training.trainer import train


def test_the_average_moves_by_one_minus_decay_per_step_and_swaps_in_place() -> None:
    model = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    start = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    model.register_buffer("mask", torch.full((2, 2), float("-inf")).triu(1), persistent=False)
    average = WeightAverage(model, decay=0.9)
    assert "1.num_batches_tracked" not in average.shadow  # counters are not averaged,
    assert "mask" not in average.shadow  # nor constants (a causal mask's −inf would average to NaN)
    with torch.no_grad():
        for tensor in (model[0].weight, model[0].bias, model[1].running_mean):
            tensor.add_(1.0)
    for _ in range(3):
        average.update(model)
    # A constant target x reached from x0: x + (x0 − x)·0.9³, i.e. x0 + 1 − 0.729.
    torch.testing.assert_close(average.shadow["0.weight"], start["0.weight"] + 1 - 0.9**3)
    torch.testing.assert_close(average.shadow["1.running_mean"], start["1.running_mean"] + 1 - 0.9**3)
    torch.testing.assert_close(average.shadow["1.weight"], start["1.weight"])  # unchanged weights stay put
    parameter, live = model[0].weight, model[0].weight.detach().clone()
    with average.swapped_in(model):
        assert model[0].weight is parameter  # the optimizer's object, holding the average
        torch.testing.assert_close(model[0].weight.detach(), start["0.weight"] + 1 - 0.9**3)
    assert torch.equal(model[0].weight.detach(), live)


def test_the_mobileclip_preset_keeps_an_ema_scaled_to_the_run(tmp_path: Path) -> None:
    tree = apply_overrides(
        {"train": {"steps": 1000}, "data": {"reinforcement": str(tmp_path)}}, preset_overrides("mobileclip")
    )
    config = TrainConfig.model_validate(tree)
    assert config.optim.ema_decay_for(config.train.steps) == pytest.approx(0.9)  # 1 % of 1000 steps: horizon 10
    assert config.optim.ema_decay_for(200_000) == pytest.approx(0.9995)  # the paper's decay at its length
    assert TrainConfig.model_validate({"optim": {"ema": 0.9995}}).optim.ema_decay_for(10) == 0.9995


@pytest.mark.slow
def test_a_compressed_run_evaluates_its_average_prunes_it_and_resumes_it_exactly(
    small_shapes: Path, reinforced_small: Path, tmp_path: Path
) -> None:
    """Two stages of 6 steps (prunes after steps 3 and 9) with decay 0.8: stopped at step 8 (stage 1 pruned,
    stage 2 masks on) and resumed, the run ends with the uninterrupted run's weights and average; the average
    has the pruned architecture; the metrics are those of the averaged weights, not of the raw ones."""
    ema = {"optim.ema": 0.8}
    straight = staged_config(tmp_path / "straight", small_shapes, reinforced_small, **ema)
    result = train(straight)
    interrupted = staged_config(
        tmp_path / "interrupted", small_shapes, reinforced_small, **ema, **{"train.eval_every": 4}
    )
    assert train(interrupted, [lambda step, metrics: step == 8]).stopped_early
    train(interrupted)

    final = [torch.load(latest_checkpoint(Path(c.run_dir) / "checkpoints").path) for c in (straight, interrupted)]
    for key in ("model", "ema"):
        assert final[0][key].keys() == final[1][key].keys()
        for name, tensor in final[0][key].items():
            assert torch.equal(tensor, final[1][key][name]), (key, name, (tensor - final[1][key][name]).abs().max())
    state = final[0]
    for name, tensor in state["model"].items():
        if tensor.is_floating_point():
            assert state["ema"][name].shape == tensor.shape, name  # the average followed both prunes
    assert any(not torch.equal(state["ema"][n], state["model"][n]) for n in state["ema"])

    model = create_model("tiny")
    for record in state["extra"]["compression"]["records"]:
        apply_prune_record(model, record)
    suite = EvaluationSuite(straight.eval, load_manifest(resolve_data_root(straight.data)), model.inputs)
    evaluated = {}
    for key in ("ema", "model"):
        model.load_state_dict({**state["model"], **state[key]})
        evaluated[key] = suite(model, torch.device("cpu"))
    assert {name: result.metrics[name] for name in evaluated["ema"]} == evaluated["ema"]
    assert evaluated["ema"] != evaluated["model"]


def test_readers_of_a_run_take_its_average(tmp_path: Path) -> None:
    """Teachers, inheritance and export read the weights the run evaluated: its average where it kept one."""
    from ablate.core.models.weights import read_state_dict

    model = {"w": torch.zeros(2), "steps": torch.tensor(3)}
    torch.save({"model": model, "ema": {"w": torch.ones(2)}}, tmp_path / "step_00000010.pt")
    torch.save({"model": model}, tmp_path / "plain.pt")
    averaged = read_state_dict(tmp_path / "step_00000010.pt")
    assert torch.equal(averaged["w"], torch.ones(2)) and torch.equal(averaged["steps"], torch.tensor(3))
    assert torch.equal(read_state_dict(tmp_path / "plain.pt")["w"], torch.zeros(2))
