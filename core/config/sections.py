"""TrainConfig: everything one training run needs, in one validated object.

`core` is driven only through this config (the orchestrator builds one per trial), so every knob a study can
vary is a field here, reachable by a dotted path such as `optim.lr` or `loss.lambda`. Unknown keys and wrong
types are errors: a typo in a study must never silently train the default.
"""

from __future__ import annotations

import functools
import logging
import math
from typing import Annotated, Literal

from pydantic import AfterValidator, AliasChoices, Field, model_validator

from ablate.core.compression.config import CompressionConfig
from ablate.core.config.base import StrictModel
from ablate.core.config.uris import check_tracking_uri
from ablate.core.evaluation.config import EvalTaskConfig
from ablate.core.merging.schedule import TokenMergingConfig


class TextTowerConfig(StrictModel):
    """Changes to the named model's text tower (None keeps the model's own). Any change rebuilds the tower as
    an MCt/Base TextEncoder (fresh init); see core/models/text.py for the block layout."""

    layers: int | None = Field(None, ge=1, description="blocks in total (attention + Text-RepMixer)")
    attention_layers: int | None = Field(None, ge=0, description="how many blocks attend; the rest are RepMixers")
    kernel_size: int | None = Field(None, ge=1, description="1×k depthwise token-mixing kernel (MCt: 11)")
    causal: bool | None = Field(None, description="causal attention mask (Base text of MobileCLIP-B)")


class ModelConfig(StrictModel):
    """Which dual encoder to build (a name from `ablate models` or any open_clip architecture), the weights it
    starts from, its CLIP temperature and architecture axes.

    The defaults build every named model exactly as registered (softmax attention, its own text tower).
    """

    name: str = "tiny"
    pretrained: str | None = Field(
        None,
        validation_alias=AliasChoices("pretrained", "init"),
        description="start from these weights (full fine-tuning): a file or run folder, hf-hub:org/repo, or a "
        "pretrained tag of `name` from the local HF cache; what does not fit is reported (core/models/weights.py)",
    )
    init_logit_scale: float = Field(math.log(1 / 0.07), description="ln(1/τ) at init, open_clip's default")
    max_logit_scale: float = Field(100.0, gt=0, description="exp(logit_scale) is clamped to this after each step")
    attention: Literal["softmax", "sigmoid"] = Field(
        "softmax", description="weights of every attention block: softmax, or σ(QKᵀ/√d + b) (papers.md §4)"
    )
    sigmoid_bias: Literal["neg_log_n", "learnable", "zero"] = Field(
        "neg_log_n", description="sigmoid b: −ln(number of keys); −ln n + a learnt per-layer scalar; 0"
    )
    qk_norm: bool = Field(False, description="LayerNorm on each head's queries and keys")
    image_size: int | None = Field(
        None,
        ge=16,
        description="train and evaluate at this resolution (None: the model's own, e.g. 256 for MobileCLIP2-S0); "
        "convolutional towers take any size, ViT towers resample their position embeddings",
    )
    text: TextTowerConfig = Field(default_factory=TextTowerConfig)
    token_merging: TokenMergingConfig | None = Field(
        None, description="ToMe schedules per tower (r per layer); applied at inference, in training if asked"
    )


class DataConfig(StrictModel):
    """Where the image–text shards are and how they are read.

    `root` is a folder with a `manifest.json` (the layout `ablate data shapes` writes); when it is None the
    bundled shapes benchmark is generated once into the cache and reused.
    """

    root: str | None = None
    captions: Literal["alt", "syn", "both", "mix"] = Field(
        "alt",
        description="alt: the ground-truth web alt-text (noisy); syn: one synthetic caption; both: MobileCLIP's "
        "B_real + B_syn from the same images (Eq. 3); mix: one batch, synthetic with probability mix_synthetic_ratio",
    )
    mix_synthetic_ratio: float = Field(0.5, ge=0, le=1)
    num_workers: int = Field(
        2, ge=0, description="loader processes; 2 keep the trainer under 5% data wait on the bundled benchmark (README)"
    )
    shapes_train: int = Field(20000, ge=1, description="bundled benchmark size when root is None")
    shapes_val: int = Field(1000, ge=1)
    shapes_seed: int = 0
    reinforcement: str | None = Field(
        None,
        description="folder with reinforcement.json and DataCompDR-layout shards (`ablate reinforce`); "
        "`bundled`: the bundled teachers' reinforcement of the bundled benchmark",
    )
    sample: Literal["random", "sequential"] = Field(
        "random", description="which stored augmentation and synthetic caption a visit reads: random, or by epoch"
    )
    augment: bool = Field(False, description="plain runs: draw RandomResizedCrop + RandAugment views (DataCompDR's)")
    keep_fraction: float = Field(
        1.0, gt=0, le=1, description="train on the top fraction of samples by caption quality (needs reinforcement)"
    )
    quality_score: Literal["clip_score", "caption_agreement", "combined", "combined_rank"] = Field(
        "combined", description="the ranking keep_fraction uses (core/quality; scored from the teacher embeddings)"
    )


class LossConfig(StrictModel):
    """The training objective, L = (1-λ)·L_CLIP + λ·((1-α)·L_distill + α·L_sparsity) (see `losses.combined_loss`).

    Every contrastive and distillation term is summed over the caption batches `data.captions` selects (`both`
    is MobileCLIP's Eq. 3: B_real + B_syn from the same images, one text forward over both). Teacher widths and
    scales default to what the reinforcement recorded (reinforcement.json) or the online teachers' own; set them
    for third-party shards.
    """

    lambda_: float = Field(0.0, alias="lambda", ge=0, le=1, description="λ: weight of distillation (+ sparsity)")
    alpha: float = Field(0.0, ge=0, le=1, description="α: share of the sparsity loss inside the λ part")
    distill: Literal["mobileclip", "tinyclip"] = Field(
        "mobileclip",
        description="mobileclip: KD at the student's temperature against each teacher's (§1.2); "
        "tinyclip: affinity mimicking, teacher and student at τ = affinity_temperature (§2.1)",
    )
    average_after_softmax: bool = Field(
        True, description="True: a K-teacher ensemble (mean of softmaxes); False: the concatenation as one teacher"
    )
    teacher_dims: list[int] | None = Field(None, description="width of each teacher's slice of the stored vectors")
    teacher_logit_scales: list[float] | None = Field(None, description="one multiplier per teacher, e.g. [70, 60]")
    affinity_temperature: float = Field(1 / 50, gt=0, description="τ of TinyCLIP's affinity mimicking")

    @model_validator(mode="after")
    def _teacher_lists_agree(self) -> LossConfig:
        dims, scales = self.teacher_dims, self.teacher_logit_scales
        if dims is not None and (not dims or min(dims) <= 0):
            raise ValueError(f"teacher_dims must be positive widths, got {dims}")
        if scales is not None and (not scales or min(scales) <= 0):
            raise ValueError(f"teacher_logit_scales must be positive multipliers, got {scales}")
        if dims is not None and scales is not None and len(dims) != len(scales) and self.average_after_softmax:
            raise ValueError(f"teacher_dims {dims} and teacher_logit_scales {scales} must name the same teachers")
        return self


class TeacherSpec(StrictModel):
    """One teacher: a model the factory builds (ours, or any open_clip architecture such as ViT-L-14) and its
    weights, as open_clip's `pretrained` names them (core/models/weights.py): a file or run folder, an
    `hf-hub:org/repo` id, or a pretrained tag of the model (`openai`, `dfndr2b`) read from the local HF cache.
    `pretrained:` is accepted for `checkpoint:`."""

    model: str
    checkpoint: str = Field(validation_alias=AliasChoices("checkpoint", "pretrained"))
    logit_scale: float = Field(100.0, gt=0, description="its distillation multiplier 1/τ_k (MobileCLIP2: 70, 60)")


class TeachersConfig(StrictModel):
    """Where the teachers' embeddings come from during training.

    `stored` reads them from the reinforced shards (`data.reinforcement`), which costs nothing per step; `online`
    runs `members` on every batch, the comparison point for cost (MobileCLIP Tab 4d). `members: bundled` names
    the bundled benchmark's teachers (`ablate teachers train`), trained once into the cache.
    """

    mode: Literal["stored", "online"] = "stored"
    members: list[TeacherSpec] | Literal["bundled"] = "bundled"
    recipe: Literal["bundled", "demo"] = Field(
        "bundled",
        description="how the `bundled` teachers (members, data.reinforcement, compression.teacher_checkpoint) are "
        "trained: `bundled`, 2 `small` models for ~25 min each; `demo`, 1 `tiny` model in ~2 min (`make demo`)",
    )


class OptimConfig(StrictModel):
    """AdamW with linear warmup then cosine decay to `min_lr`, as open_clip's `cosine_lr`."""

    lr: float = Field(5e-4, gt=0)
    min_lr: float = Field(0.0, ge=0)
    weight_decay: float = Field(0.1, ge=0)
    beta1: float = Field(0.9, ge=0, lt=1)
    beta2: float = Field(0.98, ge=0, lt=1)
    eps: float = Field(1e-6, gt=0)
    warmup_steps: int = Field(50, ge=0)
    warmup_fraction: float | None = Field(
        None, ge=0, lt=1, description="warmup as a fraction of train.steps; overrides warmup_steps (presets scale)"
    )
    min_lr_ratio: float | None = Field(None, ge=0, le=1, description="min_lr as a fraction of lr; overrides min_lr")
    schedule_per_stage: Literal["restart", "continuous"] = Field(
        "restart",
        description="with compression stages: restart = warmup + cosine within each stage (TinyCLIP runs every stage "
        "as its own run, papers.md §2.3); continuous = one warmup + cosine over the whole run",
    )

    def warmup_for(self, total_steps: int) -> int:
        return round(self.warmup_fraction * total_steps) if self.warmup_fraction is not None else self.warmup_steps

    @property
    def floor_lr(self) -> float:
        return self.lr * self.min_lr_ratio if self.min_lr_ratio is not None else self.min_lr

    grad_clip_norm: float | None = Field(1.0, gt=0)
    ema: float | None = Field(
        None,
        gt=0,
        lt=1,
        description="decay of an exponential moving average of the weights, evaluated and saved beside them "
        "(MobileCLIP Tab 12: 0.9995); None: off",
    )
    ema_horizon_fraction: float | None = Field(
        None,
        gt=0,
        le=1,
        description="the EMA's horizon 1/(1 - decay) as a fraction of train.steps; overrides ema (presets scale: "
        "0.9995 over MobileCLIP's 200k iterations is 2000 steps, 1%)",
    )

    def ema_decay_for(self, total_steps: int) -> float | None:
        """The per-step EMA decay of a run of `total_steps` (None: no EMA)."""
        if self.ema_horizon_fraction is not None:
            return 1 - 1 / max(1.0, self.ema_horizon_fraction * total_steps)
        return self.ema


class TrainLoopConfig(StrictModel):
    """Length of the run, batch, precision, the step's fast paths and how often to log, evaluate and checkpoint.

    `auto` fast paths resolve from the device in `core/training/fast_paths.py` (README, Speed): bf16 + compile +
    channels-last (conv towers) on GPUs; fp32, eager, contiguous on CPUs; the fused AdamW on both.
    """

    steps: int = Field(300, ge=1)
    batch_size: int = Field(64, ge=2, description="the contrastive batch of one optimizer step")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="autocast dtype; fp16 adds a GradScaler; auto: bf16 (fp16 without it) on GPU, fp32 on CPU"
    )
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int | None = Field(None, ge=1, description="torch threads; default from SLURM_CPUS_PER_TASK or cores")
    collective_timeout_s: float = Field(
        600.0,
        gt=0,
        description="multi-process trials: a rank waiting this long for its peers (one died or hangs) fails the "
        "trial, which is retried from its checkpoint; must exceed rank 0's evaluation and checkpoint time",
    )
    compile: bool | Literal["auto"] = Field(
        "auto", description="torch.compile the model (eager fallback with one warning); auto: on GPU only"
    )
    channels_last: bool | Literal["auto"] = Field(
        "auto", description="NHWC image tower and batches; auto: on GPU for convolutional image towers"
    )
    optimizer_kernel: Literal["auto", "fused", "foreach", "for-loop"] = Field(
        "auto", description="AdamW implementation; auto: fused where the device supports it, else foreach"
    )
    cpu_attention: Literal["auto", "math", "default"] = Field(
        "auto", description="CPU attention kernel; auto: math under bf16/fp16 (CPU flash backward is slow there)"
    )
    accumulation_steps: int = Field(1, ge=1, description="micro-batches per step (batch_size / this each)")
    accumulation: Literal["cached", "independent"] = Field(
        "cached",
        description="cached: full-batch loss and gradient via a feature cache (two forwards); independent: mean of "
        "each micro-batch's own loss (negatives from the micro-batch only)",
    )
    log_every: int = Field(10, ge=1)
    eval_every: int = Field(100, ge=1)
    checkpoint_every: int = Field(100, ge=1)
    keep_checkpoints: int = Field(2, ge=1)
    progress: bool = True

    @model_validator(mode="after")
    def _micro_batches_divide_the_batch(self) -> TrainLoopConfig:
        if self.batch_size % self.accumulation_steps:
            raise ValueError(
                f"train.accumulation_steps ({self.accumulation_steps}) must divide train.batch_size ({self.batch_size})"
            )
        return self


class EvalConfig(StrictModel):
    """Zero-shot classification and retrieval on the held-out split, and the suites in `tasks`."""

    batch_size: int = Field(256, ge=1)
    max_samples: int | None = Field(None, ge=1, description="evaluate on the first N val samples only")
    tasks: list[EvalTaskConfig] = Field(
        default_factory=list,
        description="benchmarks beside the training data: ImageFolder, clip_benchmark webdataset or manifest "
        "retrieval (core/evaluation/config.py; README, Your own evaluation)",
    )
    final: bool = Field(
        True, description="evaluate after the last step; false: only the periodic evaluations before it run"
    )
    efficiency: bool = Field(
        True, description="at the end: parameters, MACs, CPU latency/throughput of the reparameterised model"
    )


class TrackingConfig(StrictModel):
    """MLflow destination. The sqlite default lives in the working directory (design.md)."""

    uri: Annotated[str, AfterValidator(check_tracking_uri)] = "sqlite:///mlflow.db"
    experiment: str = "ablate"
    run_name: str | None = None
    parent_run_id: str | None = None
    tags: dict[str, str] = Field(default_factory=dict)
    enabled: bool = True


class TrainConfig(StrictModel):
    """One training run. `run_dir` holds its checkpoints; rerunning with the same `run_dir` resumes."""

    seed: int = 0
    run_dir: str = "runs/train/default"
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    teachers: TeachersConfig = Field(default_factory=TeachersConfig)
    compression: CompressionConfig | None = Field(None, description="TinyCLIP masks and stages; None: dense")
    optim: OptimConfig = Field(default_factory=OptimConfig)
    train: TrainLoopConfig = Field(default_factory=TrainLoopConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)

    @model_validator(mode="after")
    def _warmup_fits(self) -> TrainConfig:
        """A warmup as long as the run never reaches its peak LR: clamp it to 10% of the run, with a warning,
        so that a short `--set train.steps=20` works with the default 50-step warmup."""
        steps, warmup = self.train.steps, self.optim.warmup_for(self.train.steps)
        if warmup >= steps:
            field = "optim.warmup_fraction" if self.optim.warmup_fraction is not None else "optim.warmup_steps"
            clamped = steps // 10
            _warn_once(f"{field} ({warmup} steps) does not fit train.steps ({steps}): clamped to {clamped} steps")
            self.optim.warmup_fraction = None
            self.optim.warmup_steps = clamped
        return self

    @model_validator(mode="after")
    def _distillation_has_teachers(self) -> TrainConfig:
        if self.loss.lambda_ > 0 and self.teachers.mode == "stored" and self.data.reinforcement is None:
            raise ValueError(
                f"loss.lambda is {self.loss.lambda_} but there is nothing to distil from: set data.reinforcement "
                "(stored teacher embeddings) or teachers.mode: online"
            )
        return self

    @model_validator(mode="after")
    def _compression_fits_the_run(self) -> TrainConfig:
        compression = self.compression
        if compression is None:
            if self.loss.alpha > 0:
                raise ValueError(
                    f"loss.alpha is {self.loss.alpha}, but it weights the sparsity loss and the run has no compression "
                    "section (set compression.schedule or compression.stages, or alpha: 0)"
                )
            return self
        if compression.schedule is not None and not compression.stages:
            compression.stages = compression.stages_for(self.train.steps)
        if compression.total_steps != self.train.steps:
            raise ValueError(
                f"compression.stages last {compression.total_steps} steps in all but train.steps is {self.train.steps}"
            )
        restart = self.optim.schedule_per_stage == "restart"
        warmup_field = "optim.warmup_fraction" if self.optim.warmup_fraction is not None else "optim.warmup_steps"
        for index, stage in enumerate(compression.stages):
            if restart and self.optim.warmup_for(stage.steps) >= stage.steps:
                raise ValueError(
                    f"{warmup_field} ({self.optim.warmup_for(stage.steps)} steps) must be shorter than "
                    f"compression.stages[{index}].steps ({stage.steps}): optim.schedule_per_stage 'restart' warms up "
                    "again in every stage ('continuous' warms up once)"
                )
        if self.loss.lambda_ == 0 or self.loss.alpha == 0:
            raise ValueError(
                f"compression needs loss.lambda > 0 and loss.alpha > 0: the sparsity loss is weighted by λ·α "
                f"(got lambda={self.loss.lambda_}, alpha={self.loss.alpha})"
            )
        if compression.inherit != "none" and self.model.pretrained is not None:
            raise ValueError(
                f"model.pretrained ({self.model.pretrained!r}) and compression.inherit ({compression.inherit}) both "
                "set the student's first weights: use one of them"
            )
        if compression.inherit == "auto" and compression.teacher_model not in (None, self.model.name):
            raise ValueError(
                f"compression.inherit is auto, so the student is the teacher: model.name ({self.model.name!r}) must "
                f"be compression.teacher_model ({compression.teacher_model!r})"
            )
        return self

    @model_validator(mode="after")
    def _quality_needs_teachers(self) -> TrainConfig:
        if self.data.keep_fraction < 1 and self.data.reinforcement is None:
            raise ValueError(
                f"data.keep_fraction is {self.data.keep_fraction}: caption-quality scores come from the teachers' "
                "stored embeddings, so set data.reinforcement"
            )
        return self

    @property
    def uses_teachers(self) -> bool:
        """Whether batches carry teacher embeddings (stored or computed online)."""
        return self.data.reinforcement is not None or self.teachers.mode == "online"


@functools.cache
def _warn_once(message: str) -> None:
    """A config is validated again in every process that reads it (launcher, each trial): say a fix-up once."""
    logging.getLogger("ablate.config").warning(message)


def flatten(tree: dict, prefix: str = "") -> dict[str, object]:
    """Nested dict -> {"a.b.c": value}; the form params take in MLflow and paths take in studies."""
    flat: dict[str, object] = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{path}."))
        else:
            flat[path] = value
    return flat
