"""Device and numeric precision of a run: autocast contexts and gradient scaling."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from trainer.config import ConfigError, TrainConfig

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "amp": torch.float16}


@dataclass(frozen=True)
class Compute:
    """The device of a run and the autocast its forward passes use."""

    device: torch.device
    precision: str

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=AUTOCAST_DTYPES[self.precision])

    def grad_scaler(self) -> torch.amp.GradScaler:
        """Return a scaler that is active for float16 autocast only."""
        return torch.amp.GradScaler(self.device.type, enabled=self.precision == "amp")


def resolve_compute(config: TrainConfig) -> Compute:
    """Pick the device and check that the precision runs on it."""
    if config.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    elif config.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device: cuda was requested but no CUDA device is available")
    else:
        device = torch.device(config.device)
    if config.precision != "fp32" and device.type != "cuda":
        raise ConfigError(
            f"precision: {config.precision} needs a CUDA device; this run is on "
            f"{device.type}, so use fp32"
        )
    return Compute(device, config.precision)
