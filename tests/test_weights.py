"""Pretrained weights as open_clip names them, loaded offline: tags and hf-hub ids from a Hugging Face cache that
the tests write in huggingface_hub's own layout (blobs + snapshot symlinks + refs/main) from randomly initialised
weights, open_clip state dicts in every file format, and the errors that name the field holding a bad value."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import open_clip
import pytest
import torch
from safetensors.torch import save, save_file
from train_helpers import fast_config

from ablate.core.config.base import ConfigError
from ablate.core.config.sections import TeacherSpec
from ablate.core.models.build import build_model
from ablate.core.models.factory import create_model
from ablate.core.models.weights import load_weights, resolve_weights
from ablate.core.teachers.ensemble import check_teacher, load_teacher

VIT_B_32_HUB = "laion/CLIP-ViT-B-32-laion2B-s34B-b79K"  # open_clip's hub repo of ViT-B-32 laion2b_s34b_b79k


def write_hub_file(cache: Path, repo: str, filename: str, payload: bytes, revision: str = "0" * 40) -> Path:
    """One file in huggingface_hub's cache layout: models--org--name/{blobs/<sha256>, snapshots/<rev>/<file> ->
    ../../blobs/<sha256>, refs/main = <rev>}; what `hf_hub_download(..., local_files_only=True)` resolves."""
    folder = cache / f"models--{repo.replace('/', '--')}"
    blob = folder / "blobs" / hashlib.sha256(payload).hexdigest()
    blob.parent.mkdir(parents=True, exist_ok=True)
    blob.write_bytes(payload)
    snapshot = folder / "snapshots" / revision / filename
    snapshot.parent.mkdir(parents=True, exist_ok=True)
    snapshot.symlink_to(Path("../..") / "blobs" / blob.name)
    (folder / "refs").mkdir(exist_ok=True)
    (folder / "refs" / "main").write_text(revision)
    return snapshot


def open_clip_state(name: str, seed: int) -> dict[str, torch.Tensor]:
    """A randomly initialised open_clip model's state dict in open_clip's own layout (CLIP keeps its text tower
    at the top level: `transformer.*`, `token_embedding.*`), as the files on the hub hold it."""
    torch.manual_seed(seed)
    model = open_clip.create_model(name, pretrained=None)
    return {key: value.contiguous() for key, value in model.state_dict().items()}


@pytest.fixture(scope="module")
def vit_b_32_cache(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, torch.Tensor]]:
    """A HF cache holding a random ViT-B-32 as laion2b_s34b_b79k's open_clip_model.safetensors."""
    cache = tmp_path_factory.mktemp("hf-hub")
    state = open_clip_state("ViT-B-32", seed=3)
    write_hub_file(cache, VIT_B_32_HUB, "open_clip_model.safetensors", save(state))
    return cache, state


@pytest.fixture
def hub_cache(vit_b_32_cache, monkeypatch: pytest.MonkeyPatch) -> dict[str, torch.Tensor]:
    cache, state = vit_b_32_cache
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    return state


def assert_holds(model, state: dict[str, torch.Tensor]) -> None:
    """Every tensor of the open_clip file is in the model under its CustomTextCLIP name, value for value."""
    own = model.state_dict()
    for key, value in state.items():
        ours = key if key.startswith(("visual.", "logit")) else f"text.{key}"
        if key == "attn_mask":  # a buffer open_clip rebuilds, not a weight
            continue
        assert torch.equal(own[ours], value), key


def test_a_pretrained_tag_resolves_from_the_local_hub_cache(hub_cache, no_network: None) -> None:
    resolved = resolve_weights("ViT-B-32", "laion2b_s34b_b79k", "model.pretrained")
    assert resolved.path.name == "open_clip_model.safetensors" and VIT_B_32_HUB.replace("/", "--") in str(resolved.path)
    model = create_model("ViT-B-32")
    report = load_weights(model, "ViT-B-32", "laion2b_s34b_b79k", "model.pretrained")
    assert report.complete, report.summary()
    assert_holds(model, hub_cache)
    assert model.inputs.mean == pytest.approx((0.48145466, 0.4578275, 0.40821073))  # the tag's preprocessing


def test_an_hf_hub_id_names_the_same_file(hub_cache, no_network: None) -> None:
    model = create_model("ViT-B-32")
    report = load_weights(model, "ViT-B-32", f"hf-hub:{VIT_B_32_HUB}", "teachers.members[0].checkpoint")
    assert report.complete and report.path.name == "open_clip_model.safetensors"
    assert_holds(model, hub_cache)
    one_file = resolve_weights("ViT-B-32", f"hf-hub:{VIT_B_32_HUB}/open_clip_model.safetensors", "model.pretrained")
    assert one_file.path == report.path
    with pytest.raises(ConfigError, match=r"model.pretrained: 'hf-hub:a b/c': not a hub repo id"):
        resolve_weights("ViT-B-32", "hf-hub:a b/c", "model.pretrained")


def test_missing_hub_files_and_unknown_tags_name_the_field(
    hub_cache, no_network: None, caplog: pytest.LogCaptureFixture
) -> None:
    with pytest.raises(ConfigError, match=r"teachers.members\[1\].checkpoint: 'openai': no .* hub repo timm/"):
        resolve_weights("ViT-B-32", "openai", "teachers.members[1].checkpoint")  # its repo is not in the cache
    assert "ViT-B-32:openai was trained with quick_gelu=True" in caplog.text  # open_clip's own warning, as a hint
    assert "consider the ViT-B-32-quickgelu architecture" in caplog.text
    with pytest.raises(ConfigError, match=r"model.pretrained: 'laion9b'.*tags: .*laion2b_s34b_b79k"):
        resolve_weights("ViT-B-32", "laion9b", "model.pretrained")
    with pytest.raises(ConfigError, match=r"model.pretrained: 'hf-hub:apple/none'.*apple/none"):
        resolve_weights("MobileCLIP2-S0", "hf-hub:apple/none", "model.pretrained")


def test_teacher_errors_name_the_member_field() -> None:
    with pytest.raises(ConfigError, match=r"^teachers.members\[1\].model: unknown model 'ViT-S-33'"):
        check_teacher(TeacherSpec(model="ViT-S-33", checkpoint="x"), "teachers.members[1]")
    siglip = TeacherSpec(model="ViT-B-16-SigLIP", checkpoint="x")  # open_clip's, but not CLIP's BPE tokenizer
    with pytest.raises(ConfigError, match=r"^teachers.members\[0\].model: model 'ViT-B-16-SigLIP' is not supported"):
        check_teacher(siglip, "teachers.members[0]")
    with pytest.raises(ConfigError, match=r"^model.name: unknown model 'tinyy'"):
        from ablate.core.config.sections import ModelConfig

        build_model(ModelConfig(name="tinyy"))


@pytest.mark.parametrize("suffix", [".safetensors", ".bin", ".pt"])
def test_open_clip_files_load_in_every_format(tmp_path: Path, suffix: str) -> None:
    """A `tiny` model's weights written as open_clip files (safetensors, torch .bin) and as an open_clip_train
    `epoch_N.pt` (`state_dict` under DDP's `module.` prefix) load back exactly."""
    source = create_model("tiny")
    torch.manual_seed(1)
    for parameter in source.parameters():
        parameter.data.normal_()
    state = {key: value.contiguous() for key, value in source.state_dict().items()}
    path = tmp_path / f"weights{suffix}"
    if suffix == ".safetensors":
        save_file(state, path)
    elif suffix == ".bin":
        torch.save(state, path)
    else:
        path = tmp_path / "epoch_3.pt"
        torch.save({"epoch": 3, "name": "run", "state_dict": {f"module.{k}": v for k, v in state.items()}}, path)
    target = create_model("tiny")
    report = load_weights(target, "tiny", str(path), "model.pretrained")
    assert report.complete, report.summary()
    for key, value in state.items():
        assert torch.equal(target.state_dict()[key], value), key


def test_a_file_that_fits_nothing_is_an_error_and_a_partial_fit_is_reported(tmp_path: Path) -> None:
    foreign = tmp_path / "foreign.safetensors"
    save_file({"encoder.weight": torch.zeros(2, 2)}, foreign)
    with pytest.raises(ConfigError, match=r"model.pretrained: .*no tensor fits model 'tiny'.*encoder.weight"):
        load_weights(create_model("tiny"), "tiny", str(foreign), "model.pretrained")
    half = {k: v for k, v in create_model("tiny").state_dict().items() if k.startswith("visual.")}
    partial = tmp_path / "image-only.safetensors"
    save_file({k: v.contiguous() for k, v in half.items()} | {"extra.bias": torch.zeros(3)}, partial)
    report = load_weights(create_model("tiny"), "tiny", str(partial), "model.pretrained")
    assert set(report.loaded) == set(half) and report.unexpected == ["extra.bias"]
    assert report.missing and all(key.startswith(("text.", "logit")) for key in report.missing)
    with pytest.raises(ConfigError, match=r"teachers.members\[0\].checkpoint: .* does not fit .*missing"):
        load_teacher(TeacherSpec(model="tiny", checkpoint=str(partial)), "teachers.members[0]")


def test_student_starts_from_model_pretrained_before_the_axes_apply(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """model.pretrained loads into the named architecture; a sigmoid-attention student converts those weights."""
    from ablate.core.config.sections import ModelConfig

    source = create_model("tiny")
    path = tmp_path / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, path)
    with caplog.at_level(logging.INFO, logger="ablate.model"):
        model = build_model(ModelConfig(name="tiny", pretrained=str(path)), pretrained=True)
    assert "model.pretrained: " in caplog.text and "tensors loaded" in caplog.text
    assert torch.equal(model.visual.patch_embed.proj.weight, source.visual.patch_embed.proj.weight)
    fresh = build_model(ModelConfig(name="tiny", pretrained=str(path)))  # resumes read their checkpoint instead
    assert not torch.equal(fresh.visual.patch_embed.proj.weight, source.visual.patch_embed.proj.weight)
    converted = build_model(ModelConfig(name="tiny", init=str(path), attention="sigmoid"), pretrained=True)
    assert torch.equal(converted.text.token_embedding.weight, source.text.token_embedding.weight)


@pytest.mark.slow
def test_a_vit_b_32_teacher_from_the_hub_cache_reinforces_samples(hub_cache, tmp_path: Path, no_network: None) -> None:
    """`ablate reinforce --teacher ViT-B-32=laion2b_s34b_b79k` (the library call behind the CLI verb, in process):
    the stored caption embeddings are that teacher's, with the cache's weights."""
    from typer.testing import CliRunner

    from ablate.ablations.cli import app
    from ablate.core.data.reinforcement_store import ReinforcementStore
    from ablate.core.data.shapes import generate_shapes
    from ablate.core.data.tar_index import IndexedShards

    source = tmp_path / "photos"
    generate_shapes(source, train=3, val=1, seed=0, image_size=32, samples_per_shard=3)
    out = tmp_path / "dr"
    args = ["reinforce", str(source), "--out", str(out), "--teacher", "ViT-B-32=laion2b_s34b_b79k@70"]
    done = CliRunner().invoke(app, [*args, "--augmentations", "1", "--synthetic", "0", "--batch-size", "3"])
    assert done.exit_code == 0, done.output
    store = ReinforcementStore(out)
    assert store.layout(None, None).dims == [512] and store.layout(None, None).logit_scales == [70.0]
    images = IndexedShards(sorted((source / "train").glob("*.tar")))
    teacher = load_teacher(TeacherSpec(model="ViT-B-32", pretrained="laion2b_s34b_b79k"))
    assert_holds(teacher, hub_cache)
    caption = images[0]["txt"].decode()
    stored = store.record(store.rows[images.uid(0)]).text_emb[0]
    from ablate.core.teachers.ensemble import TeacherEnsemble

    exact = TeacherEnsemble([teacher], [70.0], ["ViT-B-32"]).encode_texts([caption])[0]
    assert torch.allclose(stored, exact, atol=1e-2)  # bf16 storage

    unknown = CliRunner().invoke(app, ["reinforce", str(source), "--out", str(out), "--teacher", "ViT-S-33=x"])
    assert unknown.exit_code == 2 and "teacher.model: unknown model 'ViT-S-33'" in " ".join(unknown.output.split())


@pytest.mark.slow
def test_an_open_clip_student_fine_tunes_from_a_safetensors_file(
    small_shapes: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """ViT-S-32-alt (an open_clip architecture, not in our registry) starts from an open_clip `.safetensors` and
    trains: two AdamW steps at lr 1e-6 keep every weight within 1e-4 of the file's, far from a fresh init."""
    from ablate.core.config.sections import TrainConfig
    from ablate.core.training.trainer import train

    state = open_clip_state("ViT-S-32-alt", seed=5)
    path = tmp_path / "open_clip_model.safetensors"
    save_file(state, path)
    overrides = {
        "model.name": "ViT-S-32-alt",
        "model.pretrained": str(path),
        "optim.lr": 1e-6,
        "optim.warmup_steps": 0,
        "train.steps": 2,
        "train.batch_size": 4,
        "train.eval_every": 100,
        "eval.max_samples": 8,
        "data.num_workers": 0,
        "tracking.enabled": False,
    }
    config = TrainConfig.model_validate(fast_config(tmp_path, small_shapes, overrides))
    with caplog.at_level(logging.INFO, logger="ablate.model"):
        result = train(config)
    assert result.steps == 2 and result.metrics
    assert f"tensors loaded from {path}" in caplog.text
    trained = torch.load(Path(config.run_dir) / "checkpoints" / "step_00000002.pt", weights_only=True)["model"]
    for key in ("visual.conv1.weight", "text.token_embedding.weight", "visual.transformer.resblocks.5.mlp.c_fc.weight"):
        original = state[key.removeprefix("text.")]  # the file keeps open_clip's top-level text keys
        assert (trained[key] - original).abs().max() < 1e-4, key
    fresh = create_model("ViT-S-32-alt").state_dict()["visual.conv1.weight"]
    assert (fresh - state["visual.conv1.weight"]).abs().max() > 1e-2


def test_apples_mct_checkpoint_loads_into_our_mct_output_for_output() -> None:
    """tests/data/apple_mct_reference.safetensors was written by Apple's own ml-mobileclip code (a small MCt with
    random weights in every branch, its tokens and its output; see make_apple_mct_reference.py): renamed onto our
    TextEncoder, every text tensor loads and the outputs agree."""
    from safetensors.torch import load_file

    from ablate.core.models.clip import CLIP, InputSpec
    from ablate.core.models.text import TextEncoder, TextSpec

    path = Path(__file__).parent / "data" / "apple_mct_reference.safetensors"
    reference = load_file(path)
    spec = TextSpec(width=32, heads=2, layers=4, attention_layers=2, context_length=16, vocab_size=1000, output_dim=24)
    model = CLIP(torch.nn.Linear(3, 24), TextEncoder(spec), InputSpec(32, 16, (0.0,) * 3, (1.0,) * 3))
    report = load_weights(model, "apple-mct", str(path), "model.pretrained")
    assert [key for key in report.missing if key.startswith("text.")] == []
    assert set(report.unexpected) == {"reference.tokens", "reference.output"}
    with torch.no_grad():
        ours = model.text.eval()(reference["reference.tokens"])
    assert torch.allclose(ours, reference["reference.output"], atol=1e-5), (
        (ours - reference["reference.output"]).abs().max()
    )


def test_a_base_text_tower_maps_onto_an_mct_student_and_reports_the_rest(tmp_path: Path) -> None:
    """`tiny` -> `mct-tiny` is MobileCLIP2-S0 -> MobileCLIP-S0 at CPU size: same image tower, open_clip Base text
    (3 layers) into MCt (RepMixer, 2 attention, RepMixer). The image tower, embeddings, final norm and projection
    carry over, attention blocks take layers 0 and 1, the RepMixers stay as built and layer 2 is left over."""
    source = create_model("tiny")
    path = tmp_path / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, path)
    student = create_model("mct-tiny")
    report = load_weights(student, "mct-tiny", str(path), "model.pretrained")
    theirs, ours = source.state_dict(), student.state_dict()
    assert all(torch.equal(ours[k], v) for k, v in theirs.items() if k.startswith("visual."))
    for key in ("token_embedding.weight", "positional_embedding", "ln_final.weight", "text_projection"):
        assert torch.equal(ours[f"text.{key}"], theirs[f"text.{key}"]), key
    assert torch.equal(
        ours["text.blocks.1.attn.qkv.weight"], theirs["text.transformer.resblocks.0.attn.in_proj_weight"]
    )
    assert torch.equal(ours["text.blocks.2.mlp.fc2.weight"], theirs["text.transformer.resblocks.1.mlp.c_proj.weight"])
    assert {key.split(".")[2] for key in report.missing} == {"0", "3"}  # text.blocks.0/3: the Text-RepMixers
    assert report.unexpected and all(key.startswith("text.transformer.resblocks.2.") for key in report.unexpected)
    assert "open_clip layer 1 -> block 2" in report.summary()


def test_ablate_models_describes_any_open_clip_architecture() -> None:
    """`ablate models ViT-L-14` (not in our registry): built on the meta device, its published sizes."""
    import json

    from typer.testing import CliRunner

    from ablate.ablations.cli import app

    done = CliRunner().invoke(app, ["models", "ViT-L-14", "--json"])
    assert done.exit_code == 0, done.output
    (row,) = json.loads(done.output)
    assert row["image"] == pytest.approx(303.97e6, rel=1e-3) and row["text"] == pytest.approx(123.65e6, rel=1e-3)
    unknown = CliRunner().invoke(app, ["models", "ViT-S-33"])
    assert unknown.exit_code == 2 and "unknown model 'ViT-S-33'" in unknown.output


def test_run_inputs_check_student_weights_and_online_teachers_before_any_work(tmp_path: Path) -> None:
    """prepare_inputs reaches these checks before it would generate the benchmark or train bundled teachers."""
    from ablate.core.config.sections import TrainConfig
    from ablate.core.training.inputs import direct_inputs

    missing = TrainConfig.model_validate({"model": {"name": "tiny", "init": str(tmp_path / "none.pt")}})
    with pytest.raises(ConfigError, match=r"^model.pretrained: '.*none.pt' is not a file"):
        direct_inputs(missing)
    teachers = {"mode": "online", "members": [{"model": "tiny", "checkpoint": str(tmp_path / "gone.pt")}]}
    online = TrainConfig.model_validate({"loss": {"lambda": 0.5}, "teachers": teachers})
    with pytest.raises(ConfigError, match=r"^teachers.members\[0\].checkpoint: '.*gone.pt' is not a file"):
        direct_inputs(online)
