"""Trainer fast paths (core/training/fast_paths.py): every switch that runs on CPU keeps a seeded run's loss curve, the
gradient cache gives the full batch's gradient, and the trainer logs how long it waits for data."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient
from train_helpers import fast_config

from ablate.core.config.sections import DataConfig, LossConfig, OptimConfig, TrainConfig, TrainLoopConfig
from ablate.core.data.manifest import load_manifest
from ablate.core.data.reinforcement_store import TeacherLayout
from ablate.core.data.train_dataset import TrainDataset
from ablate.core.models.factory import create_model
from ablate.core.training.checkpoint import load_checkpoint, save_checkpoint
from ablate.core.training.fast_paths import DataWaitClock, TrainStep, resolve_precision
from ablate.core.training.objective import TeacherSource, compute_loss
from ablate.core.training.optim import build_optimizer
from ablate.core.training.trainer import train

CPU = torch.device("cpu")
OPTIM = OptimConfig(lr=2e-3, warmup_steps=0)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Small steps on a shared 2-core machine run fastest (and steadiest) on one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def batches(shapes_root: Path) -> list[dict[str, torch.Tensor]]:
    """Five real training batches of 16 (uint8 views, alt-text tokens) from the small benchmark."""
    dataset = TrainDataset(load_manifest(shapes_root), create_model("tiny").inputs, DataConfig(), seed=0)
    items = [dataset[index] for index in range(80)]
    return [{k: torch.stack([item[k] for item in items[i : i + 16]]) for k in items[0]} for i in range(0, 80, 16)]


def plain_curve(name: str, batches: list[dict]) -> list[float]:
    """The reference loop written out: fp32, per-tensor AdamW, one backward per batch, clip, step."""
    torch.manual_seed(0)
    model = create_model(name)
    optimizer = build_optimizer(model, OPTIM, kernel="for-loop")
    losses = []
    for batch in batches:
        optimizer.zero_grad(set_to_none=True)
        loss = compute_loss(model, batch, LossConfig())["loss"]
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), OPTIM.grad_clip_norm)
        optimizer.step()
        model.clamp_logit_scale()
        losses.append(loss.item())
    return losses


def fast_curve(name: str, batches: list[dict], switch_after: int = 0, **settings) -> list[float]:
    """The same run through `TrainStep` with `settings` switched on from step `switch_after` (a resumed run)."""
    torch.manual_seed(0)
    model = create_model(name)
    optimizer = build_optimizer(model, OPTIM, kernel=settings.pop("optimizer_kernel", "for-loop"))
    plain = TrainStep(TrainLoopConfig(precision="fp32"), CPU, OPTIM.grad_clip_norm)
    fast = TrainStep(TrainLoopConfig(**{"precision": "fp32", **settings}), CPU, OPTIM.grad_clip_norm)
    losses = []
    for index, batch in enumerate(batches):
        step = fast if index >= switch_after else plain
        losses.append(step(model, optimizer, batch, lambda m, b: compute_loss(m, b, LossConfig()))["loss"].item())
        model.clamp_logit_scale()
    return losses


def test_each_cpu_fast_path_keeps_the_loss_curve(batches: list[dict]) -> None:
    reference = plain_curve("tiny", batches)
    assert reference[-1] < reference[0] - 0.3, "the run must learn for the comparison to mean anything"
    exact = {
        "fused AdamW": {"optimizer_kernel": "fused"},
        "foreach AdamW": {"optimizer_kernel": "foreach"},
        "gradient cache, 4 micro-batches": {"accumulation_steps": 4},
    }
    for label, settings in exact.items():
        assert fast_curve("tiny", batches, **settings) == pytest.approx(reference, rel=1e-4), label


BF16_UNIT_ROUNDOFF = 2.0**-8  # bf16 keeps 8 significant bits


def test_cpu_bf16_is_rounding_not_drift(batches: list[dict]) -> None:
    """CPU bf16 (+ math attention) against fp32, with tolerances that hold on every CPU torch supports (AVX512-BF16,
    AVX512, AVX2 and the scalar `default` kernels: checked with ATEN_CPU_CAPABILITY). Step-by-step loss curves are
    not such an invariant: Adam normalises each gradient coordinate, so a coordinate whose tiny gradient flips sign
    under rounding moves by a full step, and the curves part by up to 0.24 (of 4.16) at one step on `default`. What
    is invariant: the first loss (same weights) differs by rounding only, the first gradient points the same way,
    and the run learns as much."""
    reference = plain_curve("tiny", batches)
    bf16 = fast_curve("tiny", batches, precision="bf16")
    assert abs(bf16[0] - reference[0]) <= BF16_UNIT_ROUNDOFF * abs(reference[0])

    def first_gradient(precision: str) -> torch.Tensor:
        torch.manual_seed(0)
        model = create_model("tiny")
        step = TrainStep(TrainLoopConfig(precision=precision), CPU, grad_clip_norm=None)
        step(
            model,
            torch.optim.SGD(model.parameters(), lr=0.0),
            batches[0],
            lambda m, b: compute_loss(m, b, LossConfig()),
        )
        return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])

    cosine = torch.nn.functional.cosine_similarity(first_gradient("bf16"), first_gradient("fp32"), dim=0)
    assert cosine > 0.99
    learnt, learnt_bf16 = reference[0] - reference[-1], bf16[0] - bf16[-1]
    assert learnt_bf16 == pytest.approx(learnt, rel=0.05)


def test_channels_last_is_refused_on_cpu_and_the_curve_is_unchanged(
    batches: list[dict], caplog: pytest.LogCaptureFixture
) -> None:
    """NHWC backward through an MCi tower crashes torch on CPU, so `channels_last: true` is ignored there with a
    warning, and the run is exactly the plain one (the NHWC path itself runs on GPUs only)."""
    reference = plain_curve("mci-tiny", batches)
    with caplog.at_level("WARNING", logger="ablate"):
        switched = fast_curve("mci-tiny", batches, switch_after=2, channels_last=True)
    assert switched == reference
    assert "train.channels_last: ignored on cpu" in caplog.text


def test_gradient_cache_gives_the_full_batch_gradient_and_micro_batches_of_one_give_none(batches: list[dict]) -> None:
    """Cached accumulation = full batch (features, temperature, stored-teacher KD over B_real + B_syn); independent
    micro-batches of one sample have a CLIP loss of exactly 0 (one positive, no negatives; papers.md §9)."""
    generator = torch.Generator().manual_seed(0)
    batch = dict(batches[0])
    batch["tokens"] = torch.cat([batch["tokens"], batch["tokens"].flip(0)], dim=1)  # two caption sets, [B, 2, L]
    batch["teacher_image"] = torch.nn.functional.normalize(torch.randn(16, 8, generator=generator), dim=-1)
    batch["teacher_text"] = torch.nn.functional.normalize(torch.randn(16, 2, 8, generator=generator), dim=-1)
    teachers = TeacherSource(TeacherLayout([4, 4], [100.0, 50.0]))
    loss = LossConfig(**{"lambda": 0.5})

    def gradients(**settings) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        torch.manual_seed(0)
        model = create_model("tiny")
        step = TrainStep(TrainLoopConfig(precision="fp32", **settings), CPU, grad_clip_norm=None)
        terms = step(
            model, torch.optim.SGD(model.parameters(), lr=0.0), batch, lambda m, b: compute_loss(m, b, loss, teachers)
        )
        return terms, {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}

    full_terms, full = gradients()
    cached_terms, cached = gradients(accumulation_steps=4)
    assert cached_terms.keys() == full_terms.keys() == {"clip", "distill", "loss"}
    for name in full_terms:
        assert torch.allclose(cached_terms[name], full_terms[name], rtol=1e-5), name
    assert cached.keys() == full.keys() and "logit_scale" in full
    for name, gradient in full.items():
        assert (cached[name] - gradient).abs().max() <= 1e-4 * gradient.abs().max() + 1e-8, name

    clip_only = LossConfig()
    torch.manual_seed(0)
    model = create_model("tiny")
    step = TrainStep(TrainLoopConfig(batch_size=16, accumulation_steps=16, accumulation="independent"), CPU, None)
    terms = step(
        model, torch.optim.SGD(model.parameters(), lr=0.0), batches[0], lambda m, b: compute_loss(m, b, clip_only)
    )
    assert terms["loss"].item() == 0.0
    assert all(p.grad is None or not p.grad.any() for p in model.parameters())


def test_cpu_defaults_and_validation() -> None:
    step = TrainStep(TrainLoopConfig(), CPU, 1.0)
    assert (step.precision, step.compile, step.scaler, step.math_attention) == ("fp32", False, None, False)
    assert not step.channels_last(create_model("mci-tiny"))  # auto: GPUs only
    assert TrainStep(TrainLoopConfig(precision="bf16"), CPU, 1.0).math_attention
    assert TrainStep(TrainLoopConfig(precision="fp16"), CPU, 1.0).scaler is not None
    assert resolve_precision("auto", CPU) == "fp32"
    model = create_model("tiny")
    assert build_optimizer(model, OptimConfig()).defaults["fused"] is True
    loop = build_optimizer(model, OptimConfig(), kernel="for-loop").defaults
    assert (loop["fused"], loop["foreach"]) == (False, False)
    with pytest.raises(ValueError, match=r"accumulation_steps \(3\) must divide train.batch_size \(64\)"):
        TrainLoopConfig(accumulation_steps=3)


def test_trainer_logs_the_data_wait_fraction(tmp_path: Path, shapes_root: Path) -> None:
    clock = DataWaitClock()
    for _ in clock.wrap(time.sleep(0.02) or index for index in range(5)):
        pass
    assert 0.1 <= clock.take() < 1.0 and clock.take() == 0.0

    overrides = {
        "train.steps": 4,
        "train.batch_size": 16,
        "train.log_every": 2,
        "train.threads": 1,
        "optim.warmup_steps": 1,
    }
    tree = fast_config(tmp_path, shapes_root, overrides)
    tree["train"] |= {"eval_every": 4, "checkpoint_every": 4}
    tree["eval"]["max_samples"] = 32
    config = TrainConfig.model_validate(tree)
    train(config)
    run_id = json.loads((Path(config.run_dir) / "mlflow_run.json").read_text())["run_id"]
    history = MlflowClient(config.tracking.uri).get_metric_history(run_id, "train/data_wait_fraction")
    assert [metric.step for metric in history] == [2, 4]
    assert all(0.0 <= metric.value < 1.0 for metric in history)


def test_fp16_loss_scaler_state_survives_a_resume(tmp_path: Path, shapes_root: Path) -> None:
    """A stopped-and-resumed fp16 run ends with the uninterrupted run's scaler state (scale and growth tracker);
    a scaler restarted at its initial state would have counted only the steps since the resume."""
    overrides = {"tracking.enabled": False, "train.precision": "fp16", "train.steps": 4, "train.batch_size": 8}
    overrides |= {"train.eval_every": 2, "train.checkpoint_every": 2, "eval.max_samples": 16, "train.threads": 1}
    overrides |= {"optim.warmup_steps": 1}
    whole = fast_config(tmp_path / "whole", shapes_root, overrides)
    train(TrainConfig.model_validate(whole))
    saved_whole = torch.load(Path(whole["run_dir"]) / "checkpoints" / "step_00000004.pt", weights_only=True)

    parts = fast_config(tmp_path / "parts", shapes_root, overrides)
    assert train(TrainConfig.model_validate(parts), [lambda step, metrics: True]).steps == 2
    halfway = torch.load(Path(parts["run_dir"]) / "checkpoints" / "step_00000002.pt", weights_only=True)
    initial = torch.amp.GradScaler("cpu").state_dict()
    assert halfway["grad_scaler"]["scale"] < initial["scale"]  # the first steps overflow at 2**16 and back off
    resumed = train(TrainConfig.model_validate(parts))
    assert resumed.resumed_from == 2
    saved_parts = torch.load(Path(parts["run_dir"]) / "checkpoints" / "step_00000004.pt", weights_only=True)
    assert saved_parts["grad_scaler"] == saved_whole["grad_scaler"]


def test_a_checkpoint_without_scaler_state_leaves_the_scaler_initial(tmp_path: Path) -> None:
    """Checkpoints written before scalers were saved (or by an fp32/bf16 run) still resume an fp16 run."""
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    save_checkpoint(tmp_path, 3, model, optimizer, keep=1, compute_seconds=1.5)
    scaler = torch.amp.GradScaler("cpu", init_scale=8.0)
    assert load_checkpoint(tmp_path / "step_00000003.pt", model, optimizer, scaler) == (3, 1.5)
    assert scaler.state_dict()["scale"] == 8.0 and scaler.state_dict()["_growth_tracker"] == 0
