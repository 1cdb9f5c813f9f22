"""`ablate export`: a trained run (or one checkpoint) → the reparameterised inference model, checked.

Writes into the output folder:
- `model_reparam.pt`: {"model": inference-form state dict, "model_config": the run's `model` section,
  "reparameterized": True, "step", "source"}; `load_exported` rebuilds the module tree from the config,
  folds it the same way and loads the weights (loaded with `weights_only=True`).
- `model.pt2`: a `torch.export` program of the whole dual encoder, (images, tokens) → (image features, text
  features, logit scale multiplier), batch dimension dynamic; skipped with a note where export fails.
- `export.json`: what was written and the check results.
The export refuses to write anything whose outputs differ from the train-time model by more than `tolerance`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import yaml
from pydantic import ValidationError

from ablate.core.config.base import ConfigError
from ablate.core.config.loading import describe_validation_error
from ablate.core.config.sections import ModelConfig
from ablate.core.models.build import build_model
from ablate.core.models.clip import CLIP
from ablate.core.models.efficiency import example_inputs
from ablate.core.models.reparam import count_reparameterizable, reparameterize
from ablate.core.training.checkpoint import latest_checkpoint
from ablate.core.training.tracking import RUN_ID_FILE

CHECKPOINT_NAME = "model_reparam.pt"
PROGRAM_NAME = "model.pt2"
SUMMARY_NAME = "export.json"


@dataclass
class ExportResult:
    out_dir: str
    checkpoint: str
    program: str | None
    model_name: str
    step: int | None
    max_abs_diff: dict[str, float]
    notes: list[str] = field(default_factory=list)


def max_output_difference(reference: CLIP, candidate: torch.nn.Module, batch: int = 4) -> dict[str, float]:
    """Largest |Δ| of the normalised image and text features between two models on the same random batch."""
    images, tokens = example_inputs(reference, batch)
    with torch.inference_mode():
        expected, actual = reference.eval()(images, tokens), candidate(images, tokens)
    return {
        "image": (expected[0] - actual[0]).abs().max().item(),
        "text": (expected[1] - actual[1]).abs().max().item(),
    }


def resolve_source(source: Path) -> tuple[Path, Path | None]:
    """(checkpoint file, run folder or None) for a run folder or a `checkpoints/step_*.pt` file."""
    if source.is_dir():
        found = latest_checkpoint(source / "checkpoints")
        if found is None:
            raise FileNotFoundError(f"{source}: no checkpoints/step_*.pt in this run folder")
        return found.path, source
    if not source.is_file():
        raise FileNotFoundError(f"{source}: no such run folder or checkpoint file")
    run_dir = source.parent.parent if source.parent.name == "checkpoints" else None
    return source, run_dir


def run_model_config(run_dir: Path | None, config_file: Path | None) -> ModelConfig:
    """The run's `model` section: from `config_file`, else the run folder's config.yaml, else the config.yaml
    the run logged to MLflow (found through the run folder's mlflow_run.json)."""
    if config_file is not None:
        return _model_section(config_file)
    if run_dir is not None and (run_dir / "config.yaml").is_file():
        return _model_section(run_dir / "config.yaml")
    record = run_dir / RUN_ID_FILE if run_dir is not None else None
    if record is not None and record.is_file():
        from mlflow.tracking import MlflowClient  # deferred: only this path needs MLflow

        info = json.loads(record.read_text())
        local = MlflowClient(tracking_uri=info["tracking_uri"]).download_artifacts(info["run_id"], "config.yaml")
        return _model_section(Path(local))
    where = run_dir or "the checkpoint's folder"
    raise ConfigError(f"{where}: no config.yaml or {RUN_ID_FILE} to say which model this is; pass --config or --model")


def _model_section(path: Path) -> ModelConfig:
    tree = yaml.safe_load(path.read_text()) or {}
    try:
        return ModelConfig.model_validate(tree.get("model", {}))
    except ValidationError as err:
        raise ConfigError(describe_validation_error(err, ModelConfig, f"{path}: model")) from None


def load_trained(checkpoint: Path, config: ModelConfig) -> tuple[CLIP, int | None]:
    """The train-time model with the checkpoint's weights (eval mode) and the step it was saved at."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    model = build_model(config)
    try:
        model.load_state_dict(state["model"] | state.get("ema", {}))  # with optim.ema the run evaluated its average
    except (KeyError, RuntimeError) as err:
        raise ConfigError(f"{checkpoint}: weights do not fit model {config.name!r} ({str(err)[:300]})") from None
    return model.eval(), state.get("step")


def export_model(
    source: Path,
    out_dir: Path,
    *,
    config: ModelConfig | None = None,
    config_file: Path | None = None,
    program: bool = True,
    tolerance: float = 1e-5,
) -> ExportResult:
    checkpoint, run_dir = resolve_source(source)
    config = config or run_model_config(run_dir, config_file)
    trained, step = load_trained(checkpoint, config)
    inference = reparameterize(trained)
    left = count_reparameterizable(inference)
    if left:
        raise RuntimeError(f"{left} modules still have train-time branches after reparameterisation")
    diff = max_output_difference(trained, inference)
    if max(diff.values()) > tolerance:
        raise RuntimeError(f"reparameterised outputs differ by {diff} > {tolerance}; nothing written")
    out_dir.mkdir(parents=True, exist_ok=True)
    result = ExportResult(str(out_dir), str(out_dir / CHECKPOINT_NAME), None, config.name, step, diff)
    torch.save(
        {
            "model": inference.state_dict(),
            "model_config": config.model_dump(mode="json"),
            "reparameterized": True,
            "step": step,
            "source": str(checkpoint),
        },
        out_dir / CHECKPOINT_NAME,
    )
    if program:
        _export_program(inference, out_dir / PROGRAM_NAME, trained, tolerance, result)
    (out_dir / SUMMARY_NAME).write_text(json.dumps(asdict(result), indent=2))
    return result


def _export_program(model: CLIP, path: Path, trained: CLIP, tolerance: float, result: ExportResult) -> None:
    images, tokens = example_inputs(model, 2)
    batch = torch.export.Dim("batch", min=1, max=4096)
    try:
        program = torch.export.export(model, (images, tokens), dynamic_shapes=({0: batch}, {0: batch}))
        torch.export.save(program, path)
        reloaded = torch.export.load(path).module()
    except Exception as err:  # any exporter failure leaves the checkpoint valid; the note says why
        result.notes.append(f"torch.export skipped: {type(err).__name__}: {str(err)[:300]}")
        path.unlink(missing_ok=True)
        return
    diff = max_output_difference(trained, reloaded)
    result.max_abs_diff |= {f"program_{k}": v for k, v in diff.items()}
    if max(diff.values()) > tolerance:
        path.unlink()
        raise RuntimeError(f"exported program differs by {diff} > {tolerance}; program not kept")
    result.program = str(path)


def load_exported(path: Path) -> CLIP:
    """The inference model from `model_reparam.pt` (rebuilt from its config, folded, weights loaded)."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    model = reparameterize(build_model(ModelConfig.model_validate(state["model_config"])))
    model.load_state_dict(state["model"])
    return model.eval()
