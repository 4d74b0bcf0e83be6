"""Acceptance tests for fine-tuned CLIP models, run as a pytest plugin."""

from pytest_modelqa.catalog import Catalog, CatalogError, bundled_catalog, load_catalog
from pytest_modelqa.models import (
    LoadedModel,
    ModelLoadError,
    load_model,
    read_checkpoint,
    save_checkpoint,
)

__version__ = "0.1.0"

__all__ = [
    "Catalog",
    "CatalogError",
    "LoadedModel",
    "ModelLoadError",
    "__version__",
    "bundled_catalog",
    "load_catalog",
    "load_model",
    "read_checkpoint",
    "save_checkpoint",
]
