"""Experiment flows as plain functions: capacity, convergence, lambda-sweep,
consolidation-sweep, longevity, ablation. Prefect wraps them in ``sleepwake.flows.experiments``."""
