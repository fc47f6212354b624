"""Prefect tasks: thin wrappers that run one `trust` pipeline stage each (orchestration issue)."""
