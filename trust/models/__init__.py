"""Model access: one interface (`DiffusionParts`) over SD folders and the built-in world."""

from trust.models.errors import ModelLoadError
from trust.models.loading import detect_kind, load_model, save_model
from trust.models.parts import KIND_SD, KIND_WORLD, DiffusionParts

__all__ = ["DiffusionParts", "ModelLoadError", "KIND_SD", "KIND_WORLD", "detect_kind", "load_model", "save_model"]
