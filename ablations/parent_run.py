"""The study's MLflow parent run: one per study, found again on every relaunch, holding the study-level tags
the analysis reads (objectives, search space) and, later, the report's figures."""

from __future__ import annotations

import json
from pathlib import Path

from mlflow.tracking import MlflowClient

from ablate.ablations.control import STUDY_RECORD
from ablate.ablations.spec import StudySpec
from ablate.core.training.tracking import ensure_tracking_store, get_or_create_experiment, set_run_tags


def open_parent_run(spec: StudySpec, study_file: str | None = None) -> str:
    """The run id of the study's parent run, created on first launch and marked running again on relaunch.

    `study_file`: the file `ablate launch` was given, so the report's "Reproduce" names it (and the recorded copy
    under runs/<study>/); a relaunch from that recorded copy (`ablate resume`) keeps the original name.
    """
    ensure_tracking_store(spec.storage.mlflow)
    client = MlflowClient(tracking_uri=spec.storage.mlflow)
    experiment_id = get_or_create_experiment(client, spec.name)
    existing = client.search_runs([experiment_id], filter_string="tags.`ablate.role` = 'study'", max_results=1)
    tags = {
        "ablate.role": "study",
        "ablate.study": spec.name,
        "ablate.objective": json.dumps([objective.model_dump() for objective in spec.objectives]),
        "ablate.search_space": json.dumps(sorted(spec.search_space)),
        "ablate.optuna_storage": spec.optuna_storage,
        "ablate.description": spec.description,
    }
    record = str(spec.run_folder / STUDY_RECORD)
    tags["ablate.study_record"] = record
    launched_from = existing[0].data.tags.get("ablate.study_file") if existing else None
    if study_file is not None and (launched_from is None or Path(study_file).resolve() != Path(record).resolve()):
        tags["ablate.study_file"] = study_file
    if existing:
        run_id = existing[0].info.run_id
        client.update_run(run_id, status="RUNNING")
    else:
        run_id = client.create_run(experiment_id, run_name=f"{spec.name} (study)").info.run_id
    set_run_tags(client, run_id, tags)
    client.log_text(run_id, spec.model_dump_json(indent=2), "study/study.json")
    return run_id


def close_parent_run(spec: StudySpec, run_id: str, status: str) -> None:
    MlflowClient(tracking_uri=spec.storage.mlflow).set_terminated(run_id, status=status)
