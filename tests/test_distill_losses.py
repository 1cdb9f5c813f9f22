"""MobileCLIP distillation, the Eq. 3 total and TinyCLIP affinity mimicking, against hand computations
(shared/research/papers.md §1.2, §2.1, §8 B, §9)."""

from __future__ import annotations

import math
import re

import pytest
import torch
import torch.nn.functional as F
from open_clip.loss import DistillClipLoss

from ablate.core.losses import (
    affinity_mimicking_loss,
    clip_loss,
    combined_loss,
    mobileclip_distill_loss,
    mobileclip_total_loss,
)

DOUBLE = torch.float64


def matrix(*rows: list[float]) -> torch.Tensor:
    return torch.tensor(rows, dtype=DOUBLE)


def unit_rows(generator: torch.Generator, batch: int, width: int) -> torch.Tensor:
    return F.normalize(torch.randn(batch, width, generator=generator, dtype=DOUBLE), dim=-1)


def softmax(*logits: float) -> list[float]:
    total = sum(math.exp(x) for x in logits)
    return [math.exp(x) / total for x in logits]


def soft_ce(target: list[float], *logits: float) -> float:
    """−Σ_j p_j log softmax(logits)_j, written out with math.log."""
    log_total = math.log(sum(math.exp(x) for x in logits))
    return -sum(p * (x - log_total) for p, x in zip(target, logits, strict=True))


def entropy(p: list[float]) -> float:
    return -sum(x * math.log(x) for x in p)


def mean(a: list[float], b: list[float]) -> list[float]:
    return [(x + y) / 2 for x, y in zip(a, b, strict=True)]


# Student: I = [[1, 0], [0.6, 0.8]], T = [[0.8, 0.6], [0, 1]], s = 2, so s·I·Tᵀ = [[1.6, 0], [1.92, 1.6]].
STUDENT_IMAGE = matrix([1.0, 0.0], [0.6, 0.8])
STUDENT_TEXT = matrix([0.8, 0.6], [0.0, 1.0])
STUDENT_SCALE = torch.tensor(2.0, dtype=DOUBLE)
# Two teachers of width 2, stored concatenated [b, 4]:
#   teacher 1: a1 = [[1, 0], [0, 1]], c1 = [[1, 0], [0, 1]]          -> a1·c1ᵀ = [[1, 0], [0, 1]]
#   teacher 2: a2 = [[0.6, 0.8], [1, 0]], c2 = [[0, 1], [0.8, 0.6]]  -> a2·c2ᵀ = [[0.8, 0.96], [0, 0.8]]
TEACHER_IMAGE = matrix([1.0, 0.0, 0.6, 0.8], [0.0, 1.0, 1.0, 0.0])
TEACHER_TEXT = matrix([1.0, 0.0, 0.0, 1.0], [0.0, 1.0, 0.8, 0.6])


def test_average_after_softmax_hand_computed() -> None:
    # Scales [3, 2]: teacher 1 logits 3·a1·c1ᵀ = [[3, 0], [0, 3]], teacher 2 logits 2·a2·c2ᵀ = [[1.6, 1.92], [0, 1.6]].
    # Image→text targets: the mean of the two teachers' row softmaxes.
    target_i2t = [mean(softmax(3, 0), softmax(1.6, 1.92)), mean(softmax(0, 3), softmax(0, 1.6))]
    # Text→image targets from the transposes: [[3, 0], [0, 3]] and [[1.6, 0], [1.92, 1.6]].
    target_t2i = [mean(softmax(3, 0), softmax(1.6, 0)), mean(softmax(0, 3), softmax(1.92, 1.6))]
    # Student rows: image→text [[1.6, 0], [1.92, 1.6]], text→image (the transpose) [[1.6, 1.92], [0, 1.6]].
    loss_i2t = (soft_ce(target_i2t[0], 1.6, 0) + soft_ce(target_i2t[1], 1.92, 1.6)) / 2
    loss_t2i = (soft_ce(target_t2i[0], 1.6, 1.92) + soft_ce(target_t2i[1], 0, 1.6)) / 2
    expected = (loss_i2t + loss_t2i) / 2

    loss = mobileclip_distill_loss(
        STUDENT_IMAGE, STUDENT_TEXT, STUDENT_SCALE, TEACHER_IMAGE, TEACHER_TEXT, [2, 2], [3.0, 2.0]
    )
    assert loss.item() == pytest.approx(expected, abs=1e-12)


def test_concatenated_teacher_sums_cosines_before_one_softmax() -> None:
    # One scale 3 times the full dot product: 3·(a1·c1ᵀ + a2·c2ᵀ) = 3·[[1.8, 0.96], [0, 1.8]] = [[5.4, 2.88], [0, 5.4]].
    target_i2t = [softmax(5.4, 2.88), softmax(0, 5.4)]
    target_t2i = [softmax(5.4, 0), softmax(2.88, 5.4)]
    loss_i2t = (soft_ce(target_i2t[0], 1.6, 0) + soft_ce(target_i2t[1], 1.92, 1.6)) / 2
    loss_t2i = (soft_ce(target_t2i[0], 1.6, 1.92) + soft_ce(target_t2i[1], 0, 1.6)) / 2
    expected = (loss_i2t + loss_t2i) / 2

    args = (STUDENT_IMAGE, STUDENT_TEXT, STUDENT_SCALE, TEACHER_IMAGE, TEACHER_TEXT)
    concatenated = mobileclip_distill_loss(*args, [2, 2], [3.0], average_after_softmax=False)
    assert concatenated.item() == pytest.approx(expected, abs=1e-12)
    # teacher_dims are ignored on this path (papers.md §9) ...
    assert mobileclip_distill_loss(*args, [7], [3.0], average_after_softmax=False).item() == concatenated.item()
    # ... and the target is not the two-teacher ensemble's (§7 item 5).
    assert mobileclip_distill_loss(*args, [2, 2], [3.0, 3.0]).item() != pytest.approx(concatenated.item(), abs=1e-3)


def test_single_teacher_matches_open_clip_distill_loss() -> None:
    generator = torch.Generator().manual_seed(3)
    image, text, teacher_image, teacher_text = (unit_rows(generator, 6, 8) for _ in range(4))
    scale = torch.tensor(14.3, dtype=DOUBLE)
    _, reference = DistillClipLoss()(image, text, scale, teacher_image, teacher_text, torch.tensor(100.0, dtype=DOUBLE))
    loss = mobileclip_distill_loss(image, text, scale, teacher_image, teacher_text, [8], [100.0])
    assert loss.item() == pytest.approx(reference.item(), abs=1e-12)


@pytest.mark.parametrize("seed", range(5))
def test_gradient_equals_mean_teacher_kl(seed: int) -> None:
    """(1/K) Σ_k KL(p_k ‖ q) = CE(p̄, q) − (1/K) Σ_k H(p_k): same gradient, values apart by the mean entropy."""
    generator = torch.Generator().manual_seed(seed)
    raw_image = torch.randn(5, 6, generator=generator, dtype=DOUBLE, requires_grad=True)
    raw_text = torch.randn(5, 6, generator=generator, dtype=DOUBLE, requires_grad=True)
    image, text = F.normalize(raw_image, dim=-1), F.normalize(raw_text, dim=-1)
    teacher_image = torch.cat([unit_rows(generator, 5, 4), unit_rows(generator, 5, 3)], dim=1)
    teacher_text = torch.cat([unit_rows(generator, 5, 4), unit_rows(generator, 5, 3)], dim=1)
    scale = torch.tensor(14.3, dtype=DOUBLE)

    loss = mobileclip_distill_loss(image, text, scale, teacher_image, teacher_text, [4, 3], [70.0, 60.0])

    student_i2t = scale * image @ text.T
    kl = torch.zeros((), dtype=DOUBLE)
    mean_entropy = torch.zeros((), dtype=DOUBLE)
    slices = zip(teacher_image.split([4, 3], dim=1), teacher_text.split([4, 3], dim=1), (70.0, 60.0), strict=True)
    for a, c, scale_k in slices:
        teacher_i2t = scale_k * a @ c.T
        for student_logits, teacher_logits in ((student_i2t, teacher_i2t), (student_i2t.T, teacher_i2t.T)):
            p = teacher_logits.softmax(dim=1)
            kl = kl + 0.25 * F.kl_div(student_logits.log_softmax(dim=1), p, reduction="batchmean")
            mean_entropy = mean_entropy + 0.25 * -(p * p.log()).sum(dim=1).mean()

    grads = torch.autograd.grad(loss, [raw_image, raw_text], retain_graph=True)  # kl shares the normalisation
    kl_grads = torch.autograd.grad(kl, [raw_image, raw_text])
    for grad, kl_grad in zip(grads, kl_grads, strict=True):
        torch.testing.assert_close(grad, kl_grad, rtol=0, atol=1e-12)
    assert (loss - kl).item() == pytest.approx(mean_entropy.item(), abs=1e-12)


def test_features_are_not_renormalised() -> None:
    # Doubling the student's image features is the same as doubling its scale; doubling teacher 1's slice the same
    # as doubling its scale: nothing is re-normalised inside the loss (papers.md §9).
    args = (STUDENT_TEXT, STUDENT_SCALE, TEACHER_IMAGE, TEACHER_TEXT, [2, 2], [3.0, 2.0])
    doubled = mobileclip_distill_loss(2 * STUDENT_IMAGE, *args)
    assert doubled.item() == pytest.approx(
        mobileclip_distill_loss(STUDENT_IMAGE, STUDENT_TEXT, 2 * STUDENT_SCALE, *args[2:]).item(), abs=1e-12
    )
    teacher_doubled = TEACHER_IMAGE.clone()
    teacher_doubled[:, :2] *= 2
    student = (STUDENT_IMAGE, STUDENT_TEXT, STUDENT_SCALE)
    assert mobileclip_distill_loss(*student, teacher_doubled, TEACHER_TEXT, [2, 2], [3.0, 2.0]).item() == (
        pytest.approx(mobileclip_distill_loss(*student, TEACHER_IMAGE, TEACHER_TEXT, [2, 2], [6.0, 2.0]).item())
    )


def random_batch(seed: int, batch: int = 4) -> dict[str, torch.Tensor]:
    """Arguments of `mobileclip_total_loss` up to the teachers: student width 8, two teachers of widths 3 and 5."""
    generator = torch.Generator().manual_seed(seed)
    students = {
        name: unit_rows(generator, batch, 8) for name in ("image_features", "text_features", "syn_text_features")
    }
    teachers = {
        name: torch.cat([unit_rows(generator, batch, 3), unit_rows(generator, batch, 5)], dim=1)
        for name in ("teacher_image", "teacher_text", "teacher_syn_text")
    }
    return {**students, "logit_scale": torch.tensor(14.3, dtype=DOUBLE), **teachers}


def test_lambda_zero_is_exactly_the_clip_losses_and_one_exactly_the_distill_losses() -> None:
    batch = random_batch(0)
    image, text, syn, scale = (
        batch[k] for k in ("image_features", "text_features", "syn_text_features", "logit_scale")
    )
    teachers = ([3, 5], [100.0, 100.0])
    distill_real = mobileclip_distill_loss(image, text, scale, batch["teacher_image"], batch["teacher_text"], *teachers)
    distill_syn = mobileclip_distill_loss(
        image, syn, scale, batch["teacher_image"], batch["teacher_syn_text"], *teachers
    )

    clip_only = mobileclip_total_loss(**batch, teacher_dims=[3, 5], teacher_scales=[100.0, 100.0], lam=0.0)
    assert torch.equal(clip_only.total, clip_loss(image, text, scale) + clip_loss(image, syn, scale))
    assert torch.equal(clip_only.clip_real, clip_loss(image, text, scale))
    assert torch.equal(clip_only.clip_syn, clip_loss(image, syn, scale))
    assert torch.equal(clip_only.distill_real, distill_real)
    assert torch.equal(clip_only.distill_syn, distill_syn)

    distill_only = mobileclip_total_loss(**batch, teacher_dims=[3, 5], teacher_scales=[100.0, 100.0], lam=1.0)
    assert torch.equal(distill_only.total, distill_real + distill_syn)


def test_real_and_synthetic_halves_are_added_without_half() -> None:
    # I = T_real = [[1, 0], [0, 1]], T_syn = [[0, 1], [1, 0]], s = 1; the teacher is the student (K = 1, s_1 = 1).
    eye, swap = matrix([1.0, 0.0], [0.0, 1.0]), matrix([0.0, 1.0], [1.0, 0.0])
    # CLIP real: logits [[1, 0], [0, 1]], every row CE = log(e + 1) − 1 = log(1 + e^-1).
    clip_real = math.log(1 + math.exp(-1))
    # CLIP syn: logits [[0, 1], [1, 0]], the label's logit is 0: every row CE = log(1 + e).
    clip_syn = math.log(1 + math.e)
    # Distillation against itself: target = student softmax, every row gives the entropy of (e, 1)/(1 + e).
    row_entropy = entropy([math.e / (1 + math.e), 1 / (1 + math.e)])
    lam = 0.25
    expected = (1 - lam) * (clip_real + clip_syn) + lam * (row_entropy + row_entropy)

    terms = mobileclip_total_loss(
        eye, eye, swap, torch.tensor(1.0, dtype=DOUBLE), eye, eye, swap, teacher_dims=[2], teacher_scales=[1.0], lam=lam
    )
    assert terms.clip_real.item() == pytest.approx(clip_real, abs=1e-12)
    assert terms.clip_syn.item() == pytest.approx(clip_syn, abs=1e-12)
    assert terms.distill_real.item() == pytest.approx(row_entropy, abs=1e-12)
    assert terms.distill_syn.item() == pytest.approx(row_entropy, abs=1e-12)
    assert terms.total.item() == pytest.approx(expected, abs=1e-12)


def test_batch_of_one_gives_zero() -> None:
    # One column: the softmax is 1 and its log 0, for the contrastive and the distillation terms alike.
    terms = mobileclip_total_loss(**random_batch(1, batch=1), teacher_dims=[3, 5], teacher_scales=[70.0, 60.0], lam=0.5)
    for value in (terms.clip_real, terms.clip_syn, terms.distill_real, terms.distill_syn, terms.total):
        assert value.item() == 0.0


def test_student_as_its_own_teacher_hand_computed() -> None:
    # I = T = [[1, 0], [0, 1]], s = s_1 = 2: every row is softmax(2, 0) for teacher and student, so the soft CE is that
    # row's entropy (the KL part is 0).
    eye = matrix([1.0, 0.0], [0.0, 1.0])
    loss = mobileclip_distill_loss(eye, eye, torch.tensor(2.0, dtype=DOUBLE), eye, eye, [2], [2.0])
    assert loss.item() == pytest.approx(entropy(softmax(2, 0)), abs=1e-12)


@pytest.mark.parametrize("seed", range(3))
def test_student_as_its_own_teacher_has_zero_gradient(seed: int) -> None:
    # CE(p, q) = H(p) + KL(p ‖ q) with p fixed: at q = p the KL gradient, hence the loss gradient, is 0. The target is
    # detached, so this holds even when the very same tensors are passed as teacher.
    generator = torch.Generator().manual_seed(seed)
    raw_image = torch.randn(4, 5, generator=generator, dtype=DOUBLE, requires_grad=True)
    raw_text = torch.randn(4, 5, generator=generator, dtype=DOUBLE, requires_grad=True)
    image, text = F.normalize(raw_image, dim=-1), F.normalize(raw_text, dim=-1)
    loss = mobileclip_distill_loss(image, text, torch.tensor(10.0, dtype=DOUBLE), image, text, [5], [10.0])
    logits = 10.0 * image.detach() @ text.detach().T
    own_entropy = 0.5 * sum(-(p * p.log()).sum(dim=1).mean() for p in (logits.softmax(dim=1), logits.T.softmax(dim=1)))
    assert loss.item() == pytest.approx(own_entropy.item(), abs=1e-12)
    for grad in torch.autograd.grad(loss, [raw_image, raw_text]):
        torch.testing.assert_close(grad, torch.zeros_like(grad), rtol=0, atol=1e-12)


def affinity_by_hand(tau: float) -> float:
    # Student cosines I_s·T_sᵀ = [[0.8, 0], [0.96, 0.8]]; teacher I_t = [[1, 0], [0, 1]] and
    # T_t = [[0.6, 0.8], [0.8, 0.6]], so I_t·T_tᵀ = [[0.6, 0.8], [0.8, 0.6]], symmetric: the text→image teacher rows
    # are the same. Every logit is divided by τ, for teacher and student alike.
    teacher_rows = [softmax(0.6 / tau, 0.8 / tau), softmax(0.8 / tau, 0.6 / tau)]
    i2t = (soft_ce(teacher_rows[0], 0.8 / tau, 0) + soft_ce(teacher_rows[1], 0.96 / tau, 0.8 / tau)) / 2
    t2i = (soft_ce(teacher_rows[0], 0.8 / tau, 0.96 / tau) + soft_ce(teacher_rows[1], 0, 0.8 / tau)) / 2
    return (i2t + t2i) / 2


def test_affinity_mimicking_hand_computed_and_temperature_honoured() -> None:
    teacher_image, teacher_text = matrix([1.0, 0.0], [0.0, 1.0]), matrix([0.6, 0.8], [0.8, 0.6])
    args = (STUDENT_IMAGE, STUDENT_TEXT, teacher_image, teacher_text)
    default = affinity_mimicking_loss(*args)
    assert default.item() == pytest.approx(affinity_by_hand(1 / 50), abs=1e-12)
    assert affinity_mimicking_loss(*args, temperature=0.5).item() == pytest.approx(affinity_by_hand(0.5), abs=1e-12)
    assert affinity_by_hand(0.5) != pytest.approx(affinity_by_hand(1 / 50), abs=1e-3)


BASE = {
    "image_features": torch.zeros(2, 4, dtype=DOUBLE),
    "text_features": torch.zeros(2, 4, dtype=DOUBLE),
    "logit_scale": torch.tensor(10.0, dtype=DOUBLE),
    "teacher_image": torch.zeros(2, 4, dtype=DOUBLE),
    "teacher_text": torch.zeros(2, 4, dtype=DOUBLE),
    "teacher_dims": [2, 2],
    "teacher_scales": [100.0, 100.0],
}


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"teacher_dims": [2, 3]}, "teacher_dims must be positive and sum to the stored teacher width 4, got [2, 3]"),
        ({"teacher_dims": [-1]}, "teacher_dims must be positive and sum to the stored teacher width 4, got [-1]"),
        ({"teacher_dims": []}, "teacher_dims must be positive"),
        # The v2 patch's IndexError: one scale for two teachers is refused, not broadcast (papers.md §9).
        ({"teacher_scales": [100.0]}, "teacher_scales needs one scale per teacher: 2 teachers (teacher_dims=[2, 2])"),
        ({"teacher_scales": [70.0, 60.0], "average_after_softmax": False}, "exactly one scale"),
        ({"teacher_scales": [0.0, 100.0]}, "teacher_scales must be positive finite multipliers, got [0.0, 100.0]"),
        ({"teacher_scales": [math.nan, 100.0]}, "teacher_scales must be positive finite"),
        ({"teacher_image": torch.zeros(3, 4), "teacher_text": torch.zeros(3, 4)}, "teacher_image batch size 3"),
        ({"teacher_text": torch.zeros(2, 6)}, "teacher_text shape (2, 6) must equal teacher_image shape (2, 4)"),
        ({"text_features": torch.zeros(3, 4)}, "text_features shape (3, 4) must equal image_features shape (2, 4)"),
        ({"image_features": torch.zeros(4)}, "image_features must be a [batch, dim] matrix, got shape (4,)"),
    ],
)
def test_distill_errors_name_the_argument(changes: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        mobileclip_distill_loss(**{**BASE, **changes})


@pytest.mark.parametrize("lam", [-0.1, 1.5, math.nan])
def test_lambda_outside_unit_interval_is_refused(lam: float) -> None:
    with pytest.raises(ValueError, match=re.escape("lam (λ, the distillation weight) must be in [0, 1]")):
        mobileclip_total_loss(**random_batch(2), teacher_dims=[3, 5], teacher_scales=[100.0, 100.0], lam=lam)


@pytest.mark.parametrize("temperature", [0.0, -0.02, math.inf])
def test_temperature_must_be_positive(temperature: float) -> None:
    eye = matrix([1.0, 0.0], [0.0, 1.0])
    with pytest.raises(ValueError, match="temperature must be a positive finite number"):
        affinity_mimicking_loss(eye, eye, eye, eye, temperature=temperature)


def test_combined_loss_weighs_the_three_terms_as_the_research_formula() -> None:
    """L = (1-λ)·CLIP + λ·((1-α)·distill + α·sparsity), by hand for λ = 0.6, α = 0.25."""
    clip, distill, sparsity = torch.tensor(2.0), torch.tensor(3.0), torch.tensor(0.5)
    assert combined_loss(clip, distill, sparsity, 0.6, 0.25).item() == pytest.approx(
        0.4 * 2 + 0.6 * (0.75 * 3 + 0.25 * 0.5)
    )
    assert combined_loss(clip, None, None, 0.0, 0.0).item() == 2.0  # λ = 0: exactly CLIP, no teacher needed
    assert combined_loss(clip, distill, None, 1.0, 0.0).item() == 3.0  # MobileCLIP S*: pure distillation
    assert combined_loss(clip, distill, None, 0.6, 0.25).item() == pytest.approx(0.4 * 2 + 0.6 * 0.75 * 3)  # no masks
    with pytest.raises(ValueError, match="no teacher embeddings"):
        combined_loss(clip, None, None, 0.5, 0.0)
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\]"):
        combined_loss(clip, distill, None, 1.5, 0.0)
