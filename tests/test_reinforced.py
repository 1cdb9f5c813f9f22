"""Reinforced data: the DataCompDR layout read from an independent writer, our writer (`reinforce_dataset`),
the uid join, damaged shards and width checks (papers.md §1.1, issue 3)."""

from __future__ import annotations

import gzip
import io
import json
import math
import os
import tarfile
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient
from train_helpers import fast_config

from ablate.core.config.base import ConfigError
from ablate.core.config.loading import apply_overrides
from ablate.core.config.sections import DataConfig, TeacherSpec, TrainConfig
from ablate.core.data.augment import RecordedAugment, decompress
from ablate.core.data.dataset import decode_pil, pil_to_uint8
from ablate.core.data.inspect import inspect_shards
from ablate.core.data.manifest import load_manifest
from ablate.core.data.reinforce import ReinforceSettings, reinforce_dataset
from ablate.core.data.reinforcement_store import DataLossWarning, ReinforcementStore
from ablate.core.data.tar_index import IndexedShards
from ablate.core.data.train_dataset import TrainDataset
from ablate.core.models.factory import create_model
from ablate.core.quality.store import score_reinforced
from ablate.core.teachers.ensemble import TeacherEnsemble, fit_context
from ablate.core.training.trainer import train


def _tar_member(archive: tarfile.TarFile, name: str, payload: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    archive.addfile(info, io.BytesIO(payload))


def write_minimal_shard(path: Path, uids: list[str], fmt: str, width: int, augs: int, syn: int) -> dict:
    """A writer that knows only the published layout (tarfile, gzip, torch.save / np.savez): no code of ours.

    The `paug.json` list is stored as a JSON *string*, as on Hugging Face. Returns what it wrote per uid.
    """
    generator = torch.Generator().manual_seed(len(uids))
    written = {}
    with tarfile.open(path, "w") as archive:
        for number, uid in enumerate(uids):
            key = f"{number:09d}"
            image_emb = torch.nn.functional.normalize(torch.randn(augs, width, generator=generator), dim=-1)
            text_emb = torch.nn.functional.normalize(torch.randn(1 + syn, width, generator=generator), dim=-1)
            params = [[[0, 0, 32, 32], [[1, 0.1], [5, -9.0]]] for _ in range(augs)]
            captions = [f"synthetic caption {k} of {uid}" for k in range(syn)]
            _tar_member(archive, f"{key}.url.txt", f"http://example.com/{uid}.jpg".encode())
            _tar_member(archive, f"{key}.json", json.dumps({"uid": uid, "sha256": "0" * 64}).encode())
            _tar_member(archive, f"{key}.syn.json", json.dumps({"syn_text": captions}).encode())
            _tar_member(archive, f"{key}.paug.json", json.dumps({"param_aug": json.dumps(params)}).encode())
            if fmt == "pth.gz":
                buffer = io.BytesIO()
                torch.save({"image_emb": image_emb.bfloat16(), "text_emb": text_emb.bfloat16()}, buffer)
                _tar_member(archive, f"{key}.pth.gz", gzip.compress(buffer.getvalue()))
                written[uid] = (image_emb.bfloat16().float(), text_emb.bfloat16().float(), captions)
            else:
                buffer = io.BytesIO()
                np.savez(buffer, image_emb=image_emb.numpy(), text_emb=text_emb.numpy())
                _tar_member(archive, f"{key}.npz", buffer.getvalue())
                written[uid] = (image_emb, text_emb, captions)
    return written


def image_uids(root: Path) -> list[str]:
    shards = IndexedShards(load_manifest(root).shard_paths("train"))
    return [shards.uid(index) for index in range(len(shards))]


@pytest.mark.parametrize("fmt", ["pth.gz", "npz"])
def test_reader_accepts_an_independent_writer_of_the_published_layout(
    small_shapes: Path, tmp_path: Path, fmt: str
) -> None:
    uids = image_uids(small_shapes)
    (tmp_path / "train").mkdir()
    written = {}
    for start in range(0, len(uids), 40):  # our image shards hold 32: the shard sets do not line up
        shard = tmp_path / "train" / f"dr-{start:06d}.tar"
        written |= write_minimal_shard(shard, uids[start : start + 40], fmt, width=12, augs=3, syn=2)
    store = ReinforcementStore(tmp_path)
    dataset = TrainDataset(
        load_manifest(small_shapes),
        create_model("tiny").inputs,
        DataConfig(captions="both"),
        seed=0,
        store=store,
    )
    assert store.layout([4, 8], None).width == 12 and store.layout(None, None).dims == [12]
    assert len(dataset) == len(uids) and store.width == 12 and store.augmentations == 3
    for visit in (0, 5, 101):
        image_index, row = dataset.pairs[visit % len(dataset)]
        uid = dataset.images.uid(image_index)
        item, draw = dataset[visit], dataset.draw(visit, 3, 2)
        image_emb, text_emb, captions = written[uid]
        assert item["teacher_image"].dtype == torch.float32
        assert torch.equal(item["teacher_image"], image_emb[draw.augmentation])
        assert torch.equal(item["teacher_text"], text_emb[[0, 1 + draw.synthetic]])
        assert torch.equal(item["tokens"][1], dataset.tokenizer(captions[draw.synthetic])[0])
        source = decode_pil(dataset.images[image_index])
        params = decompress(store.record(row).param_aug[draw.augmentation])
        assert torch.equal(item["image"], pil_to_uint8(RecordedAugment().replay_uint8(source, params, 64)))


def test_reinforce_writes_the_layout_and_resumes_per_shard(
    small_shapes: Path, random_teachers: list[TeacherSpec], tmp_path: Path
) -> None:
    settings = ReinforceSettings(augmentations=2, synthetic_captions=3, batch_size=64)
    out = tmp_path / "dr"
    info = reinforce_dataset(small_shapes, random_teachers, out, settings, progress=False)
    assert info.teacher_dims == [128, 128] and info.teacher_logit_scales == [70.0, 60.0]
    assert sorted(info.shards.values()) == [32, 32, 32]
    summary = inspect_shards([out / "train"])
    assert summary["samples"] == 96 and not summary["damaged"]
    assert set(summary["members"]) == {"url.txt", "json", "syn.json", "paug.json", "pth.gz"}
    assert summary["embeddings"] == {"image_emb [2, 256] bfloat16": 96, "text_emb [4, 256] bfloat16": 96}
    assert summary["augmentations_per_sample"] == {2: 96} and summary["synthetic_captions_per_sample"] == {3: 96}

    # The stored vectors are the teachers' unit-norm embeddings of the replayed view and of the captions.
    ensemble = TeacherEnsemble.load(random_teachers)
    store = ReinforcementStore(out)
    images = IndexedShards(load_manifest(small_shapes).shard_paths("train"))
    record = store.record(store.rows[images.uid(7)])
    view = RecordedAugment().replay_uint8(decode_pil(images[7]), decompress(record.param_aug[1]), 64)
    exact = ensemble.encode_images(pil_to_uint8(view)[None])[0]
    assert torch.allclose(record.image_emb[1], exact, atol=1e-2)  # bf16 storage
    assert torch.allclose(record.image_emb[1, :128].norm(), torch.tensor(1.0), atol=1e-2)
    texts = [images[7]["txt"].decode(), *json.loads(images[7]["syn.json"])["syn_text"][:3]]
    assert torch.allclose(record.text_emb, ensemble.encode_texts(texts), atol=1e-2)

    # Resume: a finished shard is skipped, a half-written one redone, and the result is byte-identical.
    shards = sorted((out / "train").glob("*.tar"))
    reference = {path.name: path.read_bytes() for path in shards}
    os.utime(shards[0], (1, 1))
    shards[1].unlink()
    (out / "train" / f"{shards[1].name}.partial").write_bytes(b"half a shard")
    recorded = json.loads((out / "reinforcement.json").read_text())
    del recorded["shards"][shards[2].name]
    (out / "reinforcement.json").write_text(json.dumps(recorded))
    reinforce_dataset(small_shapes, random_teachers, out, settings, progress=False)
    assert shards[0].stat().st_mtime == 1  # untouched
    assert {path.name: path.read_bytes() for path in shards} == reference

    with pytest.raises(ConfigError, match="augmentations: recorded 2, now 3"):
        reinforce_dataset(small_shapes, random_teachers, out, ReinforceSettings(augmentations=3), progress=False)


def test_damaged_shards_are_skipped_with_a_count_and_widths_are_checked(
    small_shapes: Path, random_teachers: list[TeacherSpec], tmp_path: Path
) -> None:
    out = tmp_path / "dr"
    reinforce_dataset(small_shapes, random_teachers, out, ReinforceSettings(augmentations=1), progress=False)
    victim = sorted((out / "train").glob("*.tar"))[1]
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 2])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        store = ReinforcementStore(out)
    messages = [str(w.message) for w in caught if issubclass(w.category, DataLossWarning)]
    assert any(victim.name in m and ("truncated" in m or "unreadable after" in m) for m in messages), messages
    lost = 96 - len(store.rows)
    assert 0 < lost < 32 and store.lost == lost
    assert any(f"{lost} of 32 recorded samples unreadable" in m for m in messages), messages

    with pytest.raises(ConfigError, match=r"stores 256-wide .* add up to 100 \(loss.teacher_dims=\[100\]\)"):
        store.layout([100], None)


def short_run(tmp_path: Path, small_shapes: Path, overrides: dict) -> TrainConfig:
    tree = fast_config(tmp_path, small_shapes, {"train.steps": 4, "train.batch_size": 16, "train.log_every": 1})
    tree = apply_overrides(tree, {"train.eval_every": 4, "eval.max_samples": 32, "optim.warmup_steps": 1})
    return TrainConfig.model_validate(apply_overrides(tree, overrides))


def logged(config: TrainConfig, name: str) -> list[float]:
    client = MlflowClient(config.tracking.uri)
    run_id = json.loads((Path(config.run_dir) / "mlflow_run.json").read_text())["run_id"]
    return [metric.value for metric in client.get_metric_history(run_id, name)]


@pytest.mark.parametrize("lam", [0.0, 1.0])
def test_reinforced_runs_weigh_clip_and_distillation_by_lambda(
    small_shapes: Path, reinforced_small: Path, tmp_path: Path, lam: float
) -> None:
    """λ = 0 trains on exactly the CLIP terms and λ = 1 on exactly the distillation terms (Eq. 2–3), both logged."""
    overrides = {"data.reinforcement": str(reinforced_small), "data.captions": "both", "loss.lambda": lam}
    config = short_run(tmp_path, small_shapes, overrides)
    result = train(config)
    assert result.steps == 4
    loss, clip, distill = (logged(config, f"train/{name}") for name in ("loss", "clip", "distill"))
    assert len(loss) == len(clip) == len(distill) == 4
    assert loss == pytest.approx(clip if lam == 0.0 else distill, rel=1e-6)
    assert all(math.isfinite(d) and d > 0 for d in distill)


def test_online_teachers_and_a_width_mismatch(
    small_shapes: Path, reinforced_small: Path, random_teachers: list[TeacherSpec], tmp_path: Path
) -> None:
    members = [spec.model_dump() for spec in random_teachers]
    online = short_run(
        tmp_path / "online",
        small_shapes,
        {
            "teachers.mode": "online",
            "teachers.members": members,
            "loss.lambda": 0.5,
            "data.captions": "mix",
            "eval.efficiency": True,
        },
    )
    result = train(online)
    assert result.steps == 4 and len(logged(online, "train/distill")) == 4
    assert {"efficiency/params_total", "efficiency/latency_image_ms"} <= set(result.metrics)
    assert logged(online, "efficiency/params_total") == [result.metrics["efficiency/params_total"]]

    wrong = short_run(
        tmp_path / "wrong",
        small_shapes,
        {"data.reinforcement": str(reinforced_small), "loss.lambda": 1.0, "loss.teacher_dims": [100, 100]},
    )
    with pytest.raises(ConfigError, match=r"stores 256-wide teacher embeddings.*add up to 200"):
        train(wrong)
    assert not (Path(wrong.run_dir) / "checkpoints").exists()


def test_teacher_tokens_are_fitted_to_each_teacher_context() -> None:
    """Longer captions are cut with end-of-text kept last (open_clip's truncation); shorter ones are padded."""
    tokens = torch.tensor([[49406, 5, 6, 7, 49407, 0], [49406, 5, 49407, 0, 0, 0]])
    assert fit_context(tokens, 4, 49407).tolist() == [[49406, 5, 6, 49407], [49406, 5, 49407, 0]]
    assert fit_context(tokens, 8, 49407).tolist() == [
        [49406, 5, 6, 7, 49407, 0, 0, 0],
        [49406, 5, 49407, 0, 0, 0, 0, 0],
    ]


def test_quality_scores_read_the_writers_layout(reinforced_small: Path) -> None:
    """`ablate reinforce` keeps shards in `train/`; the caption-quality scorer must find them there."""
    frame = score_reinforced(reinforced_small)
    assert len(frame) == 96 and frame["uid"].is_unique
    assert frame["clip_score"].between(-1, 1).all()


def test_published_shards_replay_translate_in_pixels_of_the_recorded_view(small_shapes: Path, tmp_path: Path) -> None:
    """Shards in the published layout with no `reinforcement.json` of ours are DataCompDR's: their Translate
    magnitudes are pixels of the 224-px view the teachers embedded (ml-mobileclip `training/dr/transforms.py`),
    so a 64-px student sees the same fraction of its side shifted (30.45 px of 224 -> 8 px of 64), not an
    all-black view. Our writer records its own convention (fractions) in `reinforcement.json`."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as tvf
    from torchvision.transforms.autoaugment import _apply_op

    from ablate.core.data.reinforced_format import ReinforcementInfo

    uids = image_uids(small_shapes)[:8]
    (tmp_path / "train").mkdir()
    with tarfile.open(tmp_path / "train" / "dr-000000.tar", "w") as archive:
        for number, uid in enumerate(uids):
            buffer = io.BytesIO()
            torch.save({"image_emb": torch.ones(1, 4).bfloat16(), "text_emb": torch.ones(1, 4).bfloat16()}, buffer)
            _tar_member(archive, f"{number:09d}.json", json.dumps({"uid": uid}).encode())
            record = [[0, 0, 64, 64], [[3, 30.45], [0, 0]]]  # TranslateX by 30.45 px, then Identity
            _tar_member(archive, f"{number:09d}.paug.json", json.dumps({"param_aug": json.dumps([record])}).encode())
            _tar_member(archive, f"{number:09d}.pth.gz", gzip.compress(buffer.getvalue()))
    store = ReinforcementStore(tmp_path)
    dataset = TrainDataset(load_manifest(small_shapes), create_model("tiny").inputs, DataConfig(), 0, store=store)
    for visit in range(3):
        image_index, _ = dataset.pairs[visit]
        source = decode_pil(dataset.images[image_index])
        view = tvf.resized_crop(source, 0, 0, 64, 64, [64, 64], InterpolationMode.BICUBIC, antialias=True)
        expected = _apply_op(view, "TranslateX", 30.45 * 64 / 224, InterpolationMode.NEAREST, None)
        image = dataset[visit]["image"]
        assert image.any() and not image[:, :, :8].any() and image[:, :, 8].any()
        assert torch.equal(image, pil_to_uint8(expected))

    ours = {"source": "x", "teachers": [{"name": "tiny", "dim": 4}], "augmentations": 1, "synthetic_captions": 0}
    assert ReinforcementInfo.model_validate({**ours, "augment": {"size": 64}}).translate == "fraction"  # older ours
    assert ReinforcementInfo.model_validate(ours).translate == "pixels"


def test_our_writer_records_its_translate_convention(reinforced_small: Path) -> None:
    """`ablate reinforce` stores Translate as fractions of the side and says so in its own metadata (the file,
    not the reader's inference for older folders), so its shards never read as DataCompDR's pixels."""
    recorded = json.loads((reinforced_small / "reinforcement.json").read_text())
    assert recorded["translate"] == "fraction"
    assert ReinforcementStore(reinforced_small).translate_side is None
