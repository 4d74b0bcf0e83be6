"""Underfitting and overfitting rules, judged on the per-epoch validation history."""

from __future__ import annotations

from dataclasses import dataclass

from trainer.config import TrainConfig


@dataclass(frozen=True)
class FitVerdict:
    """The findings of the fit rules on a history, and whether to stop."""

    best_epoch: int
    epochs_since_best: int
    underfitting: bool
    overfitting: bool
    plateau: bool
    stop: bool
    reason: str  # the first finding of overfitting, plateau, underfitting; or ""


def is_improvement(
    value: float | None, best: float | None, config: TrainConfig
) -> bool:
    """Return whether `value` of the monitor beats `best` by more than min_delta."""
    if value is None:
        return False
    if best is None:
        return True
    if config.monitor == "val_loss":
        return value < best - config.min_delta
    return value > best + config.min_delta


def best_epoch(history: list[dict], config: TrainConfig) -> dict:
    """Return the epoch entry with the best monitor; ties keep the earlier epoch."""
    best = history[0]
    for entry in history[1:]:
        if is_improvement(entry[config.monitor], best[config.monitor], config):
            best = entry
    return best


def _loss_gap(entry: dict) -> float | None:
    if entry.get("val_loss") is None or entry.get("train_loss") is None:
        return None
    return entry["val_loss"] - entry["train_loss"]


def _grew(now: float | None, then: float | None, threshold: float) -> bool:
    return now is not None and then is not None and now - then > threshold


def judge_fit(
    history: list[dict], config: TrainConfig, chance: dict[str, float]
) -> FitVerdict:
    """Apply the rules to the history of epochs so far (the last entry is the latest).

    Underfitting: after underfit_epochs epochs, the best underfit_metric so far is
    below chance[underfit_metric] (the share of the most common validation class)
    plus underfit_margin.
    Plateau: the monitor has not improved for patience epochs.
    Overfitting: a plateau while a train-validation gap has grown since the best
    epoch: the train-probe minus validation shoelace accuracy by more than
    overfit_gap, or val_loss minus train_loss by more than overfit_loss_gap.
    """
    best = best_epoch(history, config)
    latest = history[-1]
    since_best = latest["epoch"] - best["epoch"]
    underfit_values = [e[config.underfit_metric] for e in history]
    known = [value for value in underfit_values if value is not None]
    floor = chance.get(config.underfit_metric, 0.0) + config.underfit_margin
    underfitting = len(history) >= config.underfit_epochs and (
        not known or max(known) < floor
    )
    plateau = since_best >= config.patience
    overfitting = plateau and (
        _grew(latest["shoelace_gap"], best["shoelace_gap"], config.overfit_gap)
        or _grew(_loss_gap(latest), _loss_gap(best), config.overfit_loss_gap)
    )
    reason = ""
    if overfitting:
        reason = "overfitting"
    elif plateau:
        reason = "plateau"
    elif underfitting:
        reason = "underfitting"
    stop = (config.early_stop and plateau) or (config.underfit_stop and underfitting)
    return FitVerdict(
        best_epoch=best["epoch"],
        epochs_since_best=since_best,
        underfitting=underfitting,
        overfitting=overfitting,
        plateau=plateau,
        stop=stop,
        reason=reason,
    )
