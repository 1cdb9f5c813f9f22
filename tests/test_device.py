"""The accelerator path, on whichever device `ABLATE_TEST_DEVICE` names (default: the CPU, so CI runs the same code
with small shapes; `benchmarks/gpu_check.py` runs `pytest -m device` with `ABLATE_TEST_DEVICE=cuda` on a lent GPU).

Tolerances come from the formats: bf16 keeps 8 significant bits (unit roundoff u = 2⁻⁸), fp16 11 (u = 2⁻¹¹). Under
autocast only matmuls and convolutions run in the low precision; softmax, cross-entropy and reductions stay in
fp32, so a loss term computed from the same weights differs from fp32 by rounding of its inputs, well inside
u·|L| (measured on CPU: 2·10⁻⁴ relative for bf16 against u = 3.9·10⁻³).
"""

from __future__ import annotations

import copy
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from ablate.core.config.sections import LossConfig, OptimConfig, TrainLoopConfig
from ablate.core.data.reinforcement_store import TeacherLayout
from ablate.core.models.factory import create_model
from ablate.core.training.checkpoint import capture_rng, load_checkpoint, restore_rng, save_checkpoint
from ablate.core.training.distributed import _all_gather, backend_for
from ablate.core.training.fast_paths import TrainStep
from ablate.core.training.objective import TeacherSource, compute_loss
from ablate.core.training.optim import build_optimizer

DEVICE = torch.device(os.environ.get("ABLATE_TEST_DEVICE", "cpu"))
UNIT_ROUNDOFF = {"bf16": 2.0**-8, "fp16": 2.0**-11}
pytestmark = pytest.mark.device


def distillation_batch(batch: int = 8, image_size: int = 64, context: int = 32) -> dict[str, torch.Tensor]:
    """Two caption sets (B_real, B_syn) and two stored teachers' embeddings: every loss term of Eq. 3 is used."""
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(1, 400, (batch, 2, context), generator=generator)
    tokens[:, :, context // 2] = 49407  # end of text: the text tower pools there
    unit = lambda *shape: torch.nn.functional.normalize(torch.randn(*shape, generator=generator), dim=-1)  # noqa: E731
    return {
        "image": torch.randint(0, 256, (batch, 3, image_size, image_size), dtype=torch.uint8, generator=generator),
        "tokens": tokens,
        "teacher_image": unit(batch, 8),
        "teacher_text": unit(batch, 2, 8),
    }


def step_terms(precision: str, loss: LossConfig) -> dict[str, float]:
    """Every named loss term of one step from the same initial weights (SGD at lr 0 leaves them unchanged)."""
    torch.manual_seed(0)
    model = create_model("tiny").to(DEVICE)
    teachers = TeacherSource(TeacherLayout([4, 4], [100.0, 50.0]))
    batch = {key: value.to(DEVICE) for key, value in distillation_batch().items()}
    step = TrainStep(TrainLoopConfig(precision=precision, compile=False), DEVICE, grad_clip_norm=None)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    terms = step(model, optimizer, batch, lambda m, b: compute_loss(m, b, loss, teachers))
    return {name: float(value) for name, value in terms.items()}


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
@pytest.mark.parametrize("distill", ["mobileclip", "tinyclip"])
def test_every_loss_term_in_reduced_precision_is_fp32_up_to_rounding(precision: str, distill: str) -> None:
    loss = LossConfig(**{"lambda": 0.5, "distill": distill})
    reference, reduced = step_terms("fp32", loss), step_terms(precision, loss)
    assert set(reduced) == set(reference) and len(reference) >= 3, reference
    for name, value in reference.items():
        assert abs(reduced[name] - value) <= UNIT_ROUNDOFF[precision] * abs(value), (name, reduced[name], value)


def test_channels_last_towers_compute_what_contiguous_ones_do() -> None:
    """NHWC is a memory layout, not a different computation: MCi's outputs agree within fp32 rounding. Gradients
    are compared on CUDA only: NHWC backward through MCi segfaults torch on CPU (README, Speed)."""
    torch.manual_seed(0)
    model = create_model("mci-tiny").to(DEVICE)
    nhwc = copy.deepcopy(model).to(memory_format=torch.channels_last)
    images = torch.randn(4, 3, 64, 64, device=DEVICE)
    expected = model.encode_image(images)
    actual = nhwc.encode_image(images.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-5)
    if DEVICE.type != "cuda":
        return
    expected.square().sum().backward()
    actual.square().sum().backward()
    for (name, a), b in zip(model.named_parameters(), nhwc.parameters(), strict=True):
        if a.grad is not None:
            torch.testing.assert_close(b.grad, a.grad, rtol=1e-3, atol=1e-5, msg=name)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_a_process_group_of_one_runs_the_collectives_the_trainer_uses() -> None:
    """The backend a trial picks for this device (nccl on CUDA, gloo on CPU) initialises and gathers rows."""
    backend = backend_for(DEVICE)
    assert backend == ("nccl" if DEVICE.type == "cuda" else "gloo")
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    try:
        rows = torch.arange(6.0, device=DEVICE).reshape(3, 2)
        torch.testing.assert_close(_all_gather(rows, 1), rows)
        total = rows.sum()
        dist.all_reduce(total)
        assert float(total) == 15.0
    finally:
        dist.destroy_process_group()


def test_a_checkpoint_saved_on_the_device_resumes_on_the_cpu(tmp_path: Path) -> None:
    """A GPU run's checkpoint continues on a CPU-only machine (weights, AdamW state, RNG), and the step there
    equals the step the device would have taken, within fp32 rounding."""
    torch.manual_seed(0)
    model = create_model("tiny").to(DEVICE)
    optimizer = build_optimizer(model, OptimConfig())
    step = TrainStep(TrainLoopConfig(precision="fp32", compile=False), DEVICE, grad_clip_norm=None)
    batch = {key: value.to(DEVICE) for key, value in distillation_batch().items()}
    objective = lambda m, b: compute_loss(m, b, LossConfig())  # noqa: E731
    step(model, optimizer, batch, objective)
    path = save_checkpoint(tmp_path, 1, model, optimizer, keep=1, compute_seconds=0.0)
    rng = capture_rng()
    step(model, optimizer, batch, objective)  # what the device does next

    torch.manual_seed(1)  # a different RNG state, which the checkpoint must put back
    resumed = create_model("tiny")
    resumed_optimizer = build_optimizer(resumed, OptimConfig())
    assert load_checkpoint(path, resumed, resumed_optimizer) == (1, 0.0)
    assert torch.equal(torch.get_rng_state(), rng["torch"])
    cpu = torch.device("cpu")
    TrainStep(TrainLoopConfig(precision="fp32", compile=False), cpu, grad_clip_norm=None)(
        resumed, resumed_optimizer, distillation_batch(), objective
    )
    for (name, expected), actual in zip(model.state_dict().items(), resumed.state_dict().values(), strict=True):
        torch.testing.assert_close(actual, expected.cpu(), rtol=1e-4, atol=1e-5, msg=name)


def test_the_device_rng_is_saved_and_restored() -> None:
    """Hard-concrete mask noise and dropout draw from the device's generator on CUDA: a resume must restore it."""
    state = capture_rng()
    first = torch.rand(4, device=DEVICE)
    restore_rng(state)
    torch.testing.assert_close(torch.rand(4, device=DEVICE), first, rtol=0, atol=0)
