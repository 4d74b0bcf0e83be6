"""The symmetric contrastive image-text loss of CLIP."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def contrastive_loss(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    logit_scale: torch.Tensor,
) -> torch.Tensor:
    """Return CLIP's InfoNCE loss of a batch of L2-normalised (B, D) features.

    Pair i is the positive of row and column i, and the loss averages the
    image-to-text and text-to-image cross-entropies. Identical captions get
    identical text features, so an image whose caption appears k times in the batch
    reaches at best log k in the image-to-text direction.
    """
    logits = logit_scale * image_features @ text_features.T  # (B, B)
    labels = torch.arange(len(logits), device=logits.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
