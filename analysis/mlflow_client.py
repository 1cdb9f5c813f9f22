"""MLflow's client and entities for the analysis modules, imported in one place with its Jupyter warning silenced.

MLflow imports `tqdm.auto`, which warns in Jupyter kernels without ipywidgets ("IProgress not found"); imported
unguarded by whichever analysis module a report notebook loads first, the warning landed in the notebook's first
cell. It is about progress bars that reports never show.
"""

import warnings

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message="IProgress not found")
    from mlflow import MlflowClient
    from mlflow.entities import Experiment, Run

__all__ = ["Experiment", "MlflowClient", "Run"]
