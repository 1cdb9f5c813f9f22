"""Multi-process trials (core/training/distributed.py): two gloo ranks on this machine against one process.

The reference is the plain single-process computation on the whole global batch; the ranks each hold half of
its rows, gather the others' features and average gradients. They must agree to float32 round-off.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from distributed_workers import CASES, fault_worker, loss_worker, step_terms_and_gradients, train_worker
from mlflow.tracking import MlflowClient
from train_helpers import fast_config, free_port

from ablate.core.config.base import ConfigError
from ablate.core.config.sections import DataConfig, TrainConfig
from ablate.core.data.manifest import load_manifest
from ablate.core.data.train_dataset import TrainDataset
from ablate.core.models.factory import create_model
from ablate.core.training.distributed import ProcessGroup
from ablate.core.training.trainer import train


@pytest.fixture(scope="module")
def global_batch(shapes_root: Path) -> dict[str, torch.Tensor]:
    """16 real samples with two caption sets and two stored teachers (widths 4 + 4), like a reinforced batch."""
    dataset = TrainDataset(load_manifest(shapes_root), create_model("tiny").inputs, DataConfig(), seed=0)
    items = [dataset[index] for index in range(16)]
    batch = {name: torch.stack([item[name] for item in items]) for name in items[0]}
    batch["tokens"] = torch.cat([batch["tokens"], batch["tokens"].flip(0)], dim=1)  # [B, 2, L]: B_real, B_syn
    generator = torch.Generator().manual_seed(0)
    batch["teacher_image"] = torch.nn.functional.normalize(torch.randn(16, 8, generator=generator), dim=-1)
    batch["teacher_text"] = torch.nn.functional.normalize(torch.randn(16, 2, 8, generator=generator), dim=-1)
    return batch


def test_two_gloo_ranks_give_the_global_batch_loss_and_gradients(global_batch, tmp_path: Path) -> None:
    """CLIP, MobileCLIP KD over B_real + B_syn, TinyCLIP affinity mimicking, and KD with cached accumulation:
    the mean of the ranks' losses is the single-process loss on the global batch (within 1e-5) and the averaged
    gradients are its gradients (the logit scale's included)."""
    out = tmp_path / "ranks.pt"
    mp.spawn(loss_worker, args=(2, free_port(), global_batch, str(out)), nprocs=2, join=True)
    distributed = torch.load(out)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for name, (loss, accumulation) in CASES.items():
            single_terms, single_grads = step_terms_and_gradients(global_batch, loss, accumulation, ProcessGroup())
            terms, grads = distributed[name]
            assert terms.keys() == single_terms.keys()
            for term, value in single_terms.items():
                assert terms[term] == pytest.approx(value, abs=1e-5), (name, term)
            assert set(grads) ^ set(single_grads) == set(), name
            assert "logit_scale" in grads or name == "tinyclip_affinity"  # TinyCLIP pins the student scale
            for parameter, gradient in single_grads.items():
                error = (grads[parameter] - gradient).abs().max().item()
                assert error <= 1e-5 * gradient.abs().max().item() + 1e-8, (name, parameter, error)
    finally:
        torch.set_num_threads(threads)


def test_a_two_rank_run_trains_like_one_process_and_only_rank_zero_logs(tmp_path: Path, shapes_root: Path) -> None:
    """The trainer end to end: each rank reads its half of every batch, the loss curve and evaluation equal a
    single-process run's, and MLflow holds one run whose history is a single process's, not two."""
    overrides = {
        "train.steps": 6,
        "train.batch_size": 16,
        "train.eval_every": 6,
        "train.checkpoint_every": 3,
        "train.log_every": 2,
        "train.threads": 1,
        "data.num_workers": 0,
    }
    single = fast_config(tmp_path / "single", shapes_root, overrides)
    reference = train(TrainConfig.model_validate(single))
    config = fast_config(tmp_path / "ranks", shapes_root, overrides)
    mp.spawn(train_worker, args=(2, free_port(), config, str(tmp_path)), nprocs=2, join=True)
    rank0, rank1 = (torch.load(tmp_path / f"rank{rank}.pt") for rank in (0, 1))

    assert rank0["steps"] == rank1["steps"] == 6
    assert rank1["metrics"] == {} and rank1["history"] == []  # rank 1 neither evaluates nor reports
    for name, value in reference.metrics.items():
        assert rank0["metrics"][name] == pytest.approx(value, abs=1 / 128 + 1e-6), name  # 128 eval samples
    client = MlflowClient(tracking_uri=config["tracking"]["uri"])
    (run,) = client.search_runs([client.get_experiment_by_name("tests").experiment_id])
    losses = [metric.value for metric in client.get_metric_history(run.info.run_id, "train/loss")]
    reference_client = MlflowClient(tracking_uri=single["tracking"]["uri"])
    reference_run = reference_client.get_run(reference.run_id)
    expected = [metric.value for metric in reference_client.get_metric_history(reference_run.info.run_id, "train/loss")]
    assert len(losses) == len(expected) == 3
    assert losses == pytest.approx(expected, rel=1e-4)
    assert sorted(path.name for path in (tmp_path / "ranks" / "run" / "checkpoints").iterdir())[-1].endswith("6.pt")


def test_each_rank_reads_its_own_rows_and_a_batch_that_does_not_split_is_refused() -> None:
    assert [ProcessGroup(rank, 4).rows(16) for rank in range(4)] == [
        slice(0, 4),
        slice(4, 8),
        slice(8, 12),
        slice(12, 16),
    ]
    assert ProcessGroup().rows(16) == slice(0, 16)
    with pytest.raises(ConfigError, match=r"train.batch_size: 16 does not split over the trial's 3 processes"):
        ProcessGroup(1, 3).rows(16)


def test_row_shares_of_every_loss_average_to_the_whole_batch_loss() -> None:
    """The identity the ranks rely on, in one process: split 12 rows into 3 shares scored against all columns;
    the mean of the shares is the loss on the whole batch, for CLIP, MobileCLIP KD (ensemble and concatenated)
    and TinyCLIP affinity mimicking."""
    from ablate.core import losses

    generator = torch.Generator().manual_seed(3)

    def unit(*shape: int) -> torch.Tensor:
        return torch.nn.functional.normalize(torch.randn(*shape, generator=generator, dtype=torch.float64), dim=-1)

    image, text, teacher_image, teacher_text = unit(12, 6), unit(12, 6), unit(12, 8), unit(12, 8)
    scale = torch.tensor(20.0, dtype=torch.float64)
    variants = {
        "clip": lambda i, t, ti, tt, c, tc: losses.clip_loss(i, t, scale, c),
        "kd": lambda i, t, ti, tt, c, tc: losses.mobileclip_distill_loss(
            i, t, scale, ti, tt, [4, 4], [30.0, 10.0], True, c, tc
        ),
        "kd_concatenated": lambda i, t, ti, tt, c, tc: losses.mobileclip_distill_loss(
            i, t, scale, ti, tt, [8], [30.0], False, c, tc
        ),
        "affinity": lambda i, t, ti, tt, c, tc: losses.affinity_mimicking_loss(i, t, ti, tt, 1 / 50, [4, 4], c, tc),
    }
    for name, loss in variants.items():
        whole = loss(image, text, teacher_image, teacher_text, None, None)
        shares = [
            loss(
                image[rows],
                text[rows],
                teacher_image[rows],
                teacher_text[rows],
                losses.Columns(image, text, rows.start),
                losses.Columns(teacher_image, teacher_text, rows.start),
            )
            for rows in (ProcessGroup(rank, 3).rows(12) for rank in range(3))
        ]
        assert torch.stack(shares).mean().item() == pytest.approx(whole.item(), abs=1e-12), name


@pytest.mark.parametrize("fault", ["dead", "stuck"])
def test_a_dead_or_stuck_rank_fails_the_others_within_the_collective_timeout(fault: str, tmp_path: Path) -> None:
    """Without a bound, rank 0 waited in its all-reduce for torch's default 30 minutes when its peer hung."""
    context = mp.get_context("spawn")
    out = tmp_path / "rank0.txt"
    port = free_port()
    ranks = [context.Process(target=fault_worker, args=(rank, port, fault, 3.0, str(out))) for rank in range(2)]
    for process in ranks:
        process.start()
    try:
        ranks[0].join(timeout=120)
        assert not ranks[0].is_alive(), "rank 0 still blocked in a collective"
        waited, outcome = out.read_text().split("\n", 1)
        assert outcome != "no error"
        assert float(waited) < 3.0 + 10, (waited, outcome)
    finally:
        for process in ranks:
            if process.is_alive():
                process.kill()
                process.join()
