"""trust: targeted, robust concept erasure for text-to-image diffusion models."""

import os

# transformers warns at import that torchvision is absent; trust never needs it.
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

__version__ = "0.1.0"
