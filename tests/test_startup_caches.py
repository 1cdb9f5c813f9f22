"""What runs of a study share instead of recomputing at every start-up and shutdown: shard indexes (tar headers
scanned once per shard version) and efficiency metrics (measured once per architecture and input size)."""

from __future__ import annotations

import io
import shutil
import tarfile
from pathlib import Path

import pytest
import webdataset as wds

from ablate.core.data import tar_index
from ablate.core.data.tar_index import IndexedShards


def _write_shard(path: Path, samples: int, payload: bytes = b"x" * 700) -> None:
    with tarfile.open(path, "w") as archive:
        for number in range(samples):
            for extension, data in (("png", payload), ("txt", f"caption {number}".encode())):
                info = tarfile.TarInfo(f"sample-{number:04d}.{extension}")
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))


def _forbid_scans(monkeypatch: pytest.MonkeyPatch) -> None:
    def scan(*args: object) -> None:
        raise AssertionError("the shard was scanned again")

    monkeypatch.setattr(tar_index, "index_shard", scan)


def test_a_shard_is_scanned_once_then_read_from_memory_and_disk(tmp_path: Path, monkeypatch) -> None:
    shard = tmp_path / "train-0000.tar"
    _write_shard(shard, 5)
    first = IndexedShards([shard])
    streamed = list(wds.WebDataset(str(shard), shardshuffle=False))
    assert [first[i]["txt"] for i in range(5)] == [s["txt"] for s in streamed]
    _forbid_scans(monkeypatch)
    again = IndexedShards([shard, shard])  # the second copy is shard 1: locations take the caller's number
    assert again.samples[:5] == first.samples
    assert {loc.shard for loc in again.samples[5:]} == {1}
    tar_index._indexes.clear()  # a fresh process: only the JSON under the cache is left
    assert IndexedShards([shard]).samples == first.samples
    assert any((Path(tar_index.cache_dir()) / tar_index.INDEX_CACHE).glob("*.json"))


def test_a_rewritten_shard_is_scanned_again(tmp_path: Path) -> None:
    shard = tmp_path / "train-0000.tar"
    _write_shard(shard, 3)
    assert len(IndexedShards([shard])) == 3
    replacement = tmp_path / "new.tar"
    _write_shard(replacement, 4)
    shutil.move(replacement, shard)  # same path, new file
    assert len(IndexedShards([shard])) == 4
    assert IndexedShards([shard])[3]["txt"] == b"caption 3"


def test_damage_is_remembered_with_the_intact_samples(tmp_path: Path) -> None:
    shard = tmp_path / "train-0000.tar"
    _write_shard(shard, 4, payload=b"y" * 5000)
    with open(shard, "r+b") as handle:
        handle.truncate(shard.stat().st_size // 2)
    reports: list[str] = []
    for _ in range(2):  # scanned, then from the cache: the same samples kept and the same damage reported
        tar_index._indexes.clear()
        kept = IndexedShards([shard], on_damage=lambda path, message: reports.append(message))
        assert 0 < len(kept) < 4
    assert len(reports) == 2 and reports[0] == reports[1]
    with pytest.raises(ValueError, match="is damaged"):
        IndexedShards([shard])


def test_efficiency_is_measured_once_per_architecture(monkeypatch) -> None:
    import torch

    from ablate.core.models import efficiency_cache
    from ablate.core.models.efficiency import EfficiencySettings, efficiency_metrics
    from ablate.core.models.factory import create_model

    settings = EfficiencySettings(latency_repeats=1, throughput_batch=2, throughput_repeats=1, warmup=0)
    measured: list[int] = []

    def measure(model, settings):
        measured.append(id(model))
        return efficiency_metrics(model, settings)

    monkeypatch.setattr(efficiency_cache, "efficiency_metrics", measure)
    first = create_model("tiny")
    metrics = efficiency_cache.cached_efficiency_metrics(first, settings)
    other_weights = create_model("tiny")
    with torch.no_grad():
        for parameter in other_weights.parameters():
            parameter.add_(1.0)
    assert efficiency_cache.cached_efficiency_metrics(other_weights, settings) == metrics  # weights do not matter
    assert len(measured) == 1
    assert metrics["efficiency/params_total"] == sum(p.numel() for p in first.parameters())
    # what does matter: the architecture's shapes, its scalar settings (heads), the input size, the settings
    changed = [create_model("small"), create_model("tiny")]
    changed[1].visual.blocks[0].attn.num_heads = 1  # same shapes, different attention
    keys = {efficiency_cache.architecture_key(m, settings) for m in [first, *changed]}
    keys.add(efficiency_cache.architecture_key(first, EfficiencySettings(throughput_batch=4)))
    assert len(keys) == 4
    efficiency_cache.cached_efficiency_metrics(changed[0], settings)
    assert len(measured) == 2


def test_a_training_run_does_not_import_the_audit_statistics() -> None:
    """scipy.stats (the quality audit's acceptance plans) cost seconds of every run's start-up; the trainer only
    reads quality scores."""
    import subprocess
    import sys

    probe = (
        "import sys, ablate.core.training.trainer; print(sorted(m for m in sys.modules if m.startswith('scipy.stats')))"
    )
    found = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert found.strip() == "[]"
