"""The training loop: set up a run, then train, validate and checkpoint each epoch."""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from pytest_modelqa.catalog import Catalog, ids_sha256, load_catalog
from pytest_modelqa.models import (
    ModelLoadError,
    build_model,
    build_preprocess,
    build_tokenizer,
    load_model,
    read_checkpoint,
)
from trainer import checkpoints, distributed, records
from trainer.compute import Compute, resolve_compute
from trainer.config import ConfigError, TrainConfig, config_from_dict
from trainer.data import TrainingData, epoch_batches, load_training_data
from trainer.evaluate import evaluate
from trainer.rules import FitVerdict, judge_fit
from trainer.wise import interpolate_weights

logger = logging.getLogger(__name__)
MAX_LOGIT_SCALE = math.log(100)  # CLIP caps the learned temperature at 100
RUN_FILES = ("metrics.csv", "curves.png", "summary.json", str(checkpoints.STATE_PATH))


@dataclass
class Run:
    """The live state of one training run."""

    config: TrainConfig
    out: Path
    compute: Compute
    model: torch.nn.Module
    tokenizer: Any
    identity: dict  # model_cfg, preprocess_cfg, train_ids_sha256, base, config
    init_state: dict | None  # float32 CPU weights of the init model, for WiSE-FT
    data: TrainingData
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    forward: torch.nn.Module  # both towers in one call, wrapped in DDP under torchrun
    world: distributed.World
    history: list[dict] = field(default_factory=list)
    stopped: bool = False


@dataclass
class TrainResult:
    """The files a finished run wrote, its best epoch and its history."""

    run_dir: Path
    candidates: list[Path]
    best_epoch: int
    reason: str
    history: list[dict]
    config: TrainConfig


def train(
    config: TrainConfig | None = None, *, resume: str | Path | None = None
) -> TrainResult:
    """Train from `config`, or continue the run whose folder or state is `resume`."""
    if (config is None) == (resume is None):
        raise ValueError("pass a config for a new run or resume for an old one")
    run = resume_run(resume) if resume is not None else start_run(config)
    config = run.config
    if run.stopped:
        logger.info("the resumed run had already stopped; writing its outputs")
    remaining = [] if run.stopped else range(len(run.history) + 1, config.epochs + 1)
    for epoch in remaining:
        # Train: one pass over the training split.
        entry = {"epoch": epoch, **train_one_epoch(run, epoch)}
        # Validate: loss, shoelace and category accuracy, train probe.
        started = time.perf_counter()
        entry |= distributed.run_on_main(
            run.world, evaluate, run.model, run.tokenizer, run.data, config, run.compute
        )
        entry["val_time_s"] = time.perf_counter() - started
        # Judge the fit on the history so far.
        run.history.append(entry)
        verdict = judge_fit(run.history, config, run.data.chance)
        entry |= {
            "underfitting": verdict.underfitting,
            "overfitting": verdict.overfitting,
        }
        run.stopped = verdict.stop
        log_epoch(entry, verdict, config)
        # Save the candidate, the resume state and the records (rank 0 only).
        if run.world.is_main:
            save_epoch(run, entry, verdict)
        if run.stopped:
            logger.info("stopping early after epoch %d: %s", epoch, verdict.reason)
            break
    # Write WiSE-FT mixes of the init model and each epoch's weights.
    candidates = [checkpoints.epoch_path(run.out, e["epoch"]) for e in run.history]
    if run.world.is_main:
        candidates += write_wise_candidates(run)
    return finish(run, judge_fit(run.history, config, run.data.chance), candidates)


def start_run(config: TrainConfig) -> Run:
    """Set up a new run, after checking catalog and device before writing anything."""
    catalog = load_catalog(config.catalog)
    compute = resolve_compute(config)
    out = prepare_run_dir(Path(config.out), overwrite=config.overwrite)
    run = build_run(config, out, catalog, compute)
    logger.info(
        "run %s: %d epochs, %d optimizer steps in all, on %s, precision %s",
        out,
        config.epochs,
        total_steps(config, len(run.data.train)),
        compute.device,
        compute.precision,
    )
    return run


def resume_run(path: str | Path) -> Run:
    """Rebuild a run from its resume state, as it was after its last saved epoch."""
    run_dir, state = checkpoints.read_train_state(path)
    values = {**state["config"], "out": str(run_dir), "overwrite": False}
    config = config_from_dict(values)
    run = build_run(
        config, run_dir, load_catalog(config.catalog), resolve_compute(config)
    )
    if run.identity["train_ids_sha256"] != state["train_ids_sha256"]:
        raise ConfigError(
            f"catalog {config.catalog}: its train split changed since the run started, "
            "so the run cannot resume; start a new run"
        )
    # build_run made the schedule before the optimizer state loads here, because
    # making a schedule resets the learning rates that the state restores.
    run.model.load_state_dict(state["state_dict"])
    run.optimizer.load_state_dict(state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    run.scaler.load_state_dict(state["scaler"])
    checkpoints.restore_rng_state(state["rng"])
    run.history, run.stopped = state["history"], state["stopped"]
    logger.info(
        "resuming %s after epoch %d of %d", run_dir, state["epoch"], config.epochs
    )
    return run


def build_run(
    config: TrainConfig, out: Path, catalog: Catalog, compute: Compute
) -> Run:
    """Build the model, data, optimizer and schedule of a run, seeded by config."""
    world = distributed.setup_world()
    compute = distributed.place(compute, world)
    torch.manual_seed(config.seed)
    model, tokenizer, identity, init_state = setup_model(config)
    model.to(compute.device).train()
    preprocess = build_preprocess(identity["preprocess_cfg"])
    data = load_training_data(catalog, config, preprocess, tokenizer)
    distributed.check_batch_size(config.batch_size, len(data.train), world)
    identity["train_ids_sha256"] = ids_sha256(data.train.catalog.ids)
    identity["config"] = config.to_dict()
    optimizer, scheduler = build_optimizer(model, config, len(data.train))
    return Run(
        config=config,
        out=out,
        compute=compute,
        model=model,
        tokenizer=tokenizer,
        identity=identity,
        init_state=init_state,
        data=data,
        optimizer=optimizer,
        scheduler=scheduler,
        scaler=compute.grad_scaler(),
        forward=distributed.wrap_model(model, world, compute.device),
        world=world,
    )


def prepare_run_dir(out: Path, *, overwrite: bool) -> Path:
    """Create the run folder, refusing to mix a new run into an old one."""
    old = sorted(out.glob("epoch_*.pt")) + [out / name for name in RUN_FILES]
    old = [path for path in old if path.exists()]
    if old and not overwrite:
        raise ConfigError(
            f"out: {out} already contains a run ({old[0].name}); resume it with "
            f"--resume {out}, replace it with --overwrite, or choose another --out"
        )
    if not distributed.is_main_process():
        return out  # under torchrun, rank 0 alone clears and creates the folder
    for path in old:
        path.unlink()
    out.mkdir(parents=True, exist_ok=True)
    return out


def setup_model(config: TrainConfig) -> tuple[torch.nn.Module, Any, dict, dict | None]:
    """Build the model to train, its tokenizer, its identity and the init weights."""
    if config.init is None:
        try:
            model = build_model(config.model_cfg)
        except (TypeError, ValueError, KeyError) as error:
            raise ConfigError(
                f"model_cfg: open_clip cannot build it ({error})"
            ) from error
        tokenizer = build_tokenizer(config.model_cfg)
        image_size = config.model_cfg.get("vision_cfg", {}).get("image_size", 224)
        preprocess_cfg = config.preprocess_cfg or {
            "size": image_size,
            "resize_mode": "squash",
        }
        base, model_cfg, init_state = None, config.model_cfg, None
    else:
        loaded = load_model(config.init)
        if loaded.model_cfg is None:
            raise ModelLoadError(
                f"{config.init}: its model config is unknown, so it cannot be "
                "fine-tuned"
            )
        model, tokenizer, model_cfg = loaded.model, loaded.tokenizer, loaded.model_cfg
        # The loader fills the init model's preprocessing in from open_clip's
        # defaults where its file leaves entries out.
        preprocess_cfg = config.preprocess_cfg or loaded.preprocess_cfg
        base = {"spec": config.init, "sha256": loaded.sha256}
        init_state = checkpoints.cast_state_dict(model.state_dict(), "float32")
    apply_locks(model, config)
    identity = {
        "model_cfg": _plain(model_cfg),
        "preprocess_cfg": _plain(preprocess_cfg),
        "base": base,
    }
    return model, tokenizer, identity, init_state


def _plain(value: Any) -> Any:
    """Return value as JSON-compatible lists, dicts, strings and numbers."""
    return json.loads(json.dumps(value))


def apply_locks(model: torch.nn.Module, config: TrainConfig) -> None:
    """Freeze the towers the config locks, then log the trainable parameter count."""
    # open_clip's unlock groups end with [last block, final norm] and [projection],
    # so n unlocked transformer blocks are n + 1 groups.
    groups = config.unlock_last_n_layers + 1 if config.unlock_last_n_layers else 0
    if config.lock_image:
        model.lock_image_tower(unlocked_groups=groups)
    if config.lock_text:
        model.lock_text_tower(unlocked_layers=groups)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    logger.info(
        "model: %.2fM parameters, %.2fM trainable", total / 1e6, trainable / 1e6
    )


def total_steps(config: TrainConfig, train_size: int) -> int:
    """Return the optimizer steps of the whole run, as the schedule counts them."""
    batches = math.ceil(train_size / config.batch_size)
    return math.ceil(batches / config.grad_accum) * config.epochs


def build_optimizer(
    model: torch.nn.Module, config: TrainConfig, train_size: int
) -> tuple[torch.optim.AdamW, torch.optim.lr_scheduler.LambdaLR]:
    """Return AdamW, decaying matrices only, and its warmup-cosine schedule."""
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (decay if param.ndim >= 2 else no_decay).append(param)
    groups = [
        {"params": decay, "weight_decay": config.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(groups, lr=config.lr, betas=(0.9, 0.98), eps=1e-6)
    factor = warmup_cosine(config.warmup, total_steps(config, train_size))
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def warmup_cosine(warmup: int, steps: int) -> Callable[[int], float]:
    """Return the learning-rate factor per step: linear warmup, then cosine to 0."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, steps - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


def train_one_epoch(run: Run, epoch: int) -> dict[str, float]:
    """Run one epoch of optimizer steps; return its loss, last lr and throughput."""
    config, model, device = run.config, run.model, run.compute.device
    model.train()
    batches = distributed.shard_batches(
        epoch_batches(run.data.train, config, epoch), run.world
    )
    total_loss, seen = 0.0, 0
    started = time.perf_counter()
    progress = tqdm(
        batches,
        desc=f"epoch {epoch}",
        unit="batch",
        disable=None if run.world.is_main else True,
        leave=False,
    )
    for index, (images, caption_ids) in enumerate(progress):
        # Forward: encode both towers and contrast the batch.
        images = images.to(device)
        tokens = run.data.tokens[caption_ids].to(device)
        with run.compute.autocast():
            # (B, D) image and text features of this rank's shard, and exp(scale)
            image_features, text_features, scale = run.forward(images, tokens)
            loss = distributed.contrastive_loss(
                image_features, text_features, scale, run.world
            )
        # Backward: average the micro-batches of one optimizer step.
        group_start = index - index % config.grad_accum
        group_size = min(config.grad_accum, len(batches) - group_start)
        run.scaler.scale(loss / group_size).backward()
        total_loss += loss.item() * len(images)
        seen += len(images)
        if index + 1 < group_start + group_size:
            continue
        # Step: update the weights and advance the schedule.
        optimizer_step(run)
        progress.set_postfix(loss=f"{loss.item():.4f}")
        if run.scheduler.last_epoch % config.log_every == 0:
            rate = seen / (time.perf_counter() - started)
            log_progress(run, epoch, loss.item(), rate)
    elapsed = time.perf_counter() - started
    total_loss, seen = distributed.sum_over_ranks(run.world, total_loss, seen)
    return {
        "train_loss": total_loss / seen,
        "lr": run.scheduler.get_last_lr()[0],
        "samples_per_s": seen / elapsed,
        "train_time_s": elapsed,
    }


def log_progress(run: Run, epoch: int, loss: float, rate: float) -> None:
    """Log the fixed-field step line: epoch, step, loss, next lr, samples/s."""
    logger.info(
        "epoch %3d step %6d loss %.4f lr %.3e %7.1f samples/s",
        epoch,
        run.scheduler.last_epoch,
        loss,
        run.scheduler.get_last_lr()[0],
        rate,
    )


def optimizer_step(run: Run) -> None:
    """Unscale and clip the gradients, step AdamW and the schedule, clamp the scale."""
    run.scaler.unscale_(run.optimizer)
    if run.config.grad_clip_norm is not None:
        trainable = [p for p in run.model.parameters() if p.requires_grad]
        torch.nn.utils.clip_grad_norm_(trainable, run.config.grad_clip_norm)
    # NOTE: with amp, the scaler skips a step whose gradients overflowed, but the
    # schedule still advances. This CUDA path has not run on this project's machines.
    run.scaler.step(run.optimizer)
    run.scaler.update()
    run.optimizer.zero_grad(set_to_none=True)
    run.scheduler.step()
    with torch.no_grad():
        run.model.logit_scale.clamp_(0, MAX_LOGIT_SCALE)


def _figure(value: Any) -> str:
    return "-" if value is None else f"{value:.4f}"


def log_epoch(entry: dict, verdict: FitVerdict, config: TrainConfig) -> None:
    """Log the fixed-field epoch line and any fit finding."""
    logger.info(
        "epoch %3d/%d train_loss %s val_loss %s val_shoelace_acc %s "
        "val_category_acc %s train_shoelace_acc %s gap %s %.1f samples/s %.1fs",
        entry["epoch"],
        config.epochs,
        _figure(entry["train_loss"]),
        _figure(entry["val_loss"]),
        _figure(entry["val_shoelace_acc"]),
        _figure(entry["val_category_acc"]),
        _figure(entry["train_shoelace_acc"]),
        _figure(entry["shoelace_gap"]),
        entry["samples_per_s"],
        entry["train_time_s"] + entry["val_time_s"],
    )
    if verdict.underfitting:
        logger.warning(
            "underfitting: best %s is still below the most common class's share",
            config.underfit_metric,
        )
    if verdict.overfitting:
        logger.warning(
            "overfitting: %s has not improved since epoch %d, and the train-val "
            "gap in shoelace accuracy or loss has grown since then",
            config.monitor,
            verdict.best_epoch,
        )


def save_epoch(run: Run, entry: dict, verdict: FitVerdict) -> None:
    """Write this epoch's candidate, the resume state, metrics.csv and the plot."""
    epoch, config = entry["epoch"], run.config
    weights = run.model.state_dict()
    checkpoints.write_candidate(
        checkpoints.epoch_path(run.out, epoch),
        run.identity,
        checkpoints.cast_state_dict(weights, config.save_dtype),
        epoch=epoch,
        metrics=entry,
        history=run.history,
        role=config.role,
    )
    checkpoints.write_train_state(
        run.out,
        run.identity,
        state_dict=checkpoints.cast_state_dict(weights, "float32"),
        optimizer=run.optimizer.state_dict(),
        scheduler=run.scheduler.state_dict(),
        scaler=run.scaler.state_dict(),
        rng=checkpoints.rng_state(),
        epoch=epoch,
        history=run.history,
        stopped=run.stopped,
    )
    records.write_metrics_csv(run.out / "metrics.csv", run.history)
    records.plot_curves(run.out / "curves.png", run.history, verdict.best_epoch)


def write_wise_candidates(run: Run) -> list[Path]:
    """Write epoch_N_wiseA.pt for each alpha and epoch, validated like the epochs."""
    if not run.config.wise_ft_alphas or run.init_state is None:
        return []
    written = []
    for entry in run.history:
        source = checkpoints.epoch_path(run.out, entry["epoch"])
        tuned = read_checkpoint(source)["state_dict"]
        for alpha in run.config.wise_ft_alphas:
            mixed = interpolate_weights(run.init_state, tuned, alpha)
            run.model.load_state_dict(mixed)
            metrics = evaluate(
                run.model, run.tokenizer, run.data, run.config, run.compute
            )
            path = run.out / f"epoch_{entry['epoch']}_wise{alpha:g}.pt"
            checkpoints.write_candidate(
                path,
                run.identity,
                checkpoints.cast_state_dict(mixed, run.config.save_dtype),
                epoch=entry["epoch"],
                metrics={"epoch": entry["epoch"], **metrics},
                history=run.history,
                role=run.config.role,
                wise_ft={"alpha": alpha, "source": source.name},
            )
            logger.info(
                "wise-ft %s: val_shoelace_acc %s val_category_acc %s",
                path.name,
                _figure(metrics["val_shoelace_acc"]),
                _figure(metrics["val_category_acc"]),
            )
            written.append(path)
    return written


def finish(run: Run, verdict: FitVerdict, candidates: list[Path]) -> TrainResult:
    """Write summary.json and log the summary that names the best epoch."""
    best = next(e for e in run.history if e["epoch"] == verdict.best_epoch)
    summary = {
        "best_epoch": verdict.best_epoch,
        "monitor": run.config.monitor,
        "best_metrics": best,
        "stopped_early": run.stopped,
        "finding": verdict.reason,
        "chance": run.data.chance,
        "candidates": [path.name for path in candidates],
        "epochs_run": len(run.history),
    }
    if run.world.is_main:
        records.write_summary(run.out / "summary.json", summary)
    logger.info(
        "best epoch %d of %d by %s: val_shoelace_acc %s val_category_acc %s; "
        "%d candidates in %s",
        verdict.best_epoch,
        len(run.history),
        run.config.monitor,
        _figure(best["val_shoelace_acc"]),
        _figure(best["val_category_acc"]),
        len(candidates),
        run.out,
    )
    return TrainResult(
        run.out, candidates, verdict.best_epoch, verdict.reason, run.history, run.config
    )
