"""The `conceptprune` method: its knobs (config.py) next to its code (method.py)."""
