"""Exceptions and warnings that more than one layer raises."""


class ModelLoadError(ValueError):
    """A model spec that cannot be resolved or a file that cannot be loaded."""


class ModelLoadWarning(UserWarning):
    """A model that loads but will likely produce embeddings other than intended."""
