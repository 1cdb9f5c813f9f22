"""Hard-concrete gates, expected sparsity, Lagrangian, schedule, config validation and weight inheritance
(papers.md §2.2, §8 C, §9), checked against hand-computed values."""

from __future__ import annotations

import copy
import itertools
import math
from functools import partial

import pytest
import timm
import torch
from open_clip.transformer import TextTransformer
from pydantic import ValidationError
from timm.models.fastvit import FastVit, RepConditionalPosEnc
from torch import nn

from ablate.core.compression import (
    CompressionConfig,
    CompressionStage,
    Compressor,
    InheritanceError,
    StructureError,
    inherit_automatic,
    inherit_manual,
)
from ablate.core.compression import hard_concrete as hc
from ablate.core.models.clip import CLIP, InputSpec
from ablate.core.models.factory import create_model

SHIFT = (2 / 3) * math.log(11)  # P(z≠0) = σ(log α + (2/3)·ln 11) = σ(log α + 1.599)


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def one_stage(**overrides: object) -> CompressionConfig:
    stage = {"target_sparsity": 0.5, "steps": 20, "mask_steps": 10, "q_warmup_steps": 0}
    fields = {k: overrides.pop(k) for k in list(overrides) if k in stage}
    return CompressionConfig(stages=[CompressionStage(**{**stage, **fields})], **overrides)


def vit_text_pair(width: int, depth: int, heads: int, text_width: int, text_depth: int, text_heads: int) -> CLIP:
    """The registry's tiny layout (timm ViT 64px/8 + causal open_clip text, ctx 16, vocab 1000) at any size."""
    visual = timm.create_model(
        "vit_tiny_patch16_224", img_size=64, patch_size=8, embed_dim=width, depth=depth, num_heads=heads, num_classes=32
    )
    text = TextTransformer(
        context_length=16, vocab_size=1000, width=text_width, heads=text_heads, layers=text_depth, output_dim=32
    )
    return CLIP(visual, text, InputSpec(64, 16, (0.5,) * 3, (0.5,) * 3))


def hybrid_pair(layer_scale: float = 1.0) -> CLIP:
    """A scaled-down MobileCLIP: fastvit MCi layout (RepMixer stages, MHSA + ConvFFN in stage 4; head_dim 32) with
    widths 16/32/64/128, and a bidirectional text transformer. Layer scale 1 (not 1e-5) so that the masked
    branches visibly change the output."""
    visual = FastVit(
        layers=(1, 1, 1, 1),
        embed_dims=(16, 32, 64, 128),
        mlp_ratios=(3, 3, 3, 3),
        token_mixers=("repmixer", "repmixer", "repmixer", "attention"),
        pos_embs=(None, None, None, partial(RepConditionalPosEnc, spatial_shape=(7, 7))),
        se_downsamples=(False, False, True, True),
        lkc_use_act=True,
        layer_scale_init_value=layer_scale,
        num_classes=32,
    )
    text = TextTransformer(
        context_length=16, vocab_size=1000, width=64, heads=2, layers=2, output_dim=32, no_causal_mask=True
    )
    return CLIP(visual, text, InputSpec(64, 16, (0.0,) * 3, (1.0,) * 3))


def p_of(compressor: Compressor) -> float:
    return compressor.expected_sparsity().item()


def set_log_alpha(compressor: Compressor, tower: str, kind: str, keep: int, high: float = 30.0) -> None:
    """Gates of (tower, kind): the first `keep` of each row on (log α = +high), the rest off (−high)."""
    with torch.no_grad():
        for (t, k, _), gate in zip(compressor.sites, compressor.gates, strict=True):
            if (t, k) == (tower, kind):
                gate.log_alpha.fill_(-high)
                gate.log_alpha[:keep] = high


# --- hard-concrete gates ---------------------------------------------------------------------------------------


def test_prob_nonzero_closed_form_matches_hand_values_and_monte_carlo() -> None:
    log_alpha = torch.tensor([-2.0, 0.0, 1.5])
    expected = torch.tensor([sigmoid(a + SHIFT) for a in (-2.0, 0.0, 1.5)])
    torch.testing.assert_close(hc.prob_nonzero(log_alpha), expected, atol=1e-6, rtol=0)
    torch.manual_seed(0)
    draws = 200_000
    samples = hc.sample(log_alpha.expand(draws, 3))
    nonzero = (samples > 0).float().mean(0)
    sigma = (expected * (1 - expected) / draws).sqrt()
    assert ((nonzero - expected).abs() < 4 * sigma).all(), (nonzero, expected)
    assert samples.min() == 0 and samples.max() == 1  # stretched and clamped: exact zeros and ones occur


def test_sample_is_reparameterised() -> None:
    gate = hc.HardConcrete(8, log_alpha_init=0.5)
    gate.sample().sum().backward()
    assert gate.log_alpha.grad is not None and gate.log_alpha.grad.abs().sum() > 0


def test_deterministic_mask_zeroes_round_of_expected_zeros_and_keeps_soft_values() -> None:
    log_alpha = torch.tensor([-3.0, 0.0, 2.0, 4.6])
    # P = σ(logα + 1.599) = 0.198, 0.832, 0.973, 0.998: Σ = 3.00, round(4 − 3.00) = 1 zero (the smallest)
    mask = hc.deterministic(log_alpha)
    expected = torch.tensor([0.0, 0.5, sigmoid(1.2 * 2.0), sigmoid(1.2 * 4.6)])
    torch.testing.assert_close(mask, expected, atol=1e-6, rtol=0)


def test_code_init_and_clamp() -> None:
    gate = hc.HardConcrete(3)
    assert gate.log_alpha.tolist() == [10.0] * 3
    with torch.no_grad():
        gate.log_alpha.copy_(torch.tensor([-9.0, 0.3, 9.0]))
    gate.clamp_()
    torch.testing.assert_close(gate.log_alpha.data, torch.tensor([math.log(0.01), 0.3, math.log(100.0)]))


# --- expected sparsity -------------------------------------------------------------------------------------------

# tiny: image h=128, 4 heads, FFN 512, 4 layers; text h=128, 4 heads, FFN 512, 3 layers (Linear layers with bias)
HEAD_CHARGE = (4 * 128**2 + 4 * 128) // 4  # 16512
MLP_LAYER = 2 * 128 * 512 + 128 + 512  # 131712
PRUNABLE_IMAGE = 4 * 4 * HEAD_CHARGE + 4 * MLP_LAYER  # 791040
PRUNABLE_TEXT = 3 * 4 * HEAD_CHARGE + 3 * MLP_LAYER  # 593280


def test_expected_sparsity_with_all_gates_on_is_the_bias_share() -> None:
    """§9: with every mask on, p is slightly above 0 because FFN biases are only in the denominator."""
    compressor = Compressor(create_model("tiny"), one_stage())
    assert compressor.reference["image"].prunable == PRUNABLE_IMAGE
    assert compressor.reference["text"].prunable == PRUNABLE_TEXT
    p_on = sigmoid(10 + SHIFT)  # every gate at the code init log α = 10
    total = PRUNABLE_IMAGE + PRUNABLE_TEXT
    bias_only = 7 * (128 + 512)  # per layer the FFN charges h·I·2 per (dim, unit) pair and misses h + I
    expected = 1 - p_on**2 * (total - bias_only) / total
    assert p_of(compressor) == pytest.approx(expected, abs=1e-6)
    assert 0 < expected < 0.004


def test_expected_sparsity_matches_hand_count_and_pruned_weights() -> None:
    model = create_model("tiny").eval()
    compressor = Compressor(model, one_stage())
    set_log_alpha(compressor, "image", "hidden", keep=64)
    set_log_alpha(compressor, "image", "heads", keep=2)
    set_log_alpha(compressor, "image", "intermediate", keep=256)
    for kind in ("hidden", "heads", "intermediate"):
        set_log_alpha(compressor, "text", kind, keep=10_000)
    # R = ΣP_hidden·ΣP_head·(charge/h) + ΣP_hidden·ΣP_int·2 per tower (§9)
    remaining_image = 64 * (4 * 2) * HEAD_CHARGE / 128 + 64 * (4 * 256) * 2  # 66048 + 131072
    remaining_text = 128 * (3 * 4) * HEAD_CHARGE / 128 + 128 * (3 * 512) * 2
    expected = 1 - (remaining_image + remaining_text) / (PRUNABLE_IMAGE + PRUNABLE_TEXT)
    assert p_of(compressor) == pytest.approx(expected, abs=1e-5)

    dense, result = compressor.prune()
    visual = dense.visual
    attention_weights = sum(b.attn.qkv.weight.numel() + b.attn.proj.weight.numel() for b in visual.blocks)
    mlp_weights = sum(b.mlp.fc1.weight.numel() + b.mlp.fc2.weight.numel() for b in visual.blocks)
    # brute force: the kept weight entries; a head's charge/h = 4·d_h·(h+1)/h adds the bias share (h+1)/h
    assert attention_weights == 4 * (4 * 2 * 32 * 64) and mlp_weights == 4 * (2 * 256 * 64)
    assert attention_weights * 129 / 128 + mlp_weights == pytest.approx(remaining_image)
    assert result.counts["expected_sparsity"] == pytest.approx(expected, abs=1e-5)


def test_expected_sparsity_without_hidden_mask_on_the_hybrid() -> None:
    """No hidden mask: R = ΣP_head·head charge + ΣP_int·unit charge; fastvit's qkv has no bias."""
    compressor = Compressor(hybrid_pair(), one_stage(image_masks=["heads", "intermediate"], text_masks=[]))
    assert compressor.structures["image"].summary() == {  # squeeze-excitation fc1/fc2 is not an FFN
        "attention": {"stages.3.blocks.0.token_mixer": 4},
        "mlp": {f"stages.{i}.blocks.0.mlp": 3 * d for i, d in enumerate((16, 32, 64, 128))},
        "hidden": None,
    }
    attention = 128 * 384 + 128 * 128 + 128  # qkv (no bias) + proj
    ffn = [6 * d * d + 4 * d for d in (16, 32, 64, 128)]  # 1x1 convs d→3d→d with biases
    assert compressor.reference["image"].prunable == attention // 4 * 4 + sum(ffn)
    set_log_alpha(compressor, "image", "heads", keep=1)
    with torch.no_grad():
        for (_, kind, _), gate in zip(compressor.sites, compressor.gates, strict=True):
            if kind == "intermediate":
                gate.log_alpha.fill_(-30.0)
                gate.log_alpha[: gate.size // 2] = 30.0
    unit_charges = [2 * d + 1 for d in (16, 32, 64, 128)]  # ⌊(6d² + 4d) / 3d⌋
    remaining = attention // 4 + sum(3 * d // 2 * c for d, c in zip((16, 32, 64, 128), unit_charges, strict=True))
    expected = 1 - remaining / (attention // 4 * 4 + sum(ffn))
    assert p_of(compressor) == pytest.approx(expected, abs=1e-5)


# --- Lagrangian and schedule ---------------------------------------------------------------------------------------


def ascent_steps(penalty: str, steps: int = 3) -> tuple[Compressor, list[dict[str, torch.Tensor]]]:
    compressor = Compressor(create_model("tiny"), one_stage(penalty=penalty, hyperparameters="paper"))
    optimizer = torch.optim.AdamW(compressor.parameter_groups())
    history = []
    for step in range(steps):
        terms = compressor.sparsity_terms(step)
        optimizer.zero_grad()
        terms["loss_sparsity"].backward()
        optimizer.step()
        compressor.after_optimizer_step()
        history.append(terms)
    return compressor, history


def test_one_sided_lagrangian_multipliers_grow_while_under_target() -> None:
    compressor, history = ascent_steps("one_sided")
    assert all(float(t["p"]) < float(t["q"]) == 0.5 for t in history)
    lambda1 = [float(t["lambda1"]) for t in history] + [compressor.lambda1.item()]
    lambda2 = [float(t["lambda2"]) for t in history] + [compressor.lambda2.item()]
    assert lambda1[0] == pytest.approx(0.01)  # paper init
    assert all(b > a for a, b in itertools.pairwise(lambda1))
    assert all(b > a for a, b in itertools.pairwise(lambda2))
    # the masks move the other way: log α falls (from the clamp ceiling ln 100), raising p
    assert all(g.log_alpha.max().item() < math.log(100) for g in compressor.gates)


def test_signed_lagrangian_multiplier_turns_negative_to_push_sparsity_up() -> None:
    compressor, _ = ascent_steps("signed")
    assert compressor.lambda1.item() < 0.01  # d/dλ1 = p − q < 0: ascent lowers λ1, so −λ1 rewards sparsity
    assert compressor.lambda2.item() > 0.01
    assert all(g.log_alpha.max().item() < math.log(100) for g in compressor.gates)


def test_one_sided_penalty_is_zero_above_target_and_signed_is_not() -> None:
    model = create_model("tiny")
    for penalty, zero in (("one_sided", True), ("signed", False)):
        compressor = Compressor(model, one_stage(penalty=penalty, target_sparsity=0.1))
        set_log_alpha(compressor, "image", "intermediate", keep=0)
        terms = compressor.sparsity_terms(0)
        assert float(terms["p"]) > 0.1
        assert (terms["loss_sparsity"].item() == 0.0) is zero
        compressor.detach()


def test_q_ramps_linearly_from_the_previous_stage_target() -> None:
    config = CompressionConfig(
        start_sparsity=0.0,
        stages=[
            CompressionStage(target_sparsity=0.25, steps=10, mask_steps=6, q_warmup_steps=4),
            CompressionStage(target_sparsity=0.5, steps=10, mask_steps=6, q_warmup_steps=0),
        ],
    )
    first, second = config.plan()
    assert [first.target_sparsity(t) for t in (0, 2, 4, 6)] == [0.0, 0.125, 0.25, 0.25]
    assert second.q_start == 0.25 and second.target_sparsity(0) == 0.5  # no ramp: the reference's warmup-0 branch
    assert (second.start_step, second.prune_step, second.end_step) == (10, 16, 20)
    assert config.stage_at(9).index == 0 and config.stage_at(10).index == 1 and config.total_steps == 20


# --- validation ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"target_sparsity": 1.0}, "target_sparsity"),
        ({"target_sparsity": -0.1}, "target_sparsity"),
        ({"mask_steps": 30}, "mask_steps"),
        ({"q_warmup_steps": 11}, "q_warmup_steps"),
        ({"inherit": "manual"}, "teacher_checkpoint"),
        ({"image_masks": ["heads", "heads"]}, "image_masks"),
        ({"image_masks": ["head"]}, "image_masks"),
        ({"image_masks": [], "text_masks": []}, "image_masks"),
        ({"mask_lrr": 0.1}, "mask_lrr"),
    ],
)
def test_invalid_settings_name_the_field(overrides: dict[str, object], field: str) -> None:
    with pytest.raises(ValidationError, match=field):
        one_stage(**overrides)


def test_stage_targets_must_increase_strictly() -> None:
    stage = {"steps": 10, "mask_steps": 5}
    with pytest.raises(ValidationError, match=r"stages\[1\]\.target_sparsity \(0\.25\).*stages\[0\]\.target_sparsity"):
        CompressionConfig(stages=[{"target_sparsity": 0.25, **stage}, {"target_sparsity": 0.25, **stage}])
    with pytest.raises(ValidationError, match=r"stages\[0\]\.target_sparsity.*start_sparsity"):
        CompressionConfig(start_sparsity=0.3, stages=[{"target_sparsity": 0.25, **stage}])


def test_masks_on_a_tower_without_that_structure_name_tower_and_kind() -> None:
    with pytest.raises(StructureError, match=r"image_masks: 'hidden'.*image tower \(FastVit\)"):
        Compressor(hybrid_pair(), one_stage(image_masks=["heads", "intermediate", "hidden"]))
    convnet = nn.Sequential(nn.Conv2d(3, 8, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 32))
    model = CLIP(convnet, hybrid_pair().text, InputSpec(64, 16, (0.0,) * 3, (1.0,) * 3))
    with pytest.raises(StructureError, match=r"image_masks: 'heads'.*no attention layer"):
        Compressor(model, one_stage(image_masks=["heads"]))
    with pytest.raises(StructureError, match=r"image_masks: 'intermediate'.*no FFN"):
        Compressor(model, one_stage(image_masks=["intermediate"]))


def test_default_masks_are_what_each_tower_offers() -> None:
    """`auto` (the default): an MCi image tower has no hidden stream, so it gets heads + FFN units; an open_clip
    text tower all three; a tower with nothing to mask is left unmasked (it used to fail with image_masks 'hidden')."""
    compressor = Compressor(hybrid_pair(), one_stage())
    assert compressor.kinds == {"image": ("heads", "intermediate"), "text": ("heads", "intermediate", "hidden")}
    convnet = nn.Sequential(nn.Conv2d(3, 8, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 32))
    model = CLIP(convnet, hybrid_pair().text, InputSpec(64, 16, (0.0,) * 3, (1.0,) * 3))
    assert set(Compressor(model, one_stage()).kinds) == {"text"}


def test_later_stage_needs_the_stage_zero_reference() -> None:
    config = CompressionConfig(
        stages=[
            {"target_sparsity": 0.25, "steps": 4, "mask_steps": 2},
            {"target_sparsity": 0.5, "steps": 4, "mask_steps": 2},
        ]
    )
    with pytest.raises(ValueError, match="reference"):
        Compressor(create_model("tiny"), config, stage=1)


# --- inheritance ---------------------------------------------------------------------------------------------------


def test_manual_inheritance_subsamples_layers_and_front_slices_widths() -> None:
    torch.manual_seed(0)
    teacher = vit_text_pair(128, 4, 4, 128, 3, 4)  # head_dim 32 in both
    student = vit_text_pair(64, 2, 2, 64, 1, 2)
    sources = inherit_manual(student, teacher)
    t, s = teacher.state_dict(), student.state_dict()
    # depth: image 4 → 2 takes teacher layers 0, 2 (step ⌊4/2⌋); text 3 → 1 takes layer 0
    assert sources["visual.blocks.1.mlp.fc1.weight"] == "visual.blocks.2.mlp.fc1.weight"
    assert (
        sources["text.transformer.resblocks.0.attn.in_proj_weight"]
        == "text.transformer.resblocks.0.attn.in_proj_weight"
    )
    # packed q/k/v: the first 2 heads (rows 0:64 of each 128-row section) and the first 64 input dims
    qkv = t["visual.blocks.2.attn.qkv.weight"]
    assert torch.equal(
        s["visual.blocks.1.attn.qkv.weight"], torch.cat([qkv[0:64, :64], qkv[128:192, :64], qkv[256:320, :64]])
    )
    bias = t["visual.blocks.2.attn.qkv.bias"]
    assert torch.equal(s["visual.blocks.1.attn.qkv.bias"], torch.cat([bias[0:64], bias[128:192], bias[256:320]]))
    in_proj = t["text.transformer.resblocks.0.attn.in_proj_weight"]
    expected_in_proj = torch.cat([in_proj[0:64, :64], in_proj[128:192, :64], in_proj[256:320, :64]])
    assert torch.equal(s["text.transformer.resblocks.0.attn.in_proj_weight"], expected_in_proj)
    # everything else: front slices
    assert torch.equal(s["visual.blocks.1.attn.proj.weight"], t["visual.blocks.2.attn.proj.weight"][:64, :64])
    assert torch.equal(s["visual.blocks.1.mlp.fc1.weight"], t["visual.blocks.2.mlp.fc1.weight"][:256, :64])
    assert torch.equal(s["visual.pos_embed"], t["visual.pos_embed"][:, :, :64])
    assert torch.equal(s["text.token_embedding.weight"], t["text.token_embedding.weight"][:, :64])
    assert torch.equal(s["text.text_projection"], t["text.text_projection"][:64])
    assert torch.equal(s["logit_scale"], t["logit_scale"])


def test_manual_inheritance_rejects_a_bigger_or_different_student() -> None:
    teacher = vit_text_pair(128, 2, 4, 128, 1, 4)
    with pytest.raises(InheritanceError, match="the student has 4 layers, the teacher only 2"):
        inherit_manual(vit_text_pair(64, 4, 2, 64, 1, 2), teacher)
    with pytest.raises(InheritanceError, match="head_dim 16 differs from the teacher's 32"):
        inherit_manual(vit_text_pair(64, 2, 4, 64, 1, 2), teacher)


def test_automatic_inheritance_is_a_trainable_copy_of_the_teacher() -> None:
    teacher = vit_text_pair(64, 1, 2, 64, 1, 2).eval().requires_grad_(False)
    student = inherit_automatic(teacher)
    assert student.training and all(p.requires_grad for p in student.parameters())
    for (name, a), b in zip(teacher.state_dict().items(), student.state_dict().values(), strict=True):
        assert torch.equal(a, b) and a.data_ptr() != b.data_ptr(), name


def test_inheritance_source_reads_the_architecture_a_run_folder_records(tmp_path) -> None:
    """A run folder of ours names its model in config.yaml, so `teacher_model` may be left out; any other
    checkpoint without it is refused, naming the field, before a trial would start."""
    from ablate.core.compression.stages import inheritance_source
    from ablate.core.config.base import ConfigError

    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.yaml").write_text("model:\n  name: small\n")
    auto = {"schedule": [0.5], "inherit": "auto"}
    spec = inheritance_source(CompressionConfig(**auto, teacher_checkpoint=str(tmp_path / "run")))
    assert (spec.model, spec.checkpoint) == ("small", str(tmp_path / "run"))
    named = CompressionConfig(**auto, teacher_checkpoint=str(tmp_path / "run"), teacher_model="tiny")
    assert inheritance_source(named).model == "tiny"
    with pytest.raises(ConfigError, match=r"compression.teacher_model: not set.*open_clip.pt"):
        inheritance_source(CompressionConfig(**auto, teacher_checkpoint=str(tmp_path / "open_clip.pt")))


def test_auto_inheritance_trains_the_model_the_run_names(tmp_path, monkeypatch) -> None:
    """inherit: auto trains a copy of the teacher, so `model.name` must be the teacher's architecture: `tiny`
    with the bundled (`small`) teacher trained a `small` labelled `tiny`, and its resume rebuilt a `tiny`. The
    contradiction is found before the bundled teachers would be trained."""
    import tarfile

    import ablate.core.teachers.bundled as bundled
    from ablate.core.config.base import ConfigError
    from ablate.core.config.sections import TeacherSpec, TrainConfig
    from ablate.core.training.inputs import direct_inputs

    trained = []
    monkeypatch.setattr(
        bundled, "train_teachers", lambda **_: trained.append(1) or [TeacherSpec(model="small", checkpoint="t0")]
    )
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.yaml").write_text("model:\n  name: small\n")
    (tmp_path / "dr" / "train").mkdir(parents=True)
    tarfile.open(tmp_path / "dr" / "train" / "empty.tar", "w").close()  # a reinforcement folder, never read here

    def config(name: str, checkpoint: str, inherit: str = "auto") -> TrainConfig:
        compression = {"schedule": [0.5], "inherit": inherit, "teacher_checkpoint": checkpoint}
        tree = {"model": {"name": name}, "loss": {"lambda": 1.0, "alpha": 0.5}, "compression": compression}
        return TrainConfig.model_validate({**tree, "data": {"reinforcement": str(tmp_path / "dr")}})

    message = r"model.name: 'tiny', but compression.inherit is auto: the student is a trainable copy of its teacher"
    with pytest.raises(ConfigError, match=message + r", a 'small' \(the bundled teacher 0\)"):
        bundled.prepare_inputs(config("tiny", "bundled"))
    assert not trained
    with pytest.raises(ConfigError, match=message + r", a 'small' \(.*run/config.yaml\)"):
        direct_inputs(config("tiny", str(tmp_path / "run")))
    assert direct_inputs(config("small", str(tmp_path / "run"))).inherit_from.model == "small"
    assert bundled.prepare_inputs(config("small", "bundled")).inherit_from.model == "small"
    assert direct_inputs(config("tiny", str(tmp_path / "run"), "manual")).inherit_from.model == "small"


def test_manual_inheritance_resamples_the_image_positions_of_a_student_at_another_resolution() -> None:
    """A 32 px student (4x4 patches) inheriting from a 64 px teacher (8x8) gets the teacher's table resampled to
    its grid, as timm resamples it for a new input size; a front slice gave it the teacher's class token and first
    two rows of positions."""
    from ablate.core.config.sections import ModelConfig
    from ablate.core.models.build import apply_axes, build_model

    torch.manual_seed(0)
    teacher = build_model(ModelConfig(name="tiny"))
    resized = apply_axes(copy.deepcopy(teacher), ModelConfig(name="tiny", image_size=32))
    student = build_model(ModelConfig(name="tiny", image_size=32))
    inherit_manual(student, teacher)
    assert student.state_dict()["visual.pos_embed"].shape == (1, 17, 128)
    assert torch.equal(student.state_dict()["visual.pos_embed"], resized.state_dict()["visual.pos_embed"])
    assert torch.equal(student.state_dict()["visual.blocks.3.mlp.fc2.weight"], teacher.visual.blocks[3].mlp.fc2.weight)
