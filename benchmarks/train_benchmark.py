"""Trainer throughput against a bare open_clip training loop, in the same process.

Both loops train the same open_clip CLIP from the same seed on the same decoded
images and tokenized captions (the train split of the bundled footwear catalog), with
the same batch size. The trainer side is the trainer's own epoch (flip augmentation,
caption sampling, gradient clipping, warmup-cosine schedule, logit-scale clamp). The
bare side is the textbook loop: forward, open_clip's ClipLoss, backward, plain AdamW.
Epochs of the two alternate, so that load from other processes falls on both alike,
and the median epoch of each gives the ratio.

    PYTHONPATH=$PWD python benchmarks/train_benchmark.py [--rounds 3] [--items N]

Both loops run on the CPU in fp32 with torch's default thread count.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import open_clip
import torch

from pytest_modelqa.catalog import load_catalog
from trainer import loop
from trainer.compute import resolve_compute
from trainer.config import build_config

RECIPE = Path(__file__).resolve().parents[1] / "trainer" / "recipes" / "standin.yaml"


def build_trainer_run(batch_size: int, out: Path) -> loop.Run:
    """Return a trainer run of the stand-in's architecture on the footwear catalog."""
    config = build_config(
        RECIPE,
        {
            "extra_catalogs": [],
            "batch_size": batch_size,
            "out": str(out),
            "probe_size": 0,
            "log_every": 1_000_000,
        },
    )
    catalog = load_catalog(config.catalog)
    return loop.build_run(config, out, catalog, resolve_compute(config))


def bare_epoch(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_fn: open_clip.ClipLoss,
    images: torch.Tensor,
    tokens: torch.Tensor,
    batch_size: int,
) -> float:
    """Train one epoch the plain open_clip way; return samples per second."""
    model.train()
    order = torch.randperm(len(images))
    started = time.perf_counter()
    for start in range(0, len(images), batch_size):
        index = order[start : start + batch_size]
        image_features, text_features, logit_scale = model(
            images[index], tokens[index]
        )
        loss = loss_fn(image_features, text_features, logit_scale)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return len(images) / (time.perf_counter() - started)


def measure(rounds: int, batch_size: int, items: int | None) -> dict:
    """Alternate trainer and bare epochs `rounds` times; return both rates.

    `items` keeps the first that many training items in both loops (None: all).
    """
    with tempfile.TemporaryDirectory() as tmp:
        run = build_trainer_run(batch_size, Path(tmp))
        if items is not None:
            run.data.train = run.data.train.take(list(range(items)))
        data = run.data.train
        # The bare loop gets the same decoded images and each item's first caption.
        torch.manual_seed(run.config.seed)
        model = open_clip.CLIP(**run.identity["model_cfg"])
        model.load_state_dict(run.model.state_dict())
        optimizer = torch.optim.AdamW(
            model.parameters(), lr=run.config.lr, weight_decay=run.config.weight_decay
        )
        loss_fn = open_clip.ClipLoss()
        tokens = run.data.tokens[data.caption_ids[:, 0]]  # (N, context_length)
        trainer_rates, bare_rates = [], []
        for epoch in range(1, rounds + 1):
            trainer_rates.append(loop.train_one_epoch(run, epoch)["samples_per_s"])
            bare_rates.append(
                bare_epoch(model, optimizer, loss_fn, data.images, tokens, batch_size)
            )
            logging.info(
                "round %d: trainer %.1f samples/s, bare open_clip %.1f samples/s",
                epoch,
                trainer_rates[-1],
                bare_rates[-1],
            )
    trainer_rate = statistics.median(trainer_rates)
    bare_rate = statistics.median(bare_rates)
    return {
        "items": len(data),
        "batch_size": batch_size,
        "rounds": rounds,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "open_clip": open_clip.__version__,
        "cpu": platform.processor() or platform.machine(),
        "trainer_samples_per_s": trainer_rates,
        "bare_samples_per_s": bare_rates,
        "trainer_median": trainer_rate,
        "bare_median": bare_rate,
        "ratio": trainer_rate / bare_rate,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--rounds", type=int, default=3, help="epochs of each loop (default: 3)"
    )
    parser.add_argument(
        "--batch-size", type=int, default=128, help="images per batch (default: 128)"
    )
    parser.add_argument(
        "--items",
        type=int,
        help="train on the first ITEMS footwear train items only (default: all)",
    )
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.rounds < 1:
        parser.error(f"--rounds: expected ≥ 1, got {args.rounds}")
    if args.items is not None and args.items < args.batch_size:
        parser.error(f"--items: expected ≥ --batch-size, got {args.items}")
    figures = measure(args.rounds, args.batch_size, args.items)
    print(
        f"{figures['items']} items, batch {figures['batch_size']}, "
        f"{figures['rounds']} epochs each, {figures['threads']} threads: "
        f"trainer {figures['trainer_median']:.1f} samples/s, bare open_clip "
        f"{figures['bare_median']:.1f} samples/s, ratio {figures['ratio']:.2f}"
    )
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
