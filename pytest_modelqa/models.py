"""Model loading for every supported spec, safely, with fingerprints and preprocessing.

A spec names a model in one of these forms:

- a path to a checkpoint written by the bundled trainer (see `save_checkpoint`);
- ``local-dir:PATH``: a folder holding ``open_clip_config.json`` and weights;
- ``hf-hub:ORG/NAME``: an open_clip model on the Hugging Face hub (offline use needs a
  populated cache);
- ``ARCH:WEIGHTS``: a built-in open_clip architecture name with a local weights file,
  or with one of open_clip's pretrained tags.

Loading never unpickles arbitrary objects: torch checkpoints are read with
``weights_only=True`` and safetensors files hold tensors alone.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import open_clip
import torch

CHECKPOINT_FORMAT = "pytest-modelqa-checkpoint"
CHECKPOINT_VERSION = 1
DEFAULT_PREPROCESS = {
    "size": 224,
    "mean": list(open_clip.OPENAI_DATASET_MEAN),
    "std": list(open_clip.OPENAI_DATASET_STD),
    "interpolation": "bicubic",
    "resize_mode": "shortest",
}


class ModelLoadError(ValueError):
    """A model spec that cannot be resolved or a file that cannot be loaded."""


@dataclass
class LoadedModel:
    """An open_clip model ready for inference, with what is known of its origin."""

    spec: str
    model: torch.nn.Module = field(repr=False)
    preprocess: Any = field(repr=False)
    tokenizer: Any = field(repr=False)
    sha256: str
    model_cfg: dict | None = None
    info: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        """Return a short display name: the file stem or the spec itself."""
        if self.spec.startswith(("hf-hub:", "local-dir:")):
            return self.spec.split(":", 1)[1].rstrip("/").split("/")[-1]
        return (
            Path(self.spec.split(":", 1)[-1]).stem
            if ":" in self.spec
            else Path(self.spec).stem
        )


def file_sha256(path: str | Path, *, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def folder_sha256(path: Path) -> str:
    """Hash every regular file of a folder by relative path and content."""
    digest = hashlib.sha256()
    for child in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(str(child.relative_to(path)).encode())
        digest.update(file_sha256(child).encode())
    return digest.hexdigest()


def build_model(model_cfg: dict) -> torch.nn.Module:
    """Instantiate an open_clip CLIP from its model config, with random weights."""
    cfg = dict(model_cfg)
    if cfg.pop("custom_text", False):
        return open_clip.CustomTextCLIP(**cfg)
    return open_clip.CLIP(**cfg)


def build_preprocess(preprocess_cfg: dict | None):
    cfg = {**DEFAULT_PREPROCESS, **(preprocess_cfg or {})}
    return open_clip.image_transform(
        cfg["size"],
        is_train=False,
        mean=tuple(cfg["mean"]),
        std=tuple(cfg["std"]),
        resize_mode=cfg["resize_mode"],
        interpolation=cfg["interpolation"],
    )


def build_tokenizer(model_cfg: dict):
    context_length = model_cfg.get("text_cfg", {}).get("context_length", 77)
    return open_clip.SimpleTokenizer(context_length=context_length)


def save_checkpoint(path: str | Path, payload: dict) -> Path:
    """Write a trainer checkpoint atomically: a crash mid-write keeps the old file.

    `payload` needs ``model_cfg`` and ``state_dict``; it may add ``preprocess_cfg``,
    ``epoch``, ``metrics``, ``history``, ``train_ids_sha256`` and any other entries
    made of tensors, numbers, strings, lists and dicts, so that
    ``torch.load(weights_only=True)`` can read the file back.
    """
    missing = [key for key in ("model_cfg", "state_dict") if key not in payload]
    if missing:
        raise ValueError(f"checkpoint payload lacks {', '.join(missing)}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    body = {
        "format": CHECKPOINT_FORMAT,
        "format_version": CHECKPOINT_VERSION,
        **payload,
    }
    partial = path.with_name(f".{path.name}.partial")
    try:
        with open(partial, "wb") as handle:
            torch.save(body, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return path


def read_checkpoint(path: str | Path) -> dict:
    """Read a torch checkpoint without executing any code stored in it."""
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"checkpoint not found: {path}")
    if path.stat().st_size == 0:
        raise ModelLoadError(f"checkpoint is empty: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise ModelLoadError(
            f"{path}: refused to load, because it holds objects other than tensors and "
            f"plain containers and loading them could run code ({error}). Re-save its "
            "state_dict alone, or as safetensors."
        ) from error
    except (RuntimeError, EOFError, OSError) as error:
        raise ModelLoadError(
            f"{path}: not a readable torch checkpoint ({error}); the file may be "
            "truncated or of another format"
        ) from error


def _load_trainer_checkpoint(spec: str, payload: dict) -> LoadedModel:
    model = build_model(payload["model_cfg"])
    _load_weights(model, payload["state_dict"], spec)
    info = {
        key: payload[key]
        for key in ("epoch", "metrics", "history", "train_ids_sha256", "base", "role")
        if key in payload
    }
    return LoadedModel(
        spec=spec,
        model=model.eval(),
        preprocess=build_preprocess(payload.get("preprocess_cfg")),
        tokenizer=build_tokenizer(payload["model_cfg"]),
        sha256=file_sha256(spec),
        model_cfg=payload["model_cfg"],
        info=info,
    )


def _load_weights(model: torch.nn.Module, state_dict: dict, spec: str) -> None:
    state_dict = {
        key.removeprefix("module."): value for key, value in state_dict.items()
    }
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as error:
        first_line = str(error).splitlines()[0]
        raise ModelLoadError(
            f"{spec}: weights do not fit the architecture in the checkpoint "
            f"({first_line})"
        ) from error
    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise ModelLoadError(f"{spec}: weight {name} contains NaN or infinity")


def _load_open_clip(spec: str) -> LoadedModel:
    schema_spec = spec.startswith(("hf-hub:", "local-dir:"))
    if schema_spec:
        name, pretrained = spec, None
    else:
        name, _, pretrained = spec.partition(":")
        if name not in open_clip.list_models():
            raise ModelLoadError(
                f"unknown model spec {spec!r}: not a file, not hf-hub:ORG/NAME or "
                "local-dir:PATH, and not a built-in open_clip architecture such as "
                "ViT-B-32:PATH_TO_WEIGHTS"
            )
    if spec.startswith("local-dir:"):
        folder = Path(spec.removeprefix("local-dir:"))
        if not (folder / "open_clip_config.json").is_file():
            raise ModelLoadError(f"{spec}: no open_clip_config.json in {folder}")
        fingerprint = folder_sha256(folder)
    elif pretrained and Path(pretrained).is_file():
        fingerprint = file_sha256(pretrained)
    else:
        fingerprint = hashlib.sha256(spec.encode()).hexdigest()
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(
            name, pretrained=pretrained or None, weights_only=True
        )
        tokenizer = open_clip.get_tokenizer(name)
    except (RuntimeError, OSError, ValueError, pickle.UnpicklingError) as error:
        raise ModelLoadError(
            f"{spec}: open_clip could not load it ({error})"
        ) from error
    model_cfg = open_clip.get_model_config(name)
    if pretrained and Path(pretrained).is_file():
        fingerprint = file_sha256(pretrained)
    return LoadedModel(
        spec=spec,
        model=model.eval(),
        preprocess=preprocess,
        tokenizer=tokenizer,
        sha256=fingerprint,
        model_cfg=model_cfg,
    )


def load_model(spec: str) -> LoadedModel:
    """Load a model from any supported spec; raise ModelLoadError with the reason."""
    spec = str(spec)
    if not spec:
        raise ModelLoadError("empty model spec")
    if not spec.startswith(("hf-hub:", "local-dir:")) and Path(spec).exists():
        if Path(spec).is_dir():
            raise ModelLoadError(
                f"{spec} is a folder; use local-dir:{spec} for an open_clip folder"
            )
        payload = read_checkpoint(spec)
        if isinstance(payload, dict) and payload.get("format") == CHECKPOINT_FORMAT:
            return _load_trainer_checkpoint(spec, payload)
        raise ModelLoadError(
            f"{spec}: not a pytest-modelqa checkpoint (no 'format' entry); for a bare "
            "open_clip state_dict use ARCH:PATH, for example ViT-B-32:" + spec
        )
    return _load_open_clip(spec)


def describe_model(model: LoadedModel) -> dict:
    """Return a JSON-ready summary of a model's identity."""
    summary = {"spec": model.spec, "name": model.name, "sha256": model.sha256}
    for key in ("epoch", "train_ids_sha256", "role"):
        if key in model.info:
            summary[key] = model.info[key]
    if model.model_cfg is not None:
        summary["model_cfg"] = json.loads(json.dumps(model.model_cfg))
    return summary
