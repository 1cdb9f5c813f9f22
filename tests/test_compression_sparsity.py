"""One definition of sparsity: p, q and the realised sparsity all count the prunable parameters of the masked kinds
(issue 15, item 5), checked against parameter counts read straight off the modules."""

from __future__ import annotations

import pandas as pd
import torch

from ablate.analysis.result_plots import realised_sparsity
from ablate.core.compression import CompressionConfig, Compressor
from ablate.core.models.factory import create_model
from ablate.core.training.trainer import result_metric_names


def attention_parameters(model) -> int:
    """Every parameter of the attention projections of both towers, read off the modules (timm ViT qkv/proj,
    open_clip text nn.MultiheadAttention in_proj/out_proj)."""
    image = sum(p.numel() for block in model.visual.blocks for p in block.attn.parameters())
    text = sum(p.numel() for block in model.text.transformer.resblocks for p in block.attn.parameters())
    return image + text


def test_heads_only_masking_reports_the_sparsity_of_the_attention_parameters() -> None:
    """Half of every layer's heads pruned: p and the realised sparsity both say about half. Before the fix the
    realised sparsity divided by attention + FFN parameters and said 0.167 (hand value below: 0.4990)."""
    torch.manual_seed(0)
    model = create_model("tiny")
    config = CompressionConfig(
        stages=[{"target_sparsity": 0.5, "steps": 2, "mask_steps": 1}], image_masks=["heads"], text_masks=["heads"]
    )
    compressor = Compressor(model, config)
    with torch.no_grad():
        for gate in compressor.gates:  # the first half of each layer's heads on, the second half off
            half = gate.size // 2
            gate.log_alpha.copy_(torch.tensor([10.0] * half + [-10.0] * (gate.size - half)))
    p = compressor.expected_sparsity().item()
    before = attention_parameters(model)
    dense, result = compressor.prune()
    after = attention_parameters(dense)

    # d = 128, 4 heads of 32 per layer: qkv/in_proj 3·128·128 + 384, out projection 128·128 + 128 = 66048; half the
    # heads take half of qkv (24768) and half of the out projection's inputs (8192); its bias stays.
    assert before == 66048 * len(model.visual.blocks) + 66048 * len(model.text.transformer.resblocks)
    assert 1 - after / before == 32960 / 66048
    assert result.counts["realised_sparsity"] == 32960 / 66048
    assert result.counts["prunable_original"] == before and result.counts["prunable"] == after
    assert abs(p - result.counts["realised_sparsity"]) < 0.005  # p charges the out-projection bias to the heads
    assert result.counts["expected_sparsity"] == p
    ffn = sum(p.numel() for p in model.visual.blocks[0].mlp.parameters())
    assert ffn == sum(p.numel() for p in dense.visual.blocks[0].mlp.parameters())  # FFNs are not masked: untouched


def test_the_report_reads_the_realised_sparsity_the_trainer_logs() -> None:
    """The analysis looked for `compression/params_realised` and `compression/p_expected`, names no run logs, so
    reports never showed an arm's realised sparsity beside its accuracy."""
    assert "compression/realised_sparsity" in result_metric_names([])
    runs = pd.DataFrame(
        {
            "metric.model/params_total": [2.0e6, 1.5e6, 3.0e6],
            "metric.compression/realised_sparsity": [0.5, float("nan"), 0.25],
            "metric.compression/expected_sparsity": [0.52, 0.1, 0.26],
        }
    )
    sparsity = realised_sparsity(runs)
    assert sparsity.name == "realised sparsity"
    assert sparsity.tolist()[::2] == [0.5, 0.25] and pd.isna(sparsity.iloc[1])
    unpruned = realised_sparsity(runs.drop(columns="metric.compression/realised_sparsity"))
    assert unpruned.name == "expected sparsity" and unpruned.tolist() == [0.52, 0.1, 0.26]
    assert realised_sparsity(runs[["metric.model/params_total"]]) is None
