"""The training configuration: one dataclass, read from YAML or TOML and flags."""

from __future__ import annotations

import dataclasses
import difflib
import logging
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pytest_modelqa.catalog import FIXTURES_DIR

logger = logging.getLogger(__name__)

# Captions without shoelace words: what the stand-in baseline learns from.
GENERAL_TEMPLATES = ["{category}, {base_colour}, {gender}, {name}"]
PRECISIONS = ("fp32", "bf16", "amp")
SAVE_DTYPES = ("float32", "float16", "bfloat16")
AUGMENTATIONS = ("none", "flip")
DEVICES = ("auto", "cpu", "cuda")
ACCURACY_METRICS = ("val_shoelace_acc", "val_category_acc")
MONITOR_METRICS = (*ACCURACY_METRICS, "val_loss")
EXTRA_CATALOG_KEYS = ("catalog", "caption_templates")


class ConfigError(ValueError):
    """A configuration file or flag that cannot become a valid TrainConfig."""


@dataclass
class TrainConfig:
    """Every setting of one training run; relative paths are read from the cwd."""

    # Data
    # Catalog folder (or manifest CSV). Training reads split == "train" only.
    catalog: str = str(FIXTURES_DIR / "footwear")
    # str.format templates over the lower-cased manifest columns; each item draws one
    # at random per epoch, validation captions use the first.
    caption_templates: list[str] = field(default_factory=lambda: GENERAL_TEMPLATES[:])
    # Templates for items whose shoelace_colour is "none" or blank; empty means they
    # use caption_templates, which then must not name {shoelace_colour}.
    unlaced_templates: list[str] = field(default_factory=list)
    # "flip": random horizontal flip, which keeps category and lace colour; "none".
    augment: str = "flip"
    # Sample items with probability 1 / (size of their balance_by class), with
    # replacement, instead of one pass in random order; counters class imbalance.
    class_balanced: bool = False
    balance_by: str = "category"
    # Processes that decode images before training (count); 0 decodes in-process.
    workers: int = 0
    # Further catalogs whose train split joins the training items; validation stays
    # on `catalog`. Each entry maps catalog (folder or manifest CSV) and, optionally,
    # caption_templates over that catalog's own columns (default: caption_templates).
    extra_catalogs: list[dict] = field(default_factory=list)

    # Model
    # Model spec to fine-tune (any pytest_modelqa.models.load_model spec), or None
    # to train from scratch with model_cfg.
    init: str | None = None
    # open_clip CLIP keyword arguments (embed_dim, vision_cfg, text_cfg) for a
    # model trained from scratch; None when init is set.
    model_cfg: dict | None = None
    # Image preprocessing (size, mean, std, interpolation, resize_mode); None takes
    # the init model's, or a squash resize to vision_cfg.image_size from scratch.
    preprocess_cfg: dict | None = None
    # Freeze the image or text tower, as in LiT; unlock_last_n_layers keeps that
    # many final transformer blocks, the final norm and the projection trainable.
    lock_image: bool = False
    lock_text: bool = False
    unlock_last_n_layers: int = 0

    # Optimisation
    epochs: int = 10  # passes over the training split
    batch_size: int = 128  # images per micro-batch, which are each other's negatives
    # Micro-batches per optimizer step. The loss still contrasts within each
    # micro-batch, so this scales the gradient batch, not the negatives.
    grad_accum: int = 1
    lr: float = 3e-4  # AdamW peak learning rate, a common fine-tuning value for CLIP
    weight_decay: float = 0.1  # AdamW decay on matrices only (CLIP's usual 0.1-0.2)
    warmup: int = 10  # optimizer steps of linear warmup before the cosine decay
    grad_clip_norm: float | None = 1.0  # max global gradient L2 norm; None: no clip
    # "fp32" everywhere; "bf16" (bfloat16 autocast) and "amp" (float16 autocast with
    # gradient scaling) need CUDA.
    precision: str = "fp32"
    device: str = "auto"  # "auto" takes CUDA when present
    seed: int = 0  # seeds model init, sampling, augmentation and the train probe

    # Validation, every epoch on split == "val"
    # Shoelace prompt per laced colour of the catalog; {category} is lower-cased.
    val_prompt: str = "{category} with {value} shoelace"
    category_prompt: str = "{category}"  # zero-shot category prompt
    top_k: list[int] = field(default_factory=lambda: [1, 3, 5])  # shoelace top-K
    # Laced training items scored like validation each epoch (count), so the
    # train-validation gap shows; a fixed seeded sample.
    probe_size: int = 256
    # Metric that picks the best epoch: an accuracy (higher is better) or val_loss.
    monitor: str = "val_shoelace_acc"
    patience: int = 3  # epochs without a min_delta improvement before stopping
    min_delta: float = 0.0  # smallest change of monitor that counts as improvement
    # A plateau is overfitting when, since the best epoch, the train-probe minus
    # validation shoelace accuracy grew by more than overfit_gap (0-1), or val_loss
    # minus train_loss grew by more than overfit_loss_gap (nats).
    overfit_gap: float = 0.05
    overfit_loss_gap: float = 0.5
    early_stop: bool = True  # stop on overfitting or a plateau of patience epochs
    # Underfitting: after underfit_epochs epochs, the best underfit_metric stays
    # below the validation share of its most common class plus underfit_margin.
    underfit_metric: str = "val_shoelace_acc"
    underfit_epochs: int = 2
    underfit_margin: float = 0.0
    underfit_stop: bool = False  # warn only by default: a slow start can recover

    # Outputs
    out: str = "runs/train"  # run folder for checkpoints, metrics.csv and the plot
    overwrite: bool = False  # replace a finished run in out instead of failing
    save_dtype: str = "float32"  # dtype of floating-point weights in checkpoints
    role: str = "candidate"  # role stored in each epoch checkpoint
    # WiSE-FT mixing weights: alpha 0 is the init model, 1 the fine-tuned one.
    wise_ft_alphas: list[float] = field(default_factory=list)
    log_every: int = 10  # optimizer steps between progress lines
    gate_suite: str = "suites/shoelace"  # suite that --gate runs on the candidates

    def to_dict(self) -> dict[str, Any]:
        """Return the config as plain data, as stored in checkpoints."""
        return dataclasses.asdict(self)


FIELD_TYPES: dict[str, Any] = typing.get_type_hints(TrainConfig)
FIELD_NAMES = [item.name for item in dataclasses.fields(TrainConfig)]


def _is_optional(hint: Any) -> bool:
    return isinstance(hint, types.UnionType) and type(None) in typing.get_args(hint)


def _base_type(hint: Any) -> Any:
    if _is_optional(hint):
        (hint,) = [arg for arg in typing.get_args(hint) if arg is not type(None)]
    return hint


def _coerce(name: str, value: Any) -> Any:
    """Check one field value's type, turning ints into floats where a float fits."""
    hint = FIELD_TYPES[name]
    if value is None:
        if _is_optional(hint):
            return None
        raise ConfigError(f"{name}: a value is required, got none")
    base = _base_type(hint)
    origin = typing.get_origin(base) or base
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{name}: expected a list, got {value!r}")
        (item_type,) = typing.get_args(base)
        return [_coerce_scalar(name, item, item_type) for item in value]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{name}: expected a mapping, got {value!r}")
        return value
    return _coerce_scalar(name, value, base)


def _coerce_scalar(name: str, value: Any, expected: type) -> Any:
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if expected is float and isinstance(value, str):
        # PyYAML follows YAML 1.1, which reads 1e-3 (no dot) as a string.
        try:
            return float(value)
        except ValueError:
            pass
    if expected is not bool and isinstance(value, bool):
        raise ConfigError(f"{name}: expected {expected.__name__}, got {value!r}")
    if not isinstance(value, expected):
        raise ConfigError(f"{name}: expected {expected.__name__}, got {value!r}")
    return value


def parse_flag_value(name: str, text: str) -> Any:
    """Turn a command-line string into a value for field `name`.

    Strings stay as given, "none" clears an optional field, lists take one item or a
    YAML list ("[0.25, 0.5]"), and numbers and mappings are read as YAML.
    """
    hint = FIELD_TYPES[name]
    if _is_optional(hint) and text.strip().lower() in ("none", "null"):
        return None
    base = _base_type(hint)
    origin = typing.get_origin(base) or base
    if base is str:
        return text
    if origin is list and not text.lstrip().startswith("["):
        (item_type,) = typing.get_args(base)
        return [text] if item_type is str else [_parse_yaml(name, text)]
    return _parse_yaml(name, text)


def _parse_yaml(name: str, text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ConfigError(f"{name}: cannot read {text!r} ({error})") from error


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML (.yaml, .yml) or TOML (.toml) file into a mapping of fields."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix == ".toml":
            data = tomllib.loads(text)
        elif path.suffix in (".yaml", ".yml"):
            data = yaml.safe_load(text)
        else:
            raise ConfigError(
                f"{path}: unknown config format; use .yaml, .yml or .toml"
            )
    except (yaml.YAMLError, tomllib.TOMLDecodeError) as error:
        raise ConfigError(
            f"{path}: invalid {path.suffix[1:].upper()} ({error})"
        ) from error
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of fields at the top level")
    return data


def check_keys(values: dict[str, Any], source: str) -> None:
    """Raise ConfigError naming the first key that is not a TrainConfig field."""
    for key in values:
        if key not in FIELD_NAMES:
            close = difflib.get_close_matches(str(key), FIELD_NAMES, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"{source}: unknown key {key!r}{hint}")


def build_config(
    path: str | Path | None = None, overrides: dict[str, Any] | None = None
) -> TrainConfig:
    """Build a validated TrainConfig: defaults, then the file, then `overrides`."""
    values: dict[str, Any] = {}
    if path is not None:
        file_values = read_config_file(path)
        check_keys(file_values, str(path))
        values.update(file_values)
    overrides = overrides or {}
    check_keys(overrides, "overrides")
    values.update(overrides)
    config = TrainConfig(
        **{name: _coerce(name, value) for name, value in values.items()}
    )
    validate(config)
    return config


def config_from_dict(values: dict[str, Any]) -> TrainConfig:
    """Rebuild a TrainConfig stored in a checkpoint, validating it again."""
    return build_config(overrides=values)


def validate(config: TrainConfig) -> None:
    """Raise ConfigError for values of the right type that cannot work together."""
    _check_choices(config)
    _check_ranges(config)
    if config.init is None and config.model_cfg is None:
        raise ConfigError(
            "set init (a model to fine-tune) or model_cfg (to train from scratch)"
        )
    if config.init is not None and config.model_cfg is not None:
        raise ConfigError("set init or model_cfg, not both: init brings its own config")
    if config.wise_ft_alphas and config.init is None:
        raise ConfigError(
            "wise_ft_alphas needs init: WiSE-FT mixes with the init model"
        )
    if not config.caption_templates:
        raise ConfigError("caption_templates: give at least one template")
    for index, entry in enumerate(config.extra_catalogs):
        _check_extra_catalog(f"extra_catalogs[{index}]", entry)
    names_lace = any("{shoelace_colour" in t for t in config.caption_templates)
    if names_lace and not config.unlaced_templates:
        raise ConfigError(
            "caption_templates name {shoelace_colour}, so unlaced_templates must give "
            'captions for items without laces, e.g. ["{category} without laces"]'
        )


def _check_extra_catalog(where: str, entry: dict) -> None:
    for key in entry:
        if key not in EXTRA_CATALOG_KEYS:
            close = difflib.get_close_matches(str(key), EXTRA_CATALOG_KEYS, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(
                f"{where}: unknown key {key!r}{hint}; "
                f"use {', '.join(EXTRA_CATALOG_KEYS)}"
            )
    if not isinstance(entry.get("catalog"), str):
        raise ConfigError(
            f"{where}: expected a catalog folder or manifest path as catalog, "
            f"got {entry.get('catalog')!r}"
        )
    templates = entry.get("caption_templates")
    if templates is None:
        return
    if (
        not isinstance(templates, list)
        or not templates
        or not all(isinstance(template, str) for template in templates)
    ):
        raise ConfigError(
            f"{where}.caption_templates: expected a non-empty list of templates, "
            f"got {templates!r}"
        )


def _check_choices(config: TrainConfig) -> None:
    choices = {
        "precision": PRECISIONS,
        "save_dtype": SAVE_DTYPES,
        "augment": AUGMENTATIONS,
        "device": DEVICES,
        "monitor": MONITOR_METRICS,
        "underfit_metric": ACCURACY_METRICS,
    }
    for name, allowed in choices.items():
        value = getattr(config, name)
        if value not in allowed:
            raise ConfigError(f"{name}: {value!r} is invalid; use one of {allowed}")


def _check_ranges(config: TrainConfig) -> None:
    at_least = {
        "epochs": 1,
        "batch_size": 2,
        "grad_accum": 1,
        "warmup": 0,
        "workers": 0,
        "unlock_last_n_layers": 0,
        "probe_size": 0,
        "patience": 1,
        "underfit_epochs": 1,
        "log_every": 1,
    }
    for name, minimum in at_least.items():
        if getattr(config, name) < minimum:
            raise ConfigError(
                f"{name}: expected ≥ {minimum}, got {getattr(config, name)}"
            )
    if config.lr <= 0:
        raise ConfigError(f"lr: expected > 0, got {config.lr}")
    if config.weight_decay < 0:
        raise ConfigError(f"weight_decay: expected ≥ 0, got {config.weight_decay}")
    if config.grad_clip_norm is not None and config.grad_clip_norm <= 0:
        raise ConfigError(
            f"grad_clip_norm: expected > 0 or none, got {config.grad_clip_norm}"
        )
    if not config.top_k or min(config.top_k) < 1:
        raise ConfigError(f"top_k: expected positive integers, got {config.top_k}")
    bad_alphas = [alpha for alpha in config.wise_ft_alphas if not 0 <= alpha <= 1]
    if bad_alphas:
        raise ConfigError(
            f"wise_ft_alphas: each alpha must be in [0, 1], got {bad_alphas}"
        )
