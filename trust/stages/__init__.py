"""Pipeline stages: one module per `trust <stage>` command, plain library code."""
