"""The training loop: one TrainConfig in, one TrainResult out.

It knows nothing about studies. The orchestrator steers it through `on_eval` callbacks (report to Optuna,
answer "stop" when pruned). A run folder holds its checkpoints; starting a run whose folder already has one
continues from it, bit-exactly on CPU (see checkpoint.py and data/sampler.py for why).
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import yaml
from torch.utils.data import DataLoader

from ablate.core.compression.stages import CompressionStages, Pruned
from ablate.core.config.sections import TrainConfig
from ablate.core.data.bundled import resolve_data_root
from ablate.core.data.manifest import load_manifest
from ablate.core.data.reinforcement_store import ReinforcementStore, TeacherLayout
from ablate.core.data.sampler import StepBatchSampler
from ablate.core.data.train_dataset import TrainDataset
from ablate.core.evaluation.config import EvalTaskConfig
from ablate.core.evaluation.suite import EvaluationSuite, suite_metric_names
from ablate.core.models import parameter_counts
from ablate.core.models.build import apply_axes, build_model
from ablate.core.models.efficiency import efficiency_metric_names
from ablate.core.models.efficiency_cache import cached_efficiency_metrics
from ablate.core.teachers.ensemble import TeacherEnsemble
from ablate.core.training.checkpoint import checkpoint_extra, latest_checkpoint, load_checkpoint, save_checkpoint
from ablate.core.training.distributed import ProcessGroup
from ablate.core.training.ema import WeightAverage
from ablate.core.training.fast_paths import DataWaitClock, TrainStep
from ablate.core.training.inputs import RunInputs, direct_inputs
from ablate.core.training.objective import TeacherSource, compute_loss
from ablate.core.training.optim import build_optimizer, run_learning_rate, schedule_tag, set_learning_rate
from ablate.core.training.progress import RunProgress
from ablate.core.training.runtime import configure_threads, ignore_job_signals, resolve_device, seed_everything
from ablate.core.training.tracker_opening import FirstRecords, RemoteTracker, TrackerOpening

if TYPE_CHECKING:
    from ablate.core.training.tracking import RunTracker

log = logging.getLogger("ablate.train")

Inputs = RunInputs | Callable[[TrainConfig], RunInputs] | None
EvalCallback = Callable[[int, dict[str, float]], bool]
"""on_eval(step, metrics) -> True to stop the run early (e.g. the trial was pruned)."""


@dataclass
class TrainResult:
    """`metrics`: the last evaluation plus per-run constants (parameter counts), what objectives read."""

    steps: int
    metrics: dict[str, float]
    stopped_early: bool
    run_id: str | None
    resumed_from: int | None
    wall_seconds: float  # this attempt
    compute_seconds: float = 0.0  # every attempt, up to each one's last checkpoint (what accounting reports)
    history: list[tuple[int, dict[str, float]]] = field(default_factory=list)


def result_metric_names(zero_shot_tasks: Iterable[str], eval_tasks: Sequence[EvalTaskConfig] = ()) -> list[str]:
    """Every name a TrainResult's `metrics` can hold, i.e. what a study may use as an objective."""
    names = [f"model/params_{part}" for part in ("image", "text", "total")] + ["compression/realised_sparsity"]
    return names + suite_metric_names(zero_shot_tasks, eval_tasks) + efficiency_metric_names()


def train(config: TrainConfig, callbacks: Sequence[EvalCallback] = (), inputs: Inputs = None) -> TrainResult:
    """Run (or resume) one training run to its last step, or until a callback asks to stop. `inputs`: the
    prepared teachers and reinforced data (`teachers.bundled.prepare_inputs`), or the function that prepares them
    from the config, called inside the run so that a failure there is recorded on it; by default the config's."""
    return Trainer(config, callbacks, inputs).run()


class Trainer:
    """Builds the run's pieces once (model, optimizer, data, tracker) and drives the step loop."""

    def __init__(self, config: TrainConfig, callbacks: Sequence[EvalCallback] = (), inputs: Inputs = None) -> None:
        self.config, self.callbacks = config, list(callbacks)
        self.given_inputs = inputs
        self.threads = configure_threads(config.train.threads)
        self.device = resolve_device(config.train.device)
        # Every rank of a multi-process trial seeds alike: same initial weights, same mask noise.
        self.group = ProcessGroup.from_environment(self.device, config.train.collective_timeout_s)
        self.rows = self.group.rows(config.train.batch_size)  # this rank's share of every batch
        self.step = TrainStep(config.train, self.device, config.optim.grad_clip_norm, self.group)  # the fast paths
        seed_everything(config.seed)
        self.run_dir = Path(config.run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.checkpoint_dir = self.run_dir / "checkpoints"
        self.opening = None  # the MLflow run, opened by a helper process as training starts (tracker_opening.py)
        if self.group.is_main:  # only rank 0 writes the run folder's records and logs
            # The run folder describes itself (export, teachers and inheritance read it), tracked or not.
            (self.run_dir / "config.yaml").write_text(yaml.safe_dump(config.model_dump(mode="json", by_alias=True)))
            self.opening = TrackerOpening(config, self.run_dir) if config.tracking.enabled else None

    @property
    def tracker(self) -> RemoteTracker | None:
        """The run's MLflow tracker, waited for; None where this rank or run is untracked."""
        return self.opening.tracker() if self.opening is not None else None

    def _build(self) -> None:
        """Model, optimizer (restored from the latest checkpoint if any) and data; inside `run` so that a
        failure here (a missing dataset, an unknown model) is recorded on the run."""
        config = self.config
        given = self.given_inputs
        self.inputs = given if isinstance(given, RunInputs) else (given or direct_inputs)(config)
        checkpoint = latest_checkpoint(self.checkpoint_dir)
        extra = checkpoint_extra(checkpoint.path) if checkpoint else {}
        self.stages = CompressionStages(config.compression) if config.compression else None
        log.info("building model %s%s", config.model.name, f" (resuming step {checkpoint.step})" if checkpoint else "")
        if self.stages is None:
            model = build_model(config.model, pretrained=checkpoint is None)
        elif checkpoint is None:
            model = self.stages.initial_model(
                lambda: build_model(config.model, True),
                self.inputs.inherit_from,
                lambda teacher_copy: apply_axes(teacher_copy, config.model),
            )
        else:  # the weights come from the checkpoint; only the (pruned) architecture must be rebuilt
            model = self.stages.restore(build_model(config.model), extra)
        self.model = model.to(self.device)
        step = int(checkpoint.step) if checkpoint else 0
        groups = self.stages.groups_before_load(self.model, step, extra) if self.stages else None
        self.optimizer = build_optimizer(self.model, config.optim, groups or (), kernel=config.train.optimizer_kernel)
        self.ema = WeightAverage.for_run(self.model, config.optim, config.train.steps)  # None: optim.ema off
        restored = (
            load_checkpoint(checkpoint.path, self.model, self.optimizer, self.step.scaler, self.ema)
            if checkpoint
            else (0, 0.0)
        )
        if self.stages is not None:
            self.stages.load_compressor_state(extra)
        self.start_step, self.compute_before = restored
        self.resumed = checkpoint is not None

        log.info("reading the data%s", " and the teachers' embeddings" if self.inputs.reinforcement else "")
        manifest = load_manifest(resolve_data_root(self.config.data))
        train_set = self._training_data(manifest)
        self.evaluator = EvaluationSuite(self.config.eval, manifest, self.model.inputs)  # checks eval.tasks
        sampler = StepBatchSampler(
            len(train_set),
            self.config.train.batch_size,
            self.config.seed,
            self.start_step,
            self.config.train.steps,
            self.rows,
        )
        workers = self.config.data.num_workers
        self.loader = DataLoader(
            train_set,
            batch_sampler=sampler,
            num_workers=workers,
            pin_memory=self.device.type == "cuda",
            persistent_workers=workers > 0,
            prefetch_factor=4 if workers else None,
            generator=torch.Generator().manual_seed(self.config.seed),  # not the global RNG: resume stays exact
            worker_init_fn=ignore_job_signals,
        )

    def _training_data(self, manifest) -> TrainDataset:
        """The training set and, when the run distils, where its teacher embeddings come from."""
        config = self.config
        reinforcement = self.inputs.reinforcement
        store = ReinforcementStore(reinforcement) if reinforcement else None
        online = None
        if config.teachers.mode == "online":
            log.info("loading %d online teachers", len(self.inputs.teachers))
            online = TeacherEnsemble.load(self.inputs.teachers).to(self.device)
        self.teachers = None
        if online is not None:
            scales = config.loss.teacher_logit_scales or online.logit_scales
            self.teachers = TeacherSource(TeacherLayout(config.loss.teacher_dims or online.dims, scales), online)
        elif store is not None:
            self.teachers = TeacherSource(store.layout(config.loss.teacher_dims, config.loss.teacher_logit_scales))
        augment = config.data.augment or online is not None
        keep = self._quality_subset(reinforcement) if config.data.keep_fraction < 1 else None
        dataset = TrainDataset(manifest, self.model.inputs, config.data, config.seed, store, augment, keep_uids=keep)
        self.data_metrics = {"data/train_samples": float(len(dataset))}
        if store is not None:
            self.data_metrics |= {"data/lost_samples": float(store.lost + len(dataset.images) - len(dataset))}
        return dataset

    def _quality_subset(self, reinforcement: Path) -> set[str]:
        """uids of the top `data.keep_fraction` by caption quality. Imported here: the store reads parquet
        through pandas, ~0.4 s that other runs' start-up need not pay."""
        from ablate.core.quality.store import shared_quality_subset

        return shared_quality_subset(reinforcement, self.config.data.quality_score, self.config.data.keep_fraction)

    def run(self) -> TrainResult:
        self.started = time.perf_counter()
        try:
            self._build()
            self.run_metrics = {f"model/params_{k}": float(v) for k, v in parameter_counts(self.model).items()}
            realised = self.stages.realised_sparsity(self.model) if self.stages else None
            if realised is not None:  # resumed after a prune
                self.run_metrics["compression/realised_sparsity"] = realised
            log.info(
                "run: %s from step %d/%d on %s with %d threads",
                self.config.model.name,
                self.start_step,
                self.config.train.steps,
                self.device,
                self.threads,
            )
            resumed_from = self.start_step if self.resumed else None
            result = TrainResult(self.start_step, {}, False, None, resumed_from, 0.0)
            self._loop(result, None if self.resumed else self._first_records())
        except BaseException as err:
            tracker = self.opening.tracker_if_open() if self.opening is not None else None
            if tracker is not None:
                tracker.set_tags({"ablate.error": f"{type(err).__name__}: {err}"[:4000]})
                tracker.finish("FAILED")
            raise
        finally:
            self.group.close()
        result.run_id = self.tracker.run_id if self.tracker else None
        result.wall_seconds = time.perf_counter() - self.started
        result.compute_seconds = self._compute_seconds()
        if self.config.eval.efficiency and not result.stopped_early and self.group.is_main:
            efficiency = cached_efficiency_metrics(self.model)  # once per architecture, not per trial
            result.metrics |= efficiency
            if self.tracker:
                self.tracker.log_metrics(efficiency, result.steps)
        compute_hours = result.compute_seconds / 3600
        if self.tracker:
            processes = self.group.world_size
            hours = {"compute/wall_hours": compute_hours, "compute/cpu_hours": compute_hours * self.threads * processes}
            if self.device.type == "cuda":
                hours["compute/gpu_hours"] = compute_hours * processes
            self.tracker.log_metrics(hours, result.steps)
            self.tracker.finish("FINISHED")
        return result

    def _first_records(self) -> FirstRecords:
        """What a new run logs once: parameter counts, data and thread settings, and the tags reports need to
        read its numbers (the LR schedule used, what the sparsities count)."""
        metrics = self.run_metrics | self.data_metrics | {"system/threads": self.threads}
        tags = {"ablate.lr_schedule": schedule_tag(self.config)} | (self.stages.tags() if self.stages else {})

        def write(tracker: RunTracker) -> None:
            tracker.log_metrics(metrics, 0)
            tracker.set_tags(tags)

        return write

    def _compute_seconds(self) -> float:
        """Wall time of this attempt plus what earlier attempts spent up to their last checkpoint."""
        return self.compute_before + time.perf_counter() - self.started

    def _loop(self, result: TrainResult, first_records: FirstRecords | None) -> None:
        config, settings = self.config, self.config.train
        batches = iter(self.loader) if self.start_step < settings.steps else iter(())  # forks the loader workers
        if self.opening is not None:  # then the tracking helper: forked once, after the loader workers
            self.opening.start(first_records)
        bf16 = self.step.precision == "bf16"  # evaluation autocasts too
        clock = DataWaitClock()
        window_sums: dict[str, torch.Tensor] = {}  # loss terms summed on device: no host sync until the log step
        window_start, window_steps = time.perf_counter(), 0
        main = self.group.is_main
        self.progress = RunProgress(
            self.run_dir if main else None, settings.progress and main, settings.steps, self.start_step
        )
        if self.start_step >= settings.steps:  # killed after its last checkpoint: only the final evaluation is due
            if config.eval.final:
                self._evaluate(self.start_step, result, bf16)
            return
        self.model.train()
        with self.progress as progress:
            for step, batch in enumerate(clock.wrap(batches), start=self.start_step):
                model, optimizer = self.model, self.optimizer  # both are replaced when a stage prunes
                sparsity = self._begin_stage_step(step)
                lr = run_learning_rate(step, config)  # restarted in every compression stage unless `continuous`
                set_learning_rate(optimizer, lr)
                batch = {name: tensor.to(self.device, non_blocking=True) for name, tensor in batch.items()}
                terms = self.step(  # autocast, (accumulated) backward, clip (model parameters only), step
                    model,
                    optimizer,
                    batch,
                    lambda m, b, s=sparsity: compute_loss(m, b, config.loss, self.teachers, s, self.group),
                )
                model.clamp_logit_scale()
                if self.ema is not None:
                    self.ema.update(model)
                for name, value in terms.items():
                    window_sums[name] = window_sums.get(name, 0) + value.detach()
                window_steps += 1
                done = result.steps = step + 1
                log_due = done % settings.log_every == 0 or done == settings.steps
                stage_metrics = self._end_stage_step(step, log_due)

                if log_due:
                    window_means = self._global_means(window_sums, window_steps)
                    train_metrics = {
                        **{f"train/{name}": value for name, value in window_means.items()},
                        "train/lr": lr,
                        "train/logit_scale": self.model.logit_scale.exp().item(),
                        "train/samples_per_s": window_steps
                        * settings.batch_size
                        / (time.perf_counter() - window_start),
                        "train/data_wait_fraction": clock.take() / (time.perf_counter() - window_start),
                    }
                    if not math.isfinite(train_metrics["train/loss"]):
                        raise FloatingPointError(f"training loss is {train_metrics['train/loss']} at step {done}")
                    train_metrics |= stage_metrics
                    if self.tracker:
                        self.tracker.log_metrics(train_metrics, done)
                    progress.logged(done, train_metrics["train/loss"], train_metrics["train/samples_per_s"])
                    window_sums.clear()
                    window_start, window_steps = time.perf_counter(), 0

                # The last step evaluates only if `eval.final` (its prompts can take a minute on a real model).
                if (done % settings.eval_every == 0) if done < settings.steps else config.eval.final:
                    stop = self._evaluate(done, result, bf16)
                    window_start = time.perf_counter()  # evaluation time is not training throughput
                    clock.take()
                    if stop:
                        result.stopped_early = True
                        self._save(done)
                        return

                if done % settings.checkpoint_every == 0 or done == settings.steps:
                    self._save(done)

    def _global_means(self, sums: dict[str, torch.Tensor], steps: int) -> dict[str, float]:
        """Per-step means of the window's loss terms, over all ranks: each rank holds its rows' share, and their
        mean is the global batch's term. One collective per log step."""
        names = sorted(sums)
        means = self.group.mean(torch.stack([torch.as_tensor(sums[name], dtype=torch.float32) for name in names]))
        return {name: value / steps for name, value in zip(names, means.tolist(), strict=True)}

    def _begin_stage_step(self, step: int) -> torch.Tensor | None:
        """Attach a stage's masks when its mask phase starts (their parameters join the optimizer) and return
        the sparsity loss of this step, or None outside mask phases."""
        if self.stages is None:
            return None
        groups = self.stages.begin_step(self.model, step)
        for group in groups or ():
            self.optimizer.add_param_group(group)
        terms = self.stages.sparsity_terms(step)
        return None if terms is None else terms["loss_sparsity"]

    def _end_stage_step(self, step: int, log_due: bool) -> dict[str, float]:
        """After the optimizer step: read the masks' state if it is logged now, then prune if the phase ended."""
        if self.stages is None:
            return {}
        self.stages.after_optimizer_step()
        metrics = self.stages.metrics(step) if log_due else {}
        if self.ema is not None and self.stages.prune_due(step + 1):  # the average follows the student's prune
            self.ema.prune_with(self.stages.compressor, self.model)
        pruned = self.stages.prune_if_due(step + 1)
        if pruned is not None:
            self._adopt_pruned(pruned, step + 1)
        return metrics

    def _adopt_pruned(self, pruned: Pruned, step: int) -> None:
        """Continue with the smaller dense model: new optimizer, new parameter counts, the stage's checkpoint."""
        self.model = pruned.model.to(self.device).train()
        self.optimizer = build_optimizer(self.model, self.config.optim, kernel=self.config.train.optimizer_kernel)
        counts = {f"model/params_{k}": float(v) for k, v in parameter_counts(self.model).items()}
        self.run_metrics |= counts | {"compression/realised_sparsity": pruned.result.counts["realised_sparsity"]}
        stage_metrics = {f"compression/stage{pruned.stage}/{k}": float(v) for k, v in pruned.result.counts.items()}
        if not self.group.is_main:  # every rank pruned the same model; rank 0 keeps the record
            return
        folder = self.run_dir / "pruned"
        folder.mkdir(exist_ok=True)
        path = folder / f"stage-{pruned.stage}.pt"
        torch.save(
            {
                "model": self.model.state_dict(),
                "records": self.stages.records,
                "config": self.config.model_dump(mode="json", by_alias=True),
            },
            path,
        )
        log.info("stage %d pruned: %s", pruned.stage, {k: round(v, 4) for k, v in pruned.result.counts.items()})
        if self.tracker:
            self.tracker.log_metrics(stage_metrics | self.run_metrics, step)
            self.tracker.log_artifact(path, "pruned")

    def _evaluate(self, step: int, result: TrainResult, bf16: bool) -> bool:
        """Evaluate, log, and ask the callbacks whether to stop (rank 0; the other ranks wait for its answer)."""
        if not self.group.is_main:
            return self.group.agree(False)
        with self.ema.swapped_in(self.model) if self.ema is not None else contextlib.nullcontext():
            metrics = self.evaluator(self.model, self.device, bf16)  # the averaged weights when optim.ema is on
        result.metrics = self.run_metrics | metrics
        result.history.append((step, metrics))
        if self.tracker:
            self.tracker.log_metrics(metrics, step)
        self.progress.evaluated(step, metrics)
        log.info("step %d: %s", step, ", ".join(f"{k.removeprefix('eval/')}={v:.3f}" for k, v in metrics.items()))
        return self.group.agree(any(callback(step, metrics) for callback in self.callbacks))

    def _save(self, step: int) -> None:
        if not self.group.is_main:  # the ranks hold identical weights and optimizer states
            return
        save_checkpoint(
            self.checkpoint_dir,
            step,
            self.model,
            self.optimizer,
            self.config.train.keep_checkpoints,
            self._compute_seconds(),
            self.stages.extra_state() if self.stages is not None else None,
            self.step.scaler,
            self.ema,
        )
