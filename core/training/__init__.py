"""The training loop and its parts: the step and its fast paths, the objective, optimizer and schedule,
checkpoints, multi-process groups, process settings and MLflow tracking."""
