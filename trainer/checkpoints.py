"""Checkpoint payloads: gate candidates, the resume state and RNG states.

docs/training.md describes the format; every entry is a tensor, number, string,
bool, None, list or dict, so torch.load(weights_only=True) reads the files.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import open_clip
import torch

from pytest_modelqa.models import read_checkpoint, save_checkpoint
from trainer.config import ConfigError

STATE_PATH = Path("state") / "latest.pt"  # resume state, relative to the run folder
DTYPES = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}


def epoch_path(run_dir: Path, epoch: int) -> Path:
    return run_dir / f"epoch_{epoch}.pt"


def cast_state_dict(state_dict: dict[str, torch.Tensor], dtype: str) -> dict:
    """Return a CPU copy whose floating-point tensors have the named dtype."""
    target = DTYPES[dtype]
    return {
        key: (value.to(target) if value.is_floating_point() else value)
        .detach()
        .cpu()
        .clone()
        for key, value in state_dict.items()
    }


def versions() -> dict[str, str]:
    return {"torch": str(torch.__version__), "open_clip": str(open_clip.__version__)}


def rng_state() -> dict[str, Any]:
    """Capture torch, Python and NumPy RNG states as weights_only-safe values."""
    version, mt_state, gauss = random.getstate()
    name, keys, position, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": {"version": version, "state": list(mt_state), "gauss": gauss},
        "numpy": {
            "bit_generator": name,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "position": int(position),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Restore the RNG states captured by rng_state."""
    torch.set_rng_state(state["torch"])
    python = state["python"]
    random.setstate((python["version"], tuple(python["state"]), python["gauss"]))
    numpy = state["numpy"]
    np.random.set_state(
        (
            numpy["bit_generator"],
            numpy["keys"].numpy().astype(np.uint32),
            numpy["position"],
            numpy["has_gauss"],
            numpy["cached_gaussian"],
        )
    )
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def write_candidate(
    path: Path, identity: dict, state_dict: dict, **entries: Any
) -> Path:
    """Write one candidate checkpoint: the run's identity, weights and `entries`.

    `identity` contains model_cfg, preprocess_cfg, train_ids_sha256, base and config;
    `entries` adds epoch, metrics, history and role, and any extra key.
    """
    payload = {**identity, "state_dict": state_dict, "versions": versions(), **entries}
    return save_checkpoint(path, payload)


def write_train_state(run_dir: Path, identity: dict, **state: Any) -> Path:
    """Write the resume state (weights in float32, optimizer, schedule, RNG)."""
    return save_checkpoint(
        run_dir / STATE_PATH, {**identity, "role": "train-state", **state}
    )


def read_train_state(path: str | Path) -> tuple[Path, dict]:
    """Read the resume state from a run folder or its state file.

    Returns the run folder and the payload.
    """
    path = Path(path)
    state_file = path / STATE_PATH if path.is_dir() else path
    payload = read_checkpoint(state_file)
    if payload.get("role") != "train-state":
        raise ConfigError(
            f"--resume: {state_file} is not a resume state (its role is "
            f"{payload.get('role')!r}); pass the run folder or its {STATE_PATH}"
        )
    return state_file.parent.parent, payload
