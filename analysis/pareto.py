"""Pareto fronts of multi-objective studies (accuracy against parameters or latency is the CLIP trade-off).

A configuration is on the front when no other one is at least as good on every objective and strictly better
on one; "good" follows each objective's direction, so minimised and maximised objectives mix freely.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

DIRECTIONS = ("maximize", "minimize")


def pareto_mask(table: pd.DataFrame, columns: Sequence[str], directions: Sequence[str]) -> pd.Series:
    """True for the rows of `table` on the Pareto front of `columns`; rows missing any value are never on it.

    Rows with identical values do not dominate each other, so ties are all on the front.
    """
    if len(columns) != len(directions):
        raise ValueError("give one direction per column")
    for direction in directions:
        if direction not in DIRECTIONS:
            raise ValueError(f"direction must be 'maximize' or 'minimize', got {direction!r}")
    signs = np.array([1.0 if d == "maximize" else -1.0 for d in directions])
    values = table[list(columns)].to_numpy(dtype=float) * signs  # larger is better in every column now
    complete = ~np.isnan(values).any(axis=1)
    on_front = complete.copy()
    for i in np.flatnonzero(complete):
        others = values[complete]
        dominated = (others >= values[i]).all(axis=1) & (others > values[i]).any(axis=1)
        on_front[i] = not dominated.any()
    return pd.Series(on_front, index=table.index, name="pareto")


def pareto_front(table: pd.DataFrame, objectives: Sequence[dict[str, str]], value: str = "mean") -> pd.Series:
    """`pareto_mask` over per-objective columns named `<value>:<metric>`, as `objective_table` builds them."""
    columns = [f"{value}:{objective['metric']}" for objective in objectives]
    return pareto_mask(table, columns, [objective["direction"] for objective in objectives])
