"""The trainer's fast paths: precision, memory format, compilation, optimizer kernels, accumulation, data waits.

Each is a `train.*` switch whose default is the fast choice where it is safe (see `TrainLoopConfig`); `auto`
resolves here, once, from the device. The trainer keeps its own loop and calls in at four places: the model
it trains (`prepare`), the optimizer kernels (`optim.build_optimizer(implementation=...)`), one optimizer step
(`TrainStep.__call__`: autocast, forward, backward, accumulation, clipping, step) and the loader
(`DataWaitClock`). The benchmark (benchmarks/train_step.py) drives the very same `TrainStep`.

Nothing here reads a tensor back to the host: the step returns detached device tensors, gradient clipping does
not check finiteness (`error_if_nonfinite` would sync), and an fp16 GradScaler only skips its host sync with
the fused AdamW, which is what `auto` picks.

Gradient accumulation (`train.accumulation_steps` = M micro-batches of batch_size / M) keeps `batch_size` the
contrastive batch, and its `accumulation` mode says what a micro-batch's loss sees:
- `cached` (default; the gradient cache of Gao et al. 2021): a no-grad forward of every micro-batch gives the
  features of the whole batch; the loss runs once on them (full-batch negatives, teachers run once, the
  temperature and any sparsity term receive their gradient exactly once); its gradient with respect to the
  features is then pushed through a second, grad-enabled forward of each micro-batch. The summed gradient is the
  full batch's exactly, up to what differs between two forwards of the same chunk: BatchNorm statistics (and
  their running averages, updated twice), dropout, and hard-concrete mask samples. open_clip's `accum_freq`
  also caches features for negatives, but recomputes the loss once per micro-batch, so the temperature's
  gradient is counted M times; this is not reproduced.
- `independent`: each micro-batch's own loss (negatives only from the micro-batch), averaged over the M;
  cheaper (one forward), a different objective at small micro-batches.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Literal

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from ablate.core.config.base import ConfigError
from ablate.core.config.sections import TrainLoopConfig
from ablate.core.training.distributed import ProcessGroup

log = logging.getLogger("ablate.train")

Precision = Literal["fp32", "bf16", "fp16"]
OptimizerImplementation = Literal["fused", "foreach", "for-loop"]
LossFunction = Callable[[nn.Module, dict[str, torch.Tensor]], dict[str, torch.Tensor]]
"""(model, batch) -> named loss terms with "loss" the one optimised (what `objective.compute_loss` returns)."""

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_precision(requested: str, device: torch.device) -> Precision:
    """`auto`: bf16 on GPUs that have it, fp16 (with loss scaling) on older GPUs, fp32 on CPUs.

    CPUs stay fp32 by default: bf16 autocast is ~2x faster on CPUs with native bf16 (AVX512-BF16, AMX; see the
    README's Speed section) but slower where it is emulated, and fp32 keeps CPU runs comparable across machines.
    """
    cuda = device.type == "cuda"
    if requested == "auto":
        return ("bf16" if torch.cuda.is_bf16_supported() else "fp16") if cuda else "fp32"
    if requested == "bf16" and cuda and not torch.cuda.is_bf16_supported():
        raise ConfigError(f"train.precision: 'bf16' but {torch.cuda.get_device_name(device)} has no bf16; use fp16")
    return requested  # type: ignore[return-value]


def has_conv_tower(model: nn.Module) -> bool:
    """Whether the image tower convolves beyond a ViT's single patch embedding (MCi/FastViT, ConvNeXt, ...)."""
    visual = getattr(model, "visual", model)
    return sum(isinstance(module, nn.Conv2d) for module in visual.modules()) > 1


def resolve_optimizer_implementation(requested: str, parameters: Iterable[torch.Tensor]) -> OptimizerImplementation:
    """`auto`: the fused AdamW kernel where every parameter's device supports it (CUDA, and CPU in torch >= 2.4),
    else the multi-tensor (`foreach`) one. Fused is ~5x faster than the per-tensor loop on CPU (README, Speed)."""
    if requested != "auto":
        return requested  # type: ignore[return-value]
    from torch.optim.optimizer import _get_fused_kernels_supported_devices

    devices = {parameter.device.type for parameter in parameters}
    fused_ok = devices <= set(_get_fused_kernels_supported_devices())
    return "fused" if fused_ok else "foreach"


def adamw_kernel_options(implementation: OptimizerImplementation) -> dict[str, bool]:
    """The `torch.optim.AdamW` keywords that select one implementation."""
    return {
        "fused": {"fused": True},
        "foreach": {"foreach": True, "fused": False},
        "for-loop": {"foreach": False, "fused": False},
    }[implementation]


class DataWaitClock:
    """Time the training loop spends blocked on the loader's iterator (what `train/data_wait_fraction` reports).

    Only the `next()` on the loader counts: with enough workers and prefetched batches it returns at once, so a
    large share means the step outran the input pipeline.
    """

    def __init__(self) -> None:
        self.waited = 0.0

    def wrap(self, batches: Iterable) -> Iterator:
        iterator = iter(batches)
        while True:
            start = time.perf_counter()
            try:
                item = next(iterator)
            except StopIteration:
                return
            self.waited += time.perf_counter() - start
            yield item

    def take(self) -> float:
        """Seconds waited since the last `take` (a log window), and start a new window."""
        waited, self.waited = self.waited, 0.0
        return waited


class TrainStep:
    """One optimizer step with the configured fast paths; the trainer and the benchmark both call it.

    `model` and `optimizer` are arguments of each call, not state: a compression stage replaces both mid-run
    (prune-to-dense), and a new model is compiled on its first step.
    """

    def __init__(
        self,
        settings: TrainLoopConfig,
        device: torch.device,
        grad_clip_norm: float | None,
        group: ProcessGroup = ProcessGroup(),
    ) -> None:
        self.device, self.grad_clip_norm, self.group = device, grad_clip_norm, group
        self.precision = resolve_precision(settings.precision, device)
        self.accumulation_steps, self.accumulation = settings.accumulation_steps, settings.accumulation
        self.compile = settings.compile if settings.compile != "auto" else device.type == "cuda"
        self.channels_last_setting = settings.channels_last
        self._warned_channels_last = False
        self.math_attention = settings.cpu_attention == "math" or (
            settings.cpu_attention == "auto" and self.precision != "fp32"
        )
        self.math_attention &= device.type == "cpu"
        self.scaler = torch.amp.GradScaler(device.type) if self.precision == "fp16" else None
        self._compiled: tuple[nn.Module, nn.Module] | None = None  # (model, its compiled forward)
        self._prepared: tuple[nn.Module, torch.optim.Optimizer] | None = None  # the pair `prepare` last saw
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed input shapes: pick the fastest conv algorithms once

    @property
    def autocast_enabled(self) -> bool:
        return self.precision != "fp32"

    def channels_last(self, model: nn.Module) -> bool:
        """`auto`: on GPUs for convolutional image towers, where NHWC is what tensor-core convolutions read.

        Never on CPUs: torch 2.14's CPU backward through the MCi towers in NHWC crashes the process (a
        segmentation fault, reproduced with a bare `mci-tiny` forward/backward), so `true` there is ignored
        with one warning rather than taking a run down."""
        setting = self.channels_last_setting
        if setting is True and self.device.type != "cuda":
            if not self._warned_channels_last:
                log.warning("train.channels_last: ignored on %s (NHWC backward crashes on CPU)", self.device)
                self._warned_channels_last = True
            return False
        return setting if setting != "auto" else self.device.type == "cuda" and has_conv_tower(model)

    def prepare(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        """Put a (new) model in the trained memory format, in place, so checkpoints, evaluation and pruning keep
        seeing the same module and parameters; called by the first step of every model/optimizer pair.

        Optimizer state restored from a checkpoint is contiguous; it is copied into each parameter's layout,
        because fused kernels walk parameter and state memory in the same order."""
        if self._prepared is not None and self._prepared[0] is model and self._prepared[1] is optimizer:
            return
        if self.channels_last(model):
            getattr(model, "visual", model).to(memory_format=torch.channels_last)
        for parameter, state in optimizer.state.items():
            for name, value in state.items():
                if torch.is_tensor(value) and value.shape == parameter.shape and value.stride() != parameter.stride():
                    state[name] = torch.empty_like(parameter, dtype=value.dtype).copy_(value)
        self._prepared = (model, optimizer)

    @contextlib.contextmanager
    def autocast(self) -> Iterator[None]:
        """Mixed precision for forward and loss; on CPU under bf16/fp16 the math attention kernel, because the
        CPU flash-attention backward is ~5x slower than math in bf16 (README, Speed)."""
        with contextlib.ExitStack() as stack:
            if self.autocast_enabled:
                stack.enter_context(torch.autocast(self.device.type, dtype=AUTOCAST_DTYPES[self.precision]))
            if self.math_attention:
                stack.enter_context(sdpa_kernel([SDPBackend.MATH]))
            yield

    def forward_model(self, model: nn.Module) -> nn.Module:
        """The compiled module when compilation is on (compiled again for a replaced model), else the model.

        Run it inside `compiled_guards()`: a replaced model alone does not force a new trace, because Dynamo
        caches traces per code object, shared by every wrapper of every instance of a class."""
        if not self.compile:
            return model
        if self._compiled is None or self._compiled[0] is not model:
            self._compiled = (model, torch.compile(model))
        return self._compiled[1]

    def compiled_guards(self) -> contextlib.AbstractContextManager:
        """Trace compiled forwards with guards on every module's hooks, so that any later change of the model
        (hooks attached or removed, submodules or classes swapped, parameters shrunk) invalidates the trace.

        Dynamo guards structure and shapes by default but not hooks (`skip_nnmodule_hook_guards`): compression
        attaches stage 2+ masks as hooks on a pruned model already compiled in its dense phase, and the cached
        trace went on computing the unmasked function (the task loss gave log α no gradient; issue 15)."""
        if not self.compile:
            return contextlib.nullcontext()
        return torch._dynamo.config.patch(skip_nnmodule_hook_guards=False)

    def __call__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        batch: dict[str, torch.Tensor],
        loss_fn: LossFunction,
    ) -> dict[str, torch.Tensor]:
        """Zero the gradients, accumulate them over the micro-batches, average them over the ranks of a
        multi-process trial, clip, step. Returns the detached terms (this rank's shares)."""
        self.prepare(model, optimizer)
        optimizer.zero_grad(set_to_none=True)
        if self.channels_last(model) and batch["image"].ndim == 4:
            batch = batch | {"image": batch["image"].contiguous(memory_format=torch.channels_last)}
        try:
            with self.compiled_guards():
                terms = self._accumulate(self.forward_model(model), model, batch, loss_fn)
        except Exception as err:  # any compiler failure: fall back to eager, once, loudly
            if not self.compile:
                raise
            log.warning("train.compile: torch.compile failed (%s: %s); training eagerly", type(err).__name__, err)
            self.compile, self._compiled = False, None
            optimizer.zero_grad(set_to_none=True)
            terms = self._accumulate(model, model, batch, loss_fn)
        self.group.average_gradients(p for group in optimizer.param_groups for p in group["params"])
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)
        if self.grad_clip_norm:  # the model's parameters only (never compression masks or their multipliers)
            torch.nn.utils.clip_grad_norm_(model.parameters(), self.grad_clip_norm)
        if self.scaler is not None:
            self.scaler.step(optimizer)  # no host sync with the fused AdamW (`_step_supports_amp_scaling`)
            self.scaler.update()
        else:
            optimizer.step()
        return terms

    def _backward(self, loss: torch.Tensor, retain_graph: bool = False) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward(retain_graph=retain_graph)

    def _accumulate(
        self, forward: nn.Module, model: nn.Module, batch: dict[str, torch.Tensor], loss_fn: LossFunction
    ) -> dict[str, torch.Tensor]:
        chunks = self.accumulation_steps
        if chunks == 1:
            with self.autocast():
                terms = loss_fn(forward, batch)
            self._backward(terms["loss"])
            return {name: value.detach() for name, value in terms.items()}
        if self.accumulation == "independent":
            return self._independent(forward, batch, loss_fn, chunks)
        return self._gradient_cache(forward, model, batch, loss_fn, chunks)

    def _independent(
        self, forward: nn.Module, batch: dict[str, torch.Tensor], loss_fn: LossFunction, chunks: int
    ) -> dict[str, torch.Tensor]:
        """Mean of the micro-batches' own losses. Graphs shared by every micro-batch's loss (a sparsity term built
        before the step) are kept until the last backward, so they receive exactly the mean's gradient."""
        parts = {name: tensor.chunk(chunks) for name, tensor in batch.items()}
        totals: dict[str, torch.Tensor] = {}
        for index in range(chunks):
            with self.autocast():
                terms = loss_fn(forward, {name: part[index] for name, part in parts.items()})
            self._backward(terms["loss"] / chunks, retain_graph=index < chunks - 1)
            for name, value in terms.items():
                totals[name] = totals.get(name, 0) + value.detach() / chunks
            del terms
        return totals

    def _gradient_cache(
        self,
        forward: nn.Module,
        model: nn.Module,
        batch: dict[str, torch.Tensor],
        loss_fn: LossFunction,
        chunks: int,
    ) -> dict[str, torch.Tensor]:
        """The full batch's loss and gradient with one micro-batch's activations in memory at a time."""
        cache = _FeatureCache(forward, model, chunks)
        with self.autocast():
            terms = loss_fn(cache, batch)
        self._backward(terms["loss"])  # gradients of the cached features, and of the temperature (exactly once)
        image_grads, text_grads = cache.feature_grads()
        for images, tokens, image_grad, text_grad in zip(
            cache.images.chunk(chunks), cache.tokens.chunk(chunks), image_grads, text_grads, strict=True
        ):
            with self.autocast():
                image_features, text_features, _ = forward(images, tokens)
            torch.autograd.backward([image_features, text_features], [image_grad, text_grad])
        return {name: value.detach() for name, value in terms.items()}


class _FeatureCache:
    """Stands in for the model inside the loss: a no-grad, chunked forward whose features are leaves, so the
    loss's backward stops at them and leaves their gradient for the per-chunk replay."""

    def __init__(self, forward: nn.Module, model: nn.Module, chunks: int) -> None:
        self.forward, self.model, self.chunks = forward, model, chunks
        self.inputs = model.inputs  # what `objective.compute_loss` reads to prepare images

    def __call__(self, images: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if images.shape[0] % self.chunks or tokens.shape[0] % self.chunks:
            raise ConfigError(
                f"train.accumulation_steps={self.chunks} must divide the batch ({images.shape[0]} images, "
                f"{tokens.shape[0]} captions)"
            )
        self.images, self.tokens = images, tokens
        with torch.no_grad():
            chunks = zip(images.chunk(self.chunks), tokens.chunk(self.chunks), strict=True)
            outputs = [self.forward(image_chunk, token_chunk) for image_chunk, token_chunk in chunks]
        self.image_features = torch.cat([output[0] for output in outputs]).requires_grad_()
        self.text_features = torch.cat([output[1] for output in outputs]).requires_grad_()
        return self.image_features, self.text_features, self.model.logit_scale.exp()

    def feature_grads(self) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
        """Per-chunk gradients of the loss with respect to the cached features (zeros where it has none)."""
        image = self.image_features.grad
        text = self.text_features.grad
        image = torch.zeros_like(self.image_features) if image is None else image
        text = torch.zeros_like(self.text_features) if text is None else text
        return image.chunk(self.chunks), text.chunk(self.chunks)
