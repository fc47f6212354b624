"""Unlearning methods: one package per method (`trust/methods/<name>/`: config.py with its knobs,
method.py with its `Method`), registered in registry.py; one training loop for all (loop.py).

Shared: the `Method` interface (base.py), losses, saliency masks, training data, TRUST's concept
scorers. This package's own import is torch-free (the config schema reads the registry).
"""
