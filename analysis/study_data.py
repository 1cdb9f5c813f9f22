"""Everything a report reads about one study, loaded once: what the study asked, and its trial runs."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

import pandas as pd

from ablate.analysis.plots import config_labels
from ablate.analysis.runs import finished, load_runs, param_column, study_info


@dataclass
class StudyData:
    """The parent run's record (`study_info`) and one row per trial run (`load_runs`)."""

    info: dict[str, Any]
    runs: pd.DataFrame

    @property
    def name(self) -> str:
        return self.info["study"]

    @property
    def objectives(self) -> list[dict[str, str]]:
        return self.info["objectives"]

    @cached_property
    def params(self) -> list[str]:
        """`param.` columns of the search space that really vary across the finished trials.

        Fixed entries of the search space (the seed) and parameters a short study happened not to vary
        would only add constant columns to tables and flat plots.
        """
        columns = [param_column(p) for p in self.info["search_space"]]
        trials = self.done[self.done["baseline"].isna()]
        return [c for c in columns if c in trials.columns and c != "param.seed" and trials[c].nunique() > 1]

    @cached_property
    def log_params(self) -> set[str]:
        """`param.` columns the study searched on a log scale (`log: true` in its spec): plotted on log axes."""
        space = (self.info.get("spec") or {}).get("search_space") or {}
        if not isinstance(space, dict):  # a spec rebuilt from the parent run's tags lists the names only
            return set()
        return {param_column(name) for name, entry in space.items() if isinstance(entry, dict) and entry.get("log")}

    @cached_property
    def done(self) -> pd.DataFrame:
        """Finished runs only: failed and pruned runs are excluded from every statistic."""
        return finished(self.runs)

    @cached_property
    def labels(self) -> pd.Series:
        """Readable configuration label of every run (indexed like `runs`). When no parameter varies (one
        configuration against baselines, as in `make demo`), the search space's values still name it:
        `schedule=0.5` reads better than a hash."""
        searched = [param_column(p) for p in self.info["search_space"]]
        return config_labels(self.runs, self.params or [c for c in searched if c in self.runs.columns])

    @property
    def has_baseline(self) -> bool:
        return bool(self.done["baseline"].notna().any())

    @property
    def reference_baseline(self) -> str:
        """The baseline every other configuration is compared to: the first one the study declares that has
        finished runs (a spec rebuilt from tags has no order: then the first by name)."""
        finished_names = set(self.done["baseline"].dropna())
        declared = [name for name in (self.info.get("spec") or {}).get("baselines", {}) if name in finished_names]
        return (declared or sorted(finished_names))[0]


def load_study_data(study: str, tracking_uri: str) -> StudyData:
    return StudyData(study_info(study, tracking_uri), load_runs(study, tracking_uri))
