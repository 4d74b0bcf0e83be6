"""Export a trainer checkpoint with another role and weight dtype, e.g. a baseline.

    python -m trainer.export runs/standin fixtures/baseline/standin.pt \
        --dtype float16 --role baseline

SRC is a checkpoint file, or a run folder whose summary.json names the best epoch.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from pytest_modelqa.models import (
    CHECKPOINT_FORMAT,
    ModelLoadError,
    file_sha256,
    read_checkpoint,
    save_checkpoint,
)
from trainer import checkpoints, records
from trainer.config import SAVE_DTYPES

logger = logging.getLogger(__name__)


def resolve_source(source: Path) -> Path:
    """Return the checkpoint file that SRC names: itself, or its run's best epoch."""
    if not source.is_dir():
        return source
    summary_path = source / "summary.json"
    if not summary_path.is_file():
        raise ModelLoadError(f"{source}: no summary.json; the run has not finished")
    best = records.read_summary(summary_path)["best_epoch"]
    return checkpoints.epoch_path(source, best)


def export_checkpoint(source: Path, dest: Path, *, dtype: str, role: str) -> Path:
    """Copy a trainer checkpoint to `dest` with its weights cast and `role` set."""
    path = resolve_source(source)
    payload = read_checkpoint(path)
    if payload.get("format") != CHECKPOINT_FORMAT:
        raise ModelLoadError(f"{path}: not a pytest-modelqa trainer checkpoint")
    body = {
        key: value
        for key, value in payload.items()
        if key not in ("format", "format_version")
    }
    body["state_dict"] = checkpoints.cast_state_dict(payload["state_dict"], dtype)
    body["role"] = role
    body["exported_from"] = {"file": path.name, "sha256": file_sha256(path)}
    written = save_checkpoint(dest, body)
    logger.info("exported %s to %s (%s, role %s)", path, written, dtype, role)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m trainer.export", description=__doc__.splitlines()[0]
    )
    parser.add_argument("source", metavar="SRC", type=Path, help="checkpoint or run")
    parser.add_argument("dest", metavar="DST", type=Path, help="checkpoint to write")
    parser.add_argument(
        "--dtype",
        choices=SAVE_DTYPES,
        default="float16",
        help="dtype of the floating-point weights (default: float16)",
    )
    parser.add_argument(
        "--role",
        default="baseline",
        help="role stored in the checkpoint (default: baseline)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        export_checkpoint(args.source, args.dest, dtype=args.dtype, role=args.role)
    except ModelLoadError as error:
        print(f"python -m trainer.export: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
