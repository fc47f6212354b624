"""Prefect flows chaining the pipeline stages (orchestration issue)."""
