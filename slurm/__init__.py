"""Executors for trial jobs (submitit): local processes now, SLURM clusters through the same interface."""
