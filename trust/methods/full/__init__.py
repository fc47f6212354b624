"""The `full` method: its knobs (config.py) next to its code (method.py)."""
