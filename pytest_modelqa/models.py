"""Model loading for every supported spec, safely, with fingerprints and preprocessing.

A spec names a model in one of these forms (docs/checkpoints.md has the details):

- ``PATH`` to a file: a checkpoint written by the bundled trainer (see
  `save_checkpoint`), or an open_clip_train ``epoch_N.pt`` or bare state_dict
  (``.pt``, ``.bin``, ``.pth``, ``.safetensors``), which need ``arch``;
- ``PATH`` to a folder: an open_clip folder (``open_clip_config.json``) or a Hugging
  Face transformers CLIP folder (``config.json`` with ``model_type`` ``clip``);
- ``local-dir:PATH``: a folder, as above;
- ``hf:PATH``: a transformers CLIP folder, converted to open_clip;
- ``hf-hub:ORG/NAME``: a Hugging Face hub repository in either format, read from the
  Hugging Face cache (and downloaded into it unless ``HF_HUB_OFFLINE`` is set);
- ``ARCH:WEIGHTS``: an open_clip architecture (a built-in or registered model name,
  or a JSON model config file) with a weights file or one of open_clip's pretrained
  tags.

Loading never unpickles arbitrary objects: torch files are read with
``torch.load(weights_only=True)``, safetensors files hold tensors alone, TorchScript
archives are rejected, and every weight is checked to be finite.
"""

from __future__ import annotations

import copy
import hashlib
import inspect
import json
import os
import pickle
import struct
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import open_clip
import safetensors
import safetensors.torch
import torch

from pytest_modelqa.errors import ModelLoadError, ModelLoadWarning
from pytest_modelqa.transformers_clip import (
    TRANSFORMERS_WEIGHT_FILES,
    open_clip_config_from_transformers,
    open_clip_state_dict_from_transformers,
)

CHECKPOINT_FORMAT = "pytest-modelqa-checkpoint"
CHECKPOINT_VERSION = 1
DEFAULT_PREPROCESS = {
    "size": 224,
    "mean": list(open_clip.OPENAI_DATASET_MEAN),
    "std": list(open_clip.OPENAI_DATASET_STD),
    "interpolation": "bicubic",
    "resize_mode": "shortest",
}

HF_HUB_PREFIX = "hf-hub:"
LOCAL_DIR_PREFIX = "local-dir:"
TRANSFORMERS_PREFIX = "hf:"

# Weight file names of an open_clip folder or hub repository, most preferred first:
# open_clip 3.3 writes open_clip_model.safetensors and open_clip_pytorch_model.bin.
OPEN_CLIP_WEIGHT_NAMES = (
    "open_clip_model.safetensors",
    "open_clip_pytorch_model.safetensors",
    "open_clip_pytorch_model.bin",
    "open_clip_pytorch_model.pth",
    "model.safetensors",
    "pytorch_model.bin",
    "pytorch_model.pth",
    "model.pth",
)
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt")


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
    preprocess_cfg: dict | None = None

    @property
    def name(self) -> str:
        """Return a short display name: the file stem or the spec itself."""
        if self.spec.startswith((HF_HUB_PREFIX, LOCAL_DIR_PREFIX)):
            return self.spec.split(":", 1)[1].rstrip("/").split("/")[-1]
        return (
            Path(self.spec.split(":", 1)[-1]).stem
            if ":" in self.spec
            else Path(self.spec).stem
        )


# --- Fingerprints -------------------------------------------------------------------


def file_sha256(path: str | Path, *, chunk_size: int = 1 << 20) -> str:
    """Hash a file's content; symbolic links are followed."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def files_sha256(files: dict[str, Path]) -> str:
    """Hash named files by name and content, in name order, so the order read is moot.

    Two folders holding the same files under the same names get the same hash,
    wherever they are on disk.
    """
    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(name.encode() + b"\0")
        digest.update(file_sha256(files[name]).encode() + b"\0")
    return digest.hexdigest()


def folder_sha256(path: Path) -> str:
    """Hash every regular file of a folder by relative path and content.

    Hidden files and folders (a name starting with a dot, such as ``.git``) are left
    out, because they change without the model changing.
    """
    path = Path(path)
    files = {
        child.relative_to(path).as_posix(): child
        for child in path.rglob("*")
        if child.is_file()
        and not any(part.startswith(".") for part in child.relative_to(path).parts)
    }
    return files_sha256(files)


# --- Building open_clip models, preprocessing and tokenizers ------------------------


def build_model(model_cfg: dict) -> torch.nn.Module:
    """Instantiate an open_clip model from its model config, with random weights.

    No tower weights are downloaded: timm and Hugging Face towers start random too.
    Raises what open_clip raises for an invalid config (TypeError, ValueError, ...).
    """
    cfg = copy.deepcopy(model_cfg)
    vision_cfg = cfg.get("vision_cfg") or {}
    text_cfg = cfg.get("text_cfg") or {}
    if "timm_model_name" in vision_cfg:
        vision_cfg["timm_model_pretrained"] = False
    if "hf_model_name" in text_cfg:
        text_cfg["hf_model_pretrained"] = False
    custom_text = cfg.pop("custom_text", False) or "hf_model_name" in text_cfg
    if custom_text and "multimodal_cfg" in cfg:
        return open_clip.CoCa(**cfg)
    if custom_text:
        return open_clip.CustomTextCLIP(**cfg)
    return open_clip.CLIP(**cfg)


def build_preprocess(preprocess_cfg: dict | None, *, image_size: Any = None):
    """Build the inference image transform; `image_size` sets the default size."""
    defaults = dict(DEFAULT_PREPROCESS)
    if image_size is not None:
        defaults["size"] = image_size
    cfg = {**defaults, **(preprocess_cfg or {})}
    return open_clip.image_transform(
        cfg["size"],
        is_train=False,
        mean=tuple(cfg["mean"]),
        std=tuple(cfg["std"]),
        resize_mode=cfg["resize_mode"],
        interpolation=cfg["interpolation"],
        fill_color=cfg.get("fill_color", 0),
    )


def build_tokenizer(
    model_cfg: dict, *, name: str | None = None, folder: Path | None = None
):
    """Build the tokenizer of a model config.

    `name` is an open_clip model name whose tokenizer open_clip itself chooses, as
    the SigLIP models pick theirs by name. `folder` contains the files of a Hugging
    Face tokenizer named by ``text_cfg.hf_tokenizer_name``.
    """
    if name is not None and name in open_clip.list_models():
        return open_clip.get_tokenizer(name)
    text_cfg = model_cfg.get("text_cfg", {})
    context_length = text_cfg.get("context_length", 77)
    kwargs = text_cfg.get("tokenizer_kwargs") or {}
    hf_tokenizer = text_cfg.get("hf_tokenizer_name")
    if hf_tokenizer:
        return open_clip.tokenizer.HFTokenizer(
            str(folder) if folder is not None else hf_tokenizer,
            context_length=context_length,
            tokenizer_mode=text_cfg.get("tokenizer_mode"),
            **kwargs,
        )
    return open_clip.SimpleTokenizer(context_length=context_length, **kwargs)


def _image_size(model_cfg: dict) -> Any:
    return model_cfg.get("vision_cfg", {}).get("image_size", 224)


def _with_activation(model_cfg: dict) -> dict:
    """Return a copy of a model config that states its activation explicitly."""
    cfg = copy.deepcopy(model_cfg)
    cfg["quick_gelu"] = bool(cfg.get("quick_gelu", False))
    return cfg


# --- Reading files safely -----------------------------------------------------------

_ZIP_MAGIC = b"PK\x03\x04"


def read_checkpoint(path: str | Path) -> Any:
    """Read a torch or safetensors file without executing any code stored in it.

    Returns what the file holds: for safetensors a dict of tensors, for torch files
    the saved object (dicts, lists, tensors, numbers and strings only). Raises
    ModelLoadError naming the file and the reason: missing, empty, truncated, of
    another format, a TorchScript archive, or holding other Python objects.
    """
    path = Path(path)
    if not path.exists():
        raise ModelLoadError(f"checkpoint not found: {path}")
    if not path.is_file():
        raise ModelLoadError(f"checkpoint is not a file: {path}")
    size = path.stat().st_size
    if size == 0:
        raise ModelLoadError(f"checkpoint is empty (0 bytes): {path}")
    with open(path, "rb") as handle:
        head = handle.read(16)
    if path.suffix == ".safetensors" or _looks_like_safetensors(head, size):
        return _read_safetensors(path)
    if head.startswith(_ZIP_MAGIC):
        _check_torch_zip(path)
    elif not _looks_like_pickle(head):
        raise ModelLoadError(_not_a_checkpoint_message(path, head))
    return _torch_load(path)


def _looks_like_safetensors(head: bytes, size: int) -> bool:
    # A safetensors file opens with the length of its JSON header (little-endian
    # u64), then the header itself.
    if len(head) < 9:
        return False
    (header_length,) = struct.unpack("<Q", head[:8])
    return head[8:9] == b"{" and header_length <= size - 8


def _looks_like_pickle(head: bytes) -> bool:
    # torch.save's legacy format is a pickle of protocol 2; protocols 2 to 5 open
    # with the PROTO opcode 0x80.
    return len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5


def _not_a_checkpoint_message(path: Path, head: bytes) -> str:
    message = (
        f"{path}: not a checkpoint: expected a torch checkpoint (zip or pickle) or "
        f"a safetensors file, but the file starts with {head[:8]!r}"
    )
    if head.lstrip().startswith(b"{"):
        message += (
            ". It looks like JSON: a JSON model config goes before the weights, as "
            "CONFIG.json:WEIGHTS, or in arch"
        )
    return message


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return safetensors.torch.load_file(path, device="cpu")
    except (safetensors.SafetensorError, OSError) as error:
        raise ModelLoadError(
            f"{path}: not a readable safetensors file ({error}); the file may be "
            "truncated or of another format"
        ) from error


def _check_torch_zip(path: Path) -> None:
    """Reject zip files that are damaged, TorchScript, or not torch checkpoints."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except zipfile.BadZipFile as error:
        raise ModelLoadError(
            f"{path}: checkpoint is truncated or damaged: its zip archive is "
            f"unreadable ({error})"
        ) from error
    # torch.load hands TorchScript archives (marked by constants.pkl) to
    # torch.jit.load, which runs the code stored in them.
    if any(name.rsplit("/", 1)[-1] == "constants.pkl" for name in names):
        raise ModelLoadError(
            f"{path}: a TorchScript archive, which loading would have to execute, so "
            "it is rejected. Load the original weights instead; for OpenAI's CLIP "
            "files use open_clip's pretrained tag, such as ViT-B-32-quickgelu:openai"
        )
    if not any(name.rsplit("/", 1)[-1] == "data.pkl" for name in names):
        raise ModelLoadError(
            f"{path}: not a checkpoint: a zip archive without the data.pkl of a torch "
            "checkpoint"
        )


def _torch_load(path: Path) -> Any:
    try:
        with warnings.catch_warnings():
            # torch warns before rejecting pickles of protocols other than 2.
            warnings.filterwarnings(
                "ignore", message="Detected pickle protocol", category=UserWarning
            )
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if "Weights only load failed" not in str(error):
            raise ModelLoadError(_unreadable_message(path, error)) from error
        raise ModelLoadError(
            f"{path}: rejected, because it contains Python objects other than "
            "tensors and plain containers, and unpickling them could run code "
            f"(torch.load reported {_unpickler_reason(error)!r}). If you trust the "
            "file, re-save its "
            "state_dict alone, with torch.save(model.state_dict(), PATH) or as "
            "safetensors"
        ) from error
    except (RuntimeError, EOFError, OSError, KeyError, ValueError, IndexError) as error:
        raise ModelLoadError(_unreadable_message(path, error)) from error


def _unreadable_message(path: Path, error: Exception) -> str:
    first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return (
        f"{path}: not a readable torch checkpoint ({type(error).__name__}: "
        f"{first_line}); the file may be truncated or of another format"
    )


def _unpickler_reason(error: Exception) -> str:
    """Return the line of torch's message that names the rejected object."""
    text = str(error)
    if "WeightsUnpickler error:" not in text:
        return _first_line(error)
    reason = text.split("WeightsUnpickler error:", 1)[1]
    reason = reason.split("Check the documentation")[0]
    reason = reason.split(" was not an allowed global")[0]
    return " ".join(reason.split())


def _state_dict_of(payload: Any, path: Path) -> tuple[dict, dict]:
    """Return the state_dict in a file's payload and what else is known of it.

    Accepts a bare state_dict or a dict with a ``state_dict`` entry (open_clip_train
    writes ``epoch``, ``name``, ``state_dict`` and ``optimizer``).
    """
    info: dict = {}
    if isinstance(payload, dict) and isinstance(payload.get("state_dict"), dict):
        state_dict = payload["state_dict"]
        info["format"] = "open_clip_train" if "epoch" in payload else "state_dict"
        info.update({key: payload[key] for key in ("epoch", "name") if key in payload})
    elif isinstance(payload, dict) and payload:
        state_dict = payload
        info["format"] = "state_dict"
    else:
        raise ModelLoadError(
            f"{path}: not a model checkpoint: it contains {_describe_object(payload)}, "
            "but a state_dict (a dict of tensors) or a dict with a 'state_dict' entry "
            "was expected"
        )
    for key, value in state_dict.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise ModelLoadError(
                f"{path}: not a model checkpoint: entry {key!r} of its state_dict is "
                f"{_describe_object(value)}, not a tensor"
            )
    _check_finite(state_dict, path)
    return state_dict, info


def _describe_object(value: Any) -> str:
    if isinstance(value, dict):
        keys = ", ".join(repr(key) for key in list(value)[:5])
        return f"a dict with keys {keys}" if value else "an empty dict"
    return f"a {type(value).__name__}"


def _check_finite(state_dict: dict[str, torch.Tensor], source: Path | str) -> None:
    for name, tensor in state_dict.items():
        if tensor.is_floating_point() or tensor.is_complex():
            if torch.isfinite(tensor).all():
                continue
            bad = int((~torch.isfinite(tensor)).sum())
            raise ModelLoadError(
                f"{source}: weight {name} contains NaN or infinity ({bad} of "
                f"{tensor.numel()} values)"
            )


def _read_state_dict(path: Path) -> tuple[dict, dict]:
    return _state_dict_of(read_checkpoint(path), path)


# --- Trainer checkpoints ------------------------------------------------------------


def save_checkpoint(path: str | Path, payload: dict) -> Path:
    """Write a trainer checkpoint atomically: a crash mid-write keeps the old file.

    `payload` needs ``model_cfg`` and ``state_dict``; it may add ``preprocess_cfg``,
    ``epoch``, ``metrics``, ``history``, ``train_ids_sha256`` and any other entries
    made of tensors, numbers, strings, lists and dicts, so that
    ``torch.load(weights_only=True)`` can read the file back. The saved model_cfg
    always states ``quick_gelu``, so the activation is never left to a default.
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
        "model_cfg": _with_activation(payload["model_cfg"]),
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


_TRAINER_INFO_KEYS = ("epoch", "metrics", "history", "train_ids_sha256", "base", "role")


def _load_trainer_checkpoint(spec: str, path: Path, payload: dict) -> LoadedModel:
    version = payload.get("format_version", CHECKPOINT_VERSION)
    if not isinstance(version, int) or version > CHECKPOINT_VERSION:
        raise ModelLoadError(
            f"{path}: checkpoint format version {version!r} is newer than this "
            f"pytest-modelqa reads ({CHECKPOINT_VERSION}); upgrade pytest-modelqa"
        )
    model_cfg = payload.get("model_cfg")
    _check_model_cfg(model_cfg, f"{path}: model_cfg")
    state_dict, _ = _state_dict_of(payload, path)

    base = payload.get("base")
    base_spec = base.get("spec") if isinstance(base, dict) else base
    if isinstance(base_spec, str):
        _warn_on_activation_mismatch(
            base_spec, model_cfg, what=f"{path} (fine-tuned from {base_spec})"
        )

    arch = _Arch(
        label="the model config in the checkpoint",
        model_cfg=model_cfg,
        preprocess_cfg=payload.get("preprocess_cfg") or {},
    )
    info = {"format": CHECKPOINT_FORMAT}
    info.update({key: payload[key] for key in _TRAINER_INFO_KEYS if key in payload})
    return _assemble(spec, arch, state_dict, sha256=file_sha256(path), info=info)


# --- Architectures ------------------------------------------------------------------


@dataclass
class _Arch:
    """An open_clip architecture to put weights into, and its preprocessing."""

    label: str  # how messages name it
    model_cfg: dict
    preprocess_cfg: dict = field(default_factory=dict)
    name: str | None = None  # a built-in or registered open_clip model name


def _check_model_cfg(model_cfg: Any, where: str) -> None:
    if not isinstance(model_cfg, dict):
        raise ModelLoadError(f"{where} is {_describe_object(model_cfg)}, not a dict")
    missing = [
        key for key in ("embed_dim", "vision_cfg", "text_cfg") if key not in model_cfg
    ]
    if missing:
        raise ModelLoadError(
            f"{where} is not an open_clip model config: it lacks {', '.join(missing)}"
        )


def _resolve_arch(arch: str | Path | dict) -> _Arch:
    """Resolve an architecture given as a model name, a JSON file or a config dict.

    A JSON file or dict contains either a model config (``embed_dim``, ``vision_cfg``,
    ``text_cfg``) or an open_clip_config.json body (``model_cfg`` and optionally
    ``preprocess_cfg``).
    """
    if isinstance(arch, dict):
        return _arch_from_config(arch, "the model config passed as arch")
    arch = str(arch)
    if arch in open_clip.list_models():
        return _Arch(
            label=f"architecture {arch}",
            model_cfg=open_clip.get_model_config(arch),
            name=arch,
        )
    path = Path(arch)
    if path.suffix == ".json" and path.is_file():
        try:
            config = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ModelLoadError(
                f"{path}: not a readable JSON file ({error})"
            ) from error
        return _arch_from_config(config, f"the model config in {path}")
    raise ModelLoadError(
        f"unknown architecture {arch!r}: not a built-in or registered open_clip model "
        "name (see open_clip.list_models(); open_clip.add_model_config registers "
        "more) nor a JSON model config file"
    )


def _arch_from_config(config: Any, label: str) -> _Arch:
    if isinstance(config, dict) and "model_cfg" in config:
        model_cfg = config["model_cfg"]
        preprocess_cfg = config.get("preprocess_cfg") or {}
    else:
        model_cfg, preprocess_cfg = config, {}
    _check_model_cfg(model_cfg, label)
    return _Arch(label=label, model_cfg=model_cfg, preprocess_cfg=preprocess_cfg)


def _split_arch_spec(spec: str) -> tuple[str, str] | None:
    """Split ``ARCH:WEIGHTS`` at the first colon after a known architecture."""
    start = 0
    while (colon := spec.find(":", start)) != -1:
        arch, weights = spec[:colon], spec[colon + 1 :]
        if arch in open_clip.list_models() or (
            arch.endswith(".json") and Path(arch).is_file()
        ):
            return arch, weights
        start = colon + 1
    return None


def _tag_quick_gelu(spec: str) -> tuple[str, str, bool] | None:
    """Return (arch, tag, quick_gelu of the tag) for an ``ARCH:TAG`` spec."""
    arch, _, tag = spec.partition(":")
    tag_cfg = open_clip.get_pretrained_cfg(arch, tag) if tag else {}
    if not tag_cfg:
        return None
    return arch, tag, bool(tag_cfg.get("quick_gelu", False))


def _pretrained_tag_of_repo(repo_id: str) -> str | None:
    """Return ``ARCH:TAG`` of the open_clip pretrained tag stored in a hub repository.

    open_clip 3.3 names several tags' weights by one repository (ViT-B-32:openai and
    ViT-B-32-quickgelu:openai share timm/vit_base_patch32_clip_224.openai), always
    with the same quick_gelu, so the first match serves.
    """
    expected = repo_id.lower()
    for arch, tag in open_clip.list_pretrained():
        hub = open_clip.get_pretrained_cfg(arch, tag).get("hf_hub", "")
        if "/".join(hub.strip("/").split("/")[:2]).lower() == expected:
            return f"{arch}:{tag}"
    return None


def _warn_on_activation_mismatch(spec: str, model_cfg: dict, *, what: str) -> None:
    """Warn when a model's activation differs from the one its pretrained tag used.

    open_clip's pretrained configs mark weights trained with QuickGELU (OpenAI's and
    some others) with ``quick_gelu``. Running them with GELU, or the reverse, loads
    without error but shifts every embedding.
    """
    found = _tag_quick_gelu(spec)
    if found is None:
        return
    arch, tag, tag_quick_gelu = found
    model_quick_gelu = bool(model_cfg.get("quick_gelu", False))
    if model_quick_gelu == tag_quick_gelu:
        return
    message = (
        f"{what}: activation mismatch: the model uses "
        f"{_activation_name(model_quick_gelu)} (quick_gelu={model_quick_gelu}), but "
        f"pretrained tag {tag!r} of {arch} was trained with "
        f"{_activation_name(tag_quick_gelu)} (quick_gelu={tag_quick_gelu}), so its "
        "embeddings will differ from the original model's"
    )
    suggestion = _matching_arch(arch, tag_quick_gelu)
    if suggestion is not None:
        message += f"; use {suggestion}:{tag}"
    warnings.warn(message, ModelLoadWarning, stacklevel=_caller_stacklevel())


def _caller_stacklevel() -> int:
    """Return the stacklevel that points a warning at the first caller outside here."""
    level, frame = 1, inspect.currentframe()
    while frame is not None and frame.f_globals.get("__name__") == __name__:
        level, frame = level + 1, frame.f_back
    return level - 1


def _activation_name(quick_gelu: bool) -> str:
    return "QuickGELU" if quick_gelu else "GELU"


def _matching_arch(arch: str, quick_gelu: bool) -> str | None:
    base = arch.removesuffix("-quickgelu")
    candidate = f"{base}-quickgelu" if quick_gelu else base
    return candidate if candidate in open_clip.list_models() else None


# --- Putting weights into a model ---------------------------------------------------


def _assemble(
    spec: str,
    arch: _Arch,
    state_dict: dict[str, torch.Tensor],
    *,
    sha256: str,
    info: dict,
    tokenizer_folder: Path | None = None,
) -> LoadedModel:
    """Build the architecture, load the weights into it and wrap the result."""
    try:
        model = build_model(arch.model_cfg)
    except (TypeError, ValueError, KeyError, RuntimeError, OSError) as error:
        raise ModelLoadError(
            f"{spec}: open_clip cannot build {arch.label} ({error})"
        ) from error
    _load_weights(model, state_dict, spec, arch_label=arch.label)
    preprocess_cfg = {
        **DEFAULT_PREPROCESS,
        "size": _image_size(arch.model_cfg),
        **arch.preprocess_cfg,
    }
    open_clip.set_model_preprocess_cfg(model, preprocess_cfg)
    try:
        tokenizer = build_tokenizer(
            arch.model_cfg, name=arch.name, folder=tokenizer_folder
        )
    except (OSError, ValueError, ImportError, RuntimeError) as error:
        raise ModelLoadError(f"{spec}: cannot build its tokenizer ({error})") from error
    return LoadedModel(
        spec=spec,
        model=model.eval(),
        preprocess=build_preprocess(preprocess_cfg),
        tokenizer=tokenizer,
        sha256=sha256,
        model_cfg=_with_activation(arch.model_cfg),
        info=info,
        preprocess_cfg=preprocess_cfg,
    )


def _load_weights(
    model: torch.nn.Module,
    state_dict: dict[str, torch.Tensor],
    spec: str,
    *,
    arch_label: str = "the architecture",
) -> None:
    """Load a state_dict strictly, or raise ModelLoadError saying what does not fit."""
    state_dict = {
        key.removeprefix("module."): value for key, value in state_dict.items()
    }
    state_dict = _adapt_state_dict(model, state_dict)
    mismatch = _describe_mismatch(model.state_dict(), state_dict)
    if mismatch:
        raise ModelLoadError(
            f"{spec}: the weights do not fit {arch_label}: {mismatch}. Check that the "
            "architecture is the one the weights were trained with"
        )
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as error:
        first_line = str(error).splitlines()[0]
        raise ModelLoadError(
            f"{spec}: the weights do not fit {arch_label} ({first_line})"
        ) from error


def _adapt_state_dict(model: torch.nn.Module, state_dict: dict) -> dict:
    """Apply the same layout fixes open_clip 3.3's load_checkpoint applies."""
    expected = model.state_dict()
    # State dicts saved before CustomTextCLIP kept the text tower at the top level.
    if "text_projection" in state_dict and "text_projection" not in expected:
        state_dict = open_clip.model.convert_to_custom_text_state_dict(state_dict)
    # logit_scale and logit_bias were saved as 0-d or 1-d tensors over time.
    for key in ("logit_scale", "logit_bias"):
        if key in state_dict and key in expected:
            value = state_dict[key]
            if value.shape != expected[key].shape and value.numel() == 1:
                state_dict[key] = value.reshape(expected[key].shape)
    state_dict.pop("text.transformer.embeddings.position_ids", None)
    return state_dict


def _describe_mismatch(expected: dict, given: dict, *, shown: int = 3) -> str:
    def listing(keys: list[str]) -> str:
        more = f", and {len(keys) - shown} more" if len(keys) > shown else ""
        return ", ".join(keys[:shown]) + more

    missing = sorted(set(expected) - set(given))
    unexpected = sorted(set(given) - set(expected))
    reshaped = sorted(
        key
        for key in set(expected) & set(given)
        if tuple(expected[key].shape) != tuple(given[key].shape)
    )
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing ({listing(missing)})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected ({listing(unexpected)})")
    if reshaped:
        shapes = [
            f"{key} is {tuple(given[key].shape)} in the file but "
            f"{tuple(expected[key].shape)} in the model"
            for key in reshaped
        ]
        parts.append(f"{len(reshaped)} of another shape ({listing(shapes)})")
    return "; ".join(parts)


# --- Where folder formats come from: a folder or the Hugging Face cache --------------


class _Folder:
    """A local folder that model files are read from."""

    def __init__(self, root: Path, label: str):
        self.root = root
        self.label = label

    def find(self, filename: str) -> Path | None:
        path = self.root / filename
        return path if path.is_file() else None

    def fallback_weights(self) -> Path | None:
        """Return the one weights file of any name, or None if there is none."""
        found = sorted(
            path
            for path in self.root.iterdir()
            if path.is_file() and path.suffix in WEIGHT_SUFFIXES
        )
        if len(found) > 1:
            names = ", ".join(path.name for path in found)
            raise ModelLoadError(
                f"{self.label}: several weight files ({names}) and none of the "
                f"standard names ({', '.join(OPEN_CLIP_WEIGHT_NAMES)}); keep one"
            )
        return found[0] if found else None

    def describe_missing(self) -> str:
        return f"in {self.root}"


class _HubRepo:
    """A Hugging Face hub repository, read through huggingface_hub's cache."""

    def __init__(self, repo_id: str, label: str):
        self.repo_id = repo_id
        self.label = label
        self.cache_dir = hub_cache_dir()
        self.offline = hub_offline()

    def find(self, filename: str) -> Path | None:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import (
            EntryNotFoundError,
            HfHubHTTPError,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )

        # NOTE: the tests cover only reads from a populated cache in offline mode.
        # Downloads take the same call with local_files_only=False.
        try:
            return Path(
                hf_hub_download(
                    self.repo_id,
                    filename,
                    cache_dir=self.cache_dir,
                    local_files_only=self.offline,
                )
            )
        except EntryNotFoundError:
            # Raised both for a file the repository lacks and for one not cached.
            return None
        except (RepositoryNotFoundError, RevisionNotFoundError) as error:
            raise ModelLoadError(
                f"{self.label}: repository not found on the Hugging Face hub "
                f"({_first_line(error)})"
            ) from error
        except (HfHubHTTPError, OSError, ValueError) as error:
            raise ModelLoadError(
                f"{self.label}: cannot fetch {filename} ({_first_line(error)})"
            ) from error

    def fallback_weights(self) -> Path | None:
        return None

    def describe_missing(self) -> str:
        where = f"in the Hugging Face cache {self.cache_dir}"
        if self.offline:
            where += (
                " (HF_HUB_OFFLINE is set, so nothing was downloaded; fill the cache "
                "with network access once, or point HF_HUB_CACHE at a cache that "
                "contains the repository)"
            )
        return where


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def hub_cache_dir() -> str:
    """Return the Hugging Face hub cache folder, from the environment at call time.

    huggingface_hub 2.4 reads HF_HUB_CACHE and HF_HOME once, on import; reading them
    here lets a process (or a test) set them after that import.
    """
    from huggingface_hub import constants

    if os.environ.get("HF_HUB_CACHE"):
        return os.path.expanduser(os.environ["HF_HUB_CACHE"])
    if os.environ.get("HF_HOME"):
        return os.path.join(os.path.expanduser(os.environ["HF_HOME"]), "hub")
    return constants.HF_HUB_CACHE


def hub_offline() -> bool:
    """Return whether HF_HUB_OFFLINE is set, read from the environment at call time."""
    from huggingface_hub import constants

    value = os.environ.get("HF_HUB_OFFLINE", "")
    return value.upper() in {"1", "ON", "YES", "TRUE"} or constants.HF_HUB_OFFLINE


# --- open_clip folders and hub repositories -----------------------------------------


def _load_open_clip_source(
    spec: str, source: _Folder | _HubRepo, config_path: Path
) -> LoadedModel:
    """Load open_clip_config.json and the weights beside it."""
    config = _read_json(config_path, spec)
    arch = _arch_from_config(config, f"the model config in {config_path.name}")
    if isinstance(source, _HubRepo):
        origin = _pretrained_tag_of_repo(source.repo_id)
        if origin is not None:
            _warn_on_activation_mismatch(
                origin, arch.model_cfg, what=f"{spec} (the weights of {origin})"
            )
    weights = _find_first(source, OPEN_CLIP_WEIGHT_NAMES) or source.fallback_weights()
    if weights is None:
        raise ModelLoadError(
            f"{spec}: open_clip_config.json found but no weights "
            f"({', '.join(OPEN_CLIP_WEIGHT_NAMES[:3])}, ...) "
            f"{source.describe_missing()}"
        )
    state_dict, _ = _read_state_dict(weights)
    files = {"open_clip_config.json": config_path, weights.name: weights}
    folder = config_path.parent
    info = {"format": "open_clip", "files": sorted(files)}
    return _assemble(
        spec,
        arch,
        state_dict,
        sha256=files_sha256(files),
        info=info,
        tokenizer_folder=folder if isinstance(source, _Folder) else None,
    )


def _find_first(source: _Folder | _HubRepo, names: tuple[str, ...]) -> Path | None:
    for name in names:
        found = source.find(name)
        if found is not None:
            return found
    return None


def _load_source(spec: str, source: _Folder | _HubRepo) -> LoadedModel:
    """Load a folder or hub repository in open_clip's or transformers' format."""
    config_path = source.find("open_clip_config.json")
    if config_path is not None:
        return _load_open_clip_source(spec, source, config_path)
    config_path = source.find("config.json")
    if config_path is not None:
        return _load_transformers_source(spec, source, config_path)
    raise ModelLoadError(
        f"{spec}: no model found: neither open_clip_config.json (open_clip format) "
        f"nor config.json (transformers CLIP format) {source.describe_missing()}"
    )


def _folder_source(spec: str, path: Path) -> _Folder:
    if not path.exists():
        raise ModelLoadError(f"{spec}: folder not found: {path}")
    if not path.is_dir():
        raise ModelLoadError(f"{spec}: {path} is a file, not a folder")
    return _Folder(path, spec)


def _hub_repo_id(spec: str) -> str:
    repo_id = spec.removeprefix(HF_HUB_PREFIX).strip("/")
    parts = repo_id.split("/")
    if len(parts) != 2 or not all(parts):
        raise ModelLoadError(
            f"{spec}: a Hugging Face hub spec is hf-hub:ORG/NAME, such as "
            "hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K"
        )
    return repo_id


# --- Hugging Face transformers CLIP, converted to open_clip -------------------------


def _load_transformers_source(
    spec: str, source: _Folder | _HubRepo, config_path: Path
) -> LoadedModel:
    """Load a transformers CLIP checkpoint, converted to open_clip."""
    config = _read_json(config_path, spec)
    model_cfg = open_clip_config_from_transformers(
        config, source=f"{spec}: config.json"
    )
    files = {"config.json": config_path}
    state_dict = _transformers_weights(spec, source, files)
    state_dict = open_clip_state_dict_from_transformers(state_dict, source=spec)
    preprocess_cfg = _transformers_preprocess(spec, source, files, model_cfg)
    tokenizer_file = _check_transformers_vocab(spec, source, model_cfg)
    if tokenizer_file is not None:
        files[tokenizer_file.name] = tokenizer_file
    arch = _Arch(
        label="the architecture in config.json",
        model_cfg=model_cfg,
        preprocess_cfg=preprocess_cfg,
    )
    info = {"format": "transformers-clip", "files": sorted(files)}
    return _assemble(spec, arch, state_dict, sha256=files_sha256(files), info=info)


def _read_json(path: Path, spec: str) -> dict:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ModelLoadError(
            f"{spec}: {path.name} is not readable JSON ({error})"
        ) from error
    if not isinstance(value, dict):
        raise ModelLoadError(
            f"{spec}: {path.name} contains {_describe_object(value)}, not a JSON object"
        )
    return value


def _transformers_weights(
    spec: str, source: _Folder | _HubRepo, files: dict[str, Path]
) -> dict[str, torch.Tensor]:
    """Read model.safetensors or pytorch_model.bin, or the shards an index names."""
    for name in TRANSFORMERS_WEIGHT_FILES:
        path = source.find(name)
        if path is None:
            continue
        files[name] = path
        if not name.endswith(".index.json"):
            return _read_state_dict(path)[0]
        state_dict: dict[str, torch.Tensor] = {}
        for shard in sorted(set(_read_json(path, spec).get("weight_map", {}).values())):
            shard_path = source.find(shard)
            if shard_path is None:
                raise ModelLoadError(
                    f"{spec}: shard {shard} named by {name} not found "
                    f"{source.describe_missing()}"
                )
            files[shard] = shard_path
            state_dict.update(_read_state_dict(shard_path)[0])
        return state_dict
    raise ModelLoadError(
        f"{spec}: config.json found but no weights "
        f"({', '.join(TRANSFORMERS_WEIGHT_FILES)}) {source.describe_missing()}"
    )


# PIL's resampling filter numbers, as preprocessor_config.json stores them.
_PIL_RESAMPLE = {2: "bilinear", 3: "bicubic"}


def _transformers_preprocess(
    spec: str, source: _Folder | _HubRepo, files: dict[str, Path], model_cfg: dict
) -> dict:
    """Read preprocessor_config.json (CLIPImageProcessor) into an open_clip config."""
    preprocess_cfg = {"size": _image_size(model_cfg)}
    path = source.find("preprocessor_config.json")
    if path is None:
        return preprocess_cfg
    files["preprocessor_config.json"] = path
    config = _read_json(path, spec)
    if "image_mean" in config:
        preprocess_cfg["mean"] = list(config["image_mean"])
    if "image_std" in config:
        preprocess_cfg["std"] = list(config["image_std"])
    resample = config.get("resample", 3)
    if resample not in _PIL_RESAMPLE:
        raise ModelLoadError(
            f"{spec}: preprocessor_config.json resample {resample!r} is not bicubic "
            "(3) or bilinear (2), the filters open_clip's transform offers"
        )
    preprocess_cfg["interpolation"] = _PIL_RESAMPLE[resample]
    size = config.get("size")
    if isinstance(size, dict) and "height" in size and not config.get("do_center_crop"):
        preprocess_cfg["resize_mode"] = "squash"
    else:
        preprocess_cfg["resize_mode"] = "shortest"
    return preprocess_cfg


def _check_transformers_vocab(
    spec: str, source: _Folder | _HubRepo, model_cfg: dict
) -> Path | None:
    """Check that open_clip's CLIP tokenizer produces this model's token ids.

    The converted model is used with open_clip's SimpleTokenizer (OpenAI's CLIP
    byte-pair encoding), so the checkpoint's vocabulary, where one is stored, must be
    that one. Returns the vocabulary file compared, if any.
    """
    tokenizer = open_clip.SimpleTokenizer()
    vocab_size = model_cfg["text_cfg"]["vocab_size"]
    if vocab_size < len(tokenizer.encoder):
        raise ModelLoadError(
            f"{spec}: text vocab_size {vocab_size} is smaller than the "
            f"{len(tokenizer.encoder)} tokens of the CLIP tokenizer open_clip uses"
        )
    eos_id = model_cfg["text_cfg"].get("eos_id")
    if eos_id is not None and eos_id != tokenizer.eot_token_id:
        raise ModelLoadError(
            f"{spec}: text eos_token_id {eos_id} is not the CLIP tokenizer's end of "
            f"text token {tokenizer.eot_token_id}, so text pooling would pick another "
            "position"
        )
    path, vocab = _stored_vocab(spec, source)
    if path is None:
        # NOTE: without vocab.json or tokenizer.json the vocabulary is assumed to be
        # CLIP's, unchecked. The merges of a stored vocabulary are not compared.
        return None
    specials = {tokenizer.sot_token_id, tokenizer.eot_token_id}
    differing = [
        token
        for token, index in tokenizer.encoder.items()
        if index not in specials and vocab.get(token) != index
    ]
    if differing or len(vocab) != len(tokenizer.encoder):
        raise ModelLoadError(
            f"{spec}: the vocabulary in {path.name} differs from the CLIP tokenizer "
            f"open_clip uses ({len(vocab)} tokens, {len(differing)} of CLIP's with "
            "another id), so the converted model would get the wrong token ids"
        )
    return path


def _stored_vocab(spec: str, source: _Folder | _HubRepo) -> tuple[Path | None, dict]:
    path = source.find("vocab.json")
    if path is not None:
        return path, _read_json(path, spec)
    path = source.find("tokenizer.json")
    if path is not None:
        vocab = _read_json(path, spec).get("model", {}).get("vocab")
        if isinstance(vocab, dict):
            return path, vocab
    return None, {}


# --- Files with weights but no architecture, and pretrained tags --------------------


def _needs_arch_message(path: Path, info: dict) -> str:
    if info.get("format") == "open_clip_train":
        what = f"an open_clip_train checkpoint (epoch {info.get('epoch')})"
    else:
        what = "a bare state_dict"
    return (
        f"{path}: {what} contains weights but not the architecture they belong to. "
        "Pass --modelqa-arch NAME (load_model(spec, arch=NAME)), where NAME is an "
        "open_clip model name such as ViT-B-32 or a JSON model config file, or "
        f"write the spec as NAME:{path}"
    )


def _load_weights_file(spec: str, path: Path, arch: _Arch) -> LoadedModel:
    state_dict, info = _read_state_dict(path)
    info["arch"] = arch.name or arch.label
    return _assemble(spec, arch, state_dict, sha256=file_sha256(path), info=info)


def _load_pretrained_tag(spec: str, arch: _Arch, tag: str) -> LoadedModel:
    """Load one of open_clip's pretrained tags from the Hugging Face cache."""
    tag_cfg = open_clip.get_pretrained_cfg(arch.name, tag)
    _warn_on_activation_mismatch(f"{arch.name}:{tag}", arch.model_cfg, what=spec)
    # open_clip 3.3 names every tag's weights as hf_hub "ORG/NAME/" (its default
    # file names) or "ORG/NAME/FILE"; it prefers a .safetensors twin of a .bin.
    repo_id, _, filename = tag_cfg["hf_hub"].rstrip("/").partition("/")
    repo_name, _, filename = filename.partition("/")
    repo = _HubRepo(f"{repo_id}/{repo_name}", spec)
    if filename:
        names = (filename.rsplit(".", 1)[0] + ".safetensors", filename)
    else:
        names = OPEN_CLIP_WEIGHT_NAMES[:3]
    weights = _find_first(repo, names)
    if weights is None:
        raise ModelLoadError(
            f"{spec}: the weights of pretrained tag {tag!r} ({', '.join(names)} of "
            f"hf-hub:{repo.repo_id}) were not found {repo.describe_missing()}"
        )
    arch.preprocess_cfg = {
        key: list(tag_cfg[key]) if key in ("mean", "std") else tag_cfg[key]
        for key in ("mean", "std", "interpolation", "resize_mode")
        if key in tag_cfg
    }
    state_dict, _ = _read_state_dict(weights)
    info = {"format": "open_clip-pretrained", "arch": arch.name, "tag": tag}
    return _assemble(spec, arch, state_dict, sha256=file_sha256(weights), info=info)


def _load_arch_spec(spec: str, arch_name: str, weights: str) -> LoadedModel:
    arch = _resolve_arch(arch_name)
    _check_arch_weights(spec, arch, weights)
    if Path(weights).is_file():
        return _load_weights_file(spec, Path(weights), arch)
    return _load_pretrained_tag(spec, arch, weights)


def _check_arch_weights(spec: str, arch: _Arch, weights: str) -> None:
    """Raise unless WEIGHTS is a file or a pretrained tag of ARCH."""
    if Path(weights).is_file():
        return
    if arch.name is not None and open_clip.get_pretrained_cfg(arch.name, weights):
        return
    message = f"{spec}: weights file not found: {weights}"
    tags = open_clip.list_pretrained_tags_by_model(arch.name) if arch.name else []
    if tags:
        message += f", and it is not a pretrained tag of {arch.name} ({_some(tags)})"
    raise ModelLoadError(message)


# --- Entry points -------------------------------------------------------------------


def load_model(
    spec: str | Path, *, arch: str | Path | dict | None = None
) -> LoadedModel:
    """Load a model from any supported spec; raise ModelLoadError with the reason.

    `arch` is the open_clip architecture (a model name, a JSON model config file, or
    a model config dict) for files that hold weights alone: open_clip_train
    ``epoch_N.pt`` files and bare state_dicts. Formats that carry their own config
    ignore it, and the ARCH of an ``ARCH:WEIGHTS`` spec takes precedence.
    May warn with ModelLoadWarning when the activation and the weights disagree.
    """
    spec = str(spec)
    if not spec.strip():
        raise ModelLoadError("empty model spec")
    if spec.startswith(HF_HUB_PREFIX):
        return _load_source(spec, _HubRepo(_hub_repo_id(spec), spec))
    if spec.startswith(LOCAL_DIR_PREFIX):
        return _load_source(
            spec, _folder_source(spec, Path(spec[len(LOCAL_DIR_PREFIX) :]))
        )
    if spec.startswith(TRANSFORMERS_PREFIX):
        return _load_transformers_folder(spec, Path(spec[len(TRANSFORMERS_PREFIX) :]))
    path = Path(spec)
    if path.is_dir():
        return _load_source(spec, _Folder(path, spec))
    if path.is_file():
        return _load_file(spec, path, arch)
    if (parts := _split_arch_spec(spec)) is not None:
        return _load_arch_spec(spec, *parts)
    raise ModelLoadError(_unresolved_message(spec))


def check_spec(spec: str | Path) -> None:
    """Check that a spec can name a model, without reading weights or the network.

    Raises ModelLoadError for an empty spec, a missing file or folder, a malformed
    hub id, an unknown architecture, or weights that are neither a file nor a
    pretrained tag. Whether the files load, and whether a hub repository exists, only
    load_model finds out.
    """
    spec = str(spec)
    if not spec.strip():
        raise ModelLoadError("empty model spec")
    if spec.startswith(HF_HUB_PREFIX):
        _hub_repo_id(spec)
    elif spec.startswith(LOCAL_DIR_PREFIX):
        _folder_source(spec, Path(spec[len(LOCAL_DIR_PREFIX) :]))
    elif spec.startswith(TRANSFORMERS_PREFIX):
        _folder_source(spec, Path(spec[len(TRANSFORMERS_PREFIX) :]))
    elif not Path(spec).exists():
        parts = _split_arch_spec(spec)
        if parts is None:
            raise ModelLoadError(_unresolved_message(spec))
        _check_arch_weights(spec, _resolve_arch(parts[0]), parts[1])


def _load_file(spec: str, path: Path, arch: str | Path | dict | None) -> LoadedModel:
    payload = read_checkpoint(path)
    if isinstance(payload, dict) and payload.get("format") == CHECKPOINT_FORMAT:
        return _load_trainer_checkpoint(spec, path, payload)
    state_dict, info = _state_dict_of(payload, path)
    if arch is None:
        raise ModelLoadError(_needs_arch_message(path, info))
    resolved = _resolve_arch(arch)
    info["arch"] = resolved.name or resolved.label
    return _assemble(spec, resolved, state_dict, sha256=file_sha256(path), info=info)


def _load_transformers_folder(spec: str, path: Path) -> LoadedModel:
    source = _folder_source(spec, path)
    config_path = source.find("config.json")
    if config_path is None:
        raise ModelLoadError(
            f"{spec}: no config.json in {path}; hf:PATH names a folder saved by "
            "transformers' CLIPModel.save_pretrained"
        )
    return _load_transformers_source(spec, source, config_path)


def _some(names: list[str], shown: int = 5) -> str:
    more = f", and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


def _unresolved_message(spec: str) -> str:
    if spec in open_clip.list_models():
        tags = open_clip.list_pretrained_tags_by_model(spec)
        return (
            f"{spec} names an open_clip architecture but no weights; write "
            f"{spec}:TAG (tags: {_some(tags) or 'none'}) or {spec}:PATH"
        )
    if ":" not in spec:
        return f"checkpoint not found: {spec}"
    arch = spec.split(":", 1)[0]
    return (
        f"unknown model spec {spec!r}: {arch!r} is not a built-in or registered "
        "open_clip architecture nor a JSON model config file, and the spec is not a "
        "file, a folder, hf-hub:ORG/NAME, local-dir:PATH or hf:PATH"
    )


def describe_model(model: LoadedModel) -> dict:
    """Return a JSON-ready summary of a model's identity."""
    summary = {"spec": model.spec, "name": model.name, "sha256": model.sha256}
    for key in ("epoch", "train_ids_sha256", "role"):
        if key in model.info:
            summary[key] = model.info[key]
    if model.model_cfg is not None:
        summary["model_cfg"] = json.loads(json.dumps(model.model_cfg))
    return summary
