"""Validation each epoch: contrastive loss, shoelace and category zero-shot accuracy."""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch

from trainer.compute import Compute
from trainer.config import TrainConfig
from trainer.data import Split, TrainingData, laced_indices
from trainer.loss import contrastive_loss

logger = logging.getLogger(__name__)
ENCODE_BATCH = 256  # images or texts per forward pass; inference only


@torch.no_grad()
def encode_images(model: torch.nn.Module, images: torch.Tensor, compute: Compute):
    """Return L2-normalised image features, (N, D) float32 on the CPU."""
    parts = []
    for start in range(0, len(images), ENCODE_BATCH):
        batch = images[start : start + ENCODE_BATCH].to(compute.device)
        with compute.autocast():
            parts.append(model.encode_image(batch, normalize=True).float().cpu())
    return torch.cat(parts)


@torch.no_grad()
def encode_texts(model: torch.nn.Module, tokens: torch.Tensor, compute: Compute):
    """Return L2-normalised text features, (M, D) float32 on the CPU."""
    parts = []
    for start in range(0, len(tokens), ENCODE_BATCH):
        batch = tokens[start : start + ENCODE_BATCH].to(compute.device)
        with compute.autocast():
            parts.append(model.encode_text(batch, normalize=True).float().cpu())
    return torch.cat(parts)


def top_k_accuracy(scores: torch.Tensor, truth: torch.Tensor, k: int) -> float:
    """Return the share of rows of scores (N, C) whose truth (N,) is in the top k."""
    top = scores.topk(min(k, scores.shape[1]), dim=1).indices  # (N, k)
    return (top == truth[:, None]).any(dim=1).float().mean().item()


@torch.no_grad()
def validation_loss(
    model: torch.nn.Module, data: TrainingData, batch_size: int, compute: Compute
) -> float:
    """Return the contrastive loss on the val split in catalog order, first captions."""
    total, count = 0.0, 0
    for start in range(0, len(data.val), batch_size):
        images = data.val.images[start : start + batch_size].to(compute.device)
        caption_ids = data.val.caption_ids[start : start + batch_size, 0]
        tokens = data.tokens[caption_ids].to(compute.device)
        with compute.autocast():
            image_features = model.encode_image(images, normalize=True)
            text_features = model.encode_text(tokens, normalize=True)
            loss = contrastive_loss(
                image_features, text_features, model.logit_scale.exp()
            )
        total += loss.item() * len(images)
        count += len(images)
    return total / count


def shoelace_accuracy(
    model: torch.nn.Module,
    tokenizer: Callable,
    split: Split,
    data: TrainingData,
    config: TrainConfig,
    compute: Compute,
) -> dict[int, float | None]:
    """Return top-k shoelace accuracy on the split's laced items, for k = 1 and top_k.

    Each item's prompts fill val_prompt with its own category and every laced colour
    of the catalog. The prediction is the colour of the most similar prompt, and ties
    go to the colour that sorts first.
    """
    ks = sorted({1, *config.top_k})
    laced = laced_indices(split)
    if not laced:
        return dict.fromkeys(ks)
    categories = [split.catalog.labels("category")[i] for i in laced]
    colours = [split.catalog.labels("shoelace_colour")[i] for i in laced]
    prompt_categories = sorted(set(categories))
    prompts = [
        config.val_prompt.format(category=category, value=value)
        for category in prompt_categories
        for value in data.lace_values
    ]
    text = encode_texts(model, tokenizer(prompts), compute)  # (C * V, D)
    text = text.view(len(prompt_categories), len(data.lace_values), -1)  # (C, V, D)
    images = encode_images(model, split.images[laced], compute)  # (N, D)
    category_index = torch.tensor([prompt_categories.index(c) for c in categories])
    scores = torch.einsum("nd,nvd->nv", images, text[category_index])  # (N, V)
    truth = torch.tensor([data.lace_values.index(colour) for colour in colours])
    return {k: top_k_accuracy(scores, truth, k) for k in ks}


def category_accuracy(
    model: torch.nn.Module,
    tokenizer: Callable,
    data: TrainingData,
    config: TrainConfig,
    compute: Compute,
) -> float:
    """Return zero-shot category accuracy on the val split over all categories."""
    prompts = [config.category_prompt.format(category=c) for c in data.categories]
    text = encode_texts(model, tokenizer(prompts), compute)  # (C, D)
    images = encode_images(model, data.val.images, compute)  # (N, D)
    truth = torch.tensor(
        [data.categories.index(c) for c in data.val.catalog.labels("category")]
    )
    return top_k_accuracy(images @ text.T, truth, 1)


def evaluate(
    model: torch.nn.Module,
    tokenizer: Callable,
    data: TrainingData,
    config: TrainConfig,
    compute: Compute,
) -> dict[str, float | None]:
    """Return this epoch's validation figures and the train-probe shoelace accuracy."""
    was_training = model.training
    model.eval()
    val_top = shoelace_accuracy(model, tokenizer, data.val, data, config, compute)
    probe_top = shoelace_accuracy(model, tokenizer, data.probe, data, config, compute)
    metrics: dict[str, float | None] = {
        "val_loss": validation_loss(model, data, config.batch_size, compute),
        "val_shoelace_acc": val_top[1],
    }
    for k in sorted(set(config.top_k) - {1}):
        metrics[f"val_shoelace_top{k}"] = val_top[k]
    metrics["val_category_acc"] = category_accuracy(
        model, tokenizer, data, config, compute
    )
    train_acc = probe_top[1]
    metrics["train_shoelace_acc"] = train_acc
    val_acc = metrics["val_shoelace_acc"]
    both = train_acc is not None and val_acc is not None
    metrics["shoelace_gap"] = train_acc - val_acc if both else None
    model.train(was_training)
    return metrics
