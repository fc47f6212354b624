class ModelLoadError(ValueError):
    """A model path that is not something trust can load; the message says what was expected."""
