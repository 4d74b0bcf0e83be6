"""Shared test fixtures: tiny open_clip models and small real catalogs."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch

from pytest_modelqa.catalog import FIXTURES_DIR
from pytest_modelqa.models import build_model, save_checkpoint

# A real open_clip CLIP small enough to run in milliseconds: 32 px images, one
# transformer block per tower. Most of its 1.6M parameters are the token embedding.
TINY_MODEL_CFG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 32, "layers": 1,
                   "head_width": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2,
                 "layers": 1},
}
TINY_PREPROCESS_CFG = {"size": 32, "resize_mode": "squash"}


def write_tiny_checkpoint(path: Path, *, seed: int = 0, **extra) -> Path:
    """Write a trainer-format checkpoint of a randomly initialised tiny CLIP."""
    torch.manual_seed(seed)
    model = build_model(TINY_MODEL_CFG)
    return save_checkpoint(
        path,
        {
            "model_cfg": TINY_MODEL_CFG,
            "preprocess_cfg": TINY_PREPROCESS_CFG,
            "state_dict": model.state_dict(),
            **extra,
        },
    )


@pytest.fixture
def tiny_checkpoint(tmp_path: Path) -> Path:
    return write_tiny_checkpoint(tmp_path / "tiny.pt")


def copy_catalog_sample(source: str, dest: Path, *, per_split: dict[str, int]) -> Path:
    """Copy the first rows of each split of a bundled catalog, images included."""
    frame = pd.read_csv(FIXTURES_DIR / source / "manifest.csv", dtype=str,
                        keep_default_na=False)
    parts = [frame[frame["split"] == split].head(count)
             for split, count in per_split.items()]
    sample = pd.concat(parts).reset_index(drop=True)
    for image in sample["image"]:
        target = dest / image
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(FIXTURES_DIR / source / image, target)
    sample.to_csv(dest / "manifest.csv", index=False)
    return dest
