"""Efficiency of a dual encoder as MLflow metrics (papers.md §8 G): parameters, MACs, CPU latency, throughput,
peak inference memory — measured on the reparameterised (inference-form) model, on CPU, with a fixed thread
count so that numbers from different trials are comparable.

`efficiency_metrics(model)` is cheap enough for the end of every tiny-model trial (≈1–2 s with the defaults);
raise the repeat counts for a dedicated measurement. Latencies are medians over repeats after warm-up runs.
MACs are torch.utils.flop_counter's FLOPs / 2 at batch 1 (matmuls and convolutions; elementwise ops are not
counted). Peak memory is the high-water mark of tensor storage allocated during one forward pass at the
throughput batch (activations only; the weights are `weights_mb`).
"""

from __future__ import annotations

import contextlib
import copy
import statistics
import time
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from ablate.core.models.clip import CLIP, count_parameters
from ablate.core.models.reparam import reparameterize

PREFIX = "efficiency/"


@dataclass(frozen=True)
class EfficiencySettings:
    """Repeat counts and threads. `threads` is fixed (not the trainer's) so trials compare on equal terms."""

    latency_repeats: int = 20
    throughput_batch: int = 64
    throughput_repeats: int = 3
    warmup: int = 2
    threads: int = 1
    seed: int = 0


def token_embedding_parameters(text: nn.Module) -> int:
    """Parameters of the text tower's token embedding table(s) (TinyCLIP leaves these out of its counts)."""
    return sum(module.weight.numel() for module in text.modules() if isinstance(module, nn.Embedding))


def parameter_breakdown(model: CLIP) -> dict[str, int]:
    """Image, text and total parameters, each text-bearing count also without the token embedding."""
    image, text, total = count_parameters(model.visual), count_parameters(model.text), count_parameters(model)
    embedding = token_embedding_parameters(model.text)
    return {
        "image": image,
        "text": text,
        "total": total,
        "token_embedding": embedding,
        "text_no_token_embedding": text - embedding,
        "total_no_token_embedding": total - embedding,
    }


def example_inputs(model: CLIP, batch: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random images and token ids of the model's input shapes (every sequence ends in a distinct EOT)."""
    generator = torch.Generator().manual_seed(seed)
    size, context = model.inputs.image_size, model.inputs.context_length
    images = torch.rand(batch, 3, size, size, generator=generator)
    tokens = torch.randint(1, 49406, (batch, context), generator=generator)
    tokens[:, -1] = 49407  # the EOT id the towers pool at (argmax)
    return images, tokens


def median_seconds(run: Callable[[], object], repeats: int, warmup: int) -> float:
    for _ in range(warmup):
        run()
    times = []
    for _ in range(max(repeats, 1)):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _native_mha_flops(query_shape, key_shape, value_shape, embed_dim, *args, out_shape=None, **kwargs) -> int:
    """torch's fused nn.MultiheadAttention (eval fast path, e.g. open_clip's text): in-projection of q, k, v,
    QKᵀ and AV over all heads, output projection; 2 FLOPs per multiply-add."""
    batch, queries, _ = query_shape
    keys = key_shape[1]
    projections = batch * queries * embed_dim * embed_dim + 2 * batch * keys * embed_dim * embed_dim
    attention = 2 * batch * queries * keys * embed_dim
    output = batch * queries * embed_dim * embed_dim
    return 2 * (projections + attention + output)


def _sdpa_cpu_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


# CPU kernels torch's counter has no formula for; without these, attention matmuls would count as 0 MACs
_EXTRA_FLOP_FORMULAS = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_cpu_flops,
    torch.ops.aten._native_multi_head_attention: _native_mha_flops,
}


def macs(run: Callable[[], object]) -> int:
    """Multiply-accumulates of one call (convolutions, matmuls, attention)."""
    with FlopCounterMode(display=False, custom_mapping=_EXTRA_FLOP_FORMULAS) as counter:
        run()
    return counter.get_total_flops() // 2


class _PeakStorage(TorchDispatchMode):
    """High-water mark of tensor storage bytes created while active (views and in-place ops share storage;
    a storage leaves the count when its last reference dies)."""

    def __init__(self) -> None:
        super().__init__()
        self.live: dict[int, int] = {}
        self.current = self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in tree_leaves(out):
            if isinstance(tensor, torch.Tensor):
                storage = tensor.untyped_storage()
                key, size = storage.data_ptr(), storage.nbytes()
                if size and key not in self.live:
                    self.live[key] = size
                    self.current += size
                    self.peak = max(self.peak, self.current)
                    weakref.finalize(storage, self._release, key)
        return out

    def _release(self, key: int) -> None:
        self.current -= self.live.pop(key, 0)


def peak_memory_bytes(run: Callable[[], object]) -> int:
    with _PeakStorage() as tracker:
        run()
    return tracker.peak


@contextlib.contextmanager
def fixed_threads(threads: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def efficiency_metric_names(settings: EfficiencySettings | None = None) -> list[str]:
    """Every name `efficiency_metrics` returns, for validating study objectives before any run exists."""
    batch = (settings or EfficiencySettings()).throughput_batch
    counts = [f"params_{name}" for name in ("image", "text", "total", "token_embedding")]
    counts += ["params_text_no_token_embedding", "params_total_no_token_embedding", "params_total_reparameterized"]
    timings = ["latency_image_ms", "latency_text_ms", f"throughput_pairs_per_s_b{batch}"]
    timings.append(f"peak_activation_mb_b{batch}")
    names = [*counts, "weights_mb", "macs_image", "macs_text", "macs_total", *timings, "threads"]
    return [f"{PREFIX}{name}" for name in names]


def efficiency_metrics(model: CLIP, settings: EfficiencySettings | None = None) -> dict[str, float]:
    """Flat `efficiency/...` metrics of `model` (left untouched: a reparameterised CPU copy is measured)."""
    settings = settings or EfficiencySettings()
    counts = parameter_breakdown(model)
    inference = reparameterize(copy.deepcopy(model).cpu().float())
    image_1, tokens_1 = example_inputs(inference, 1, settings.seed)
    images_b, tokens_b = example_inputs(inference, settings.throughput_batch, settings.seed)
    metrics: dict[str, float] = {f"params_{name}": float(value) for name, value in counts.items()}
    metrics["params_total_reparameterized"] = float(count_parameters(inference))
    metrics["weights_mb"] = sum(p.numel() * p.element_size() for p in inference.parameters()) / 2**20
    with fixed_threads(settings.threads), torch.inference_mode():
        image_macs = macs(lambda: inference.visual(image_1))
        text_macs = macs(lambda: inference.text(tokens_1))
        metrics |= {"macs_image": image_macs, "macs_text": text_macs, "macs_total": image_macs + text_macs}
        for tower, run in (("image", lambda: inference.visual(image_1)), ("text", lambda: inference.text(tokens_1))):
            seconds = median_seconds(run, settings.latency_repeats, settings.warmup)
            metrics[f"latency_{tower}_ms"] = 1000 * seconds
        batch_seconds = median_seconds(
            lambda: inference(images_b, tokens_b), settings.throughput_repeats, min(settings.warmup, 1)
        )
        metrics[f"throughput_pairs_per_s_b{settings.throughput_batch}"] = settings.throughput_batch / batch_seconds
        peak = peak_memory_bytes(lambda: inference(images_b, tokens_b))
        metrics[f"peak_activation_mb_b{settings.throughput_batch}"] = peak / 2**20
    metrics["threads"] = float(settings.threads)
    return {f"{PREFIX}{name}": float(value) for name, value in metrics.items()}
