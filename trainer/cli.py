"""The modelqa-train command: parse flags, set up logging, train, optionally gate."""

from __future__ import annotations

import argparse
import logging
import shlex
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tqdm.contrib.logging import logging_redirect_tqdm

from pytest_modelqa.catalog import CatalogError
from pytest_modelqa.models import ModelLoadError
from trainer import distributed
from trainer.config import (
    FIELD_NAMES,
    FIELD_TYPES,
    ConfigError,
    TrainConfig,
    build_config,
    parse_flag_value,
)
from trainer.loop import train

logger = logging.getLogger(__name__)
PROG = "modelqa-train"
DEFAULTS = TrainConfig()
# One line per TrainConfig field; docs/training.md explains each one in full.
FLAG_HELP = {
    "catalog": "catalog folder or manifest CSV; trains on split train",
    "caption_templates": "caption templates over manifest columns, as a YAML list",
    "unlaced_templates": "caption templates for items without laces, as a YAML list",
    "augment": "train-time augmentation: flip or none",
    "class_balanced": "sample items inversely to the size of their class",
    "balance_by": "manifest column whose classes class_balanced evens out",
    "workers": "image-decoding worker processes (count)",
    "extra_catalogs": "further catalogs whose train split joins training, as YAML",
    "init": "model spec to fine-tune, or none to train from scratch",
    "model_cfg": "open_clip CLIP config for training from scratch, as YAML",
    "preprocess_cfg": "image preprocessing config, as YAML; none takes the model's",
    "lock_image": "freeze the image tower",
    "lock_text": "freeze the text tower",
    "unlock_last_n_layers": "transformer blocks left trainable in a locked tower",
    "epochs": "passes over the training split",
    "batch_size": "images per micro-batch",
    "grad_accum": "micro-batches per optimizer step",
    "lr": "peak AdamW learning rate",
    "weight_decay": "AdamW weight decay on weight matrices",
    "warmup": "linear warmup length in optimizer steps, before the cosine decay",
    "grad_clip_norm": "maximum gradient L2 norm, or none",
    "precision": "fp32, or bf16 or amp on CUDA",
    "device": "auto, cpu or cuda",
    "seed": "seed for init, sampling, augmentation and the train probe",
    "val_prompt": "shoelace prompt with {category} and {value}",
    "category_prompt": "category prompt with {category}",
    "top_k": "shoelace top-K accuracies to report, as a YAML list",
    "probe_size": "laced training items scored each epoch for the train-val gap",
    "monitor": "metric that picks the best epoch",
    "patience": "epochs without improvement before a plateau",
    "min_delta": "smallest monitor change that counts as improvement",
    "overfit_gap": "train-val shoelace gap growth that marks overfitting (0-1)",
    "overfit_loss_gap": "val-train loss gap growth that marks overfitting (nats)",
    "early_stop": "stop on a plateau or overfitting",
    "underfit_metric": "accuracy that the underfitting rule watches",
    "underfit_epochs": "epochs before the underfitting rule applies",
    "underfit_margin": "accuracy margin over the most common class share (0-1)",
    "underfit_stop": "stop when underfitting, instead of warning",
    "out": "run folder for checkpoints and records",
    "overwrite": "replace an old run in the run folder",
    "save_dtype": "float dtype of saved weights: float32, float16 or bfloat16",
    "role": "role stored in each epoch checkpoint",
    "wise_ft_alphas": "WiSE-FT mixing weights in [0, 1], as a YAML list",
    "log_every": "optimizer steps between progress lines",
    "gate_suite": "suite folder that --gate runs",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Fine-tune an open_clip model on a catalog and write one "
        "checkpoint per epoch as acceptance-test candidates.",
        argument_default=argparse.SUPPRESS,
    )
    parser.add_argument("--config", metavar="FILE", help="YAML or TOML config file")
    parser.add_argument(
        "--resume",
        metavar="RUN",
        help="continue the run in folder RUN (or its state file)",
    )
    parser.add_argument(
        "--gate",
        action="store_true",
        help="after training, run the acceptance suite on every candidate",
    )
    parser.add_argument(
        "--log-level",
        metavar="LEVEL",
        default="INFO",
        help="logging level (default: INFO)",
    )
    fields = parser.add_argument_group("config fields (override the config file)")
    for name in FIELD_NAMES:
        flag = "--" + name.replace("_", "-")
        default = getattr(DEFAULTS, name)
        text = f"{FLAG_HELP[name]} (default: {default!r})".replace("%", "%%")
        if FIELD_TYPES[name] is bool:
            fields.add_argument(
                flag, dest=name, action=argparse.BooleanOptionalAction, help=text
            )
        else:
            fields.add_argument(flag, dest=name, metavar=name.upper(), help=text)
    return parser


def field_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """Return the config fields given as flags, as typed values."""
    overrides = {}
    for name in FIELD_NAMES:
        if hasattr(args, name):
            value = getattr(args, name)
            overrides[name] = (
                value if isinstance(value, bool) else parse_flag_value(name, value)
            )
    return overrides


def gate_command(candidates: Sequence[Path], suite: str, report: Path) -> list[str]:
    """Return the pytest command line that runs `suite` on every candidate."""
    command = [sys.executable, "-m", "pytest", suite]
    for candidate in candidates:
        command += ["--model", str(candidate)]
    return [*command, "--html", str(report)]


def run_gate(candidates: Sequence[Path], suite: str, run_dir: Path) -> int:
    """Run the acceptance suite as a subprocess and return pytest's exit code."""
    command = gate_command(candidates, suite, run_dir / "report.html")
    logger.info("gate: %s", shlex.join(command))
    # The gate runs as one process, even when this run was started by torchrun.
    env = distributed.single_process_env()
    completed = subprocess.run(command, check=False, env=env)
    logger.info("gate finished with pytest exit code %d", completed.returncode)
    return completed.returncode


def setup_logging(level: str) -> None:
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        raise ConfigError(
            f"--log-level: unknown level {level!r}; use DEBUG, INFO or WARNING"
        )
    logging.basicConfig(
        level=numeric, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s"
    )


def execute(args: argparse.Namespace) -> int:
    """Train or resume as the parsed flags request, and return the exit code."""
    overrides = field_overrides(args)
    if hasattr(args, "resume"):
        given = ["--config"] * hasattr(args, "config") + [
            "--" + name.replace("_", "-") for name in overrides
        ]
        if given:
            raise ConfigError(
                "--resume continues a run with its stored config, so it takes no "
                f"config file or field flags (given: {', '.join(given)})"
            )
        result = train(resume=args.resume)
    else:
        config = build_config(getattr(args, "config", None), overrides)
        result = train(config)
    if not getattr(args, "gate", False) or not distributed.is_main_process():
        return 0
    return run_gate(result.candidates, result.config.gate_suite, result.run_dir)


def main(argv: Sequence[str] | None = None) -> int:
    """Run modelqa-train and return its exit code.

    That is 0, 1 for a failed read or write, 2 for a usage error, 130 when
    interrupted, or the gate's pytest code with --gate.
    """
    args = build_parser().parse_args(argv)
    try:
        setup_logging(args.log_level)
        with logging_redirect_tqdm(), distributed.process_group():
            return execute(args)
    except (ConfigError, CatalogError, ModelLoadError) as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            f"{PROG}: interrupted; continue with --resume RUN_FOLDER", file=sys.stderr
        )
        return 130
    except OSError as error:
        # Checkpoints are written atomically, so a full disk or a lost folder leaves
        # every file of the earlier epochs whole.
        print(
            f"{PROG}: error: {error}. Files of the epochs saved before it are intact; "
            "fix the cause, then continue with --resume RUN_FOLDER",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
