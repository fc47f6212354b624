"""The `ant_fusion` method: its knobs (config.py) next to its code (method.py)."""
