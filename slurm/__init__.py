"""Where trials run: submitit executors (local, debug, SLURM), SLURM accounting (sacct), a local single-node
cluster for development and CI, and the MLflow server that jobs on other nodes log through."""
