"""Batched image and text encoding, and similarity search over normalised embeddings."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from tqdm.auto import tqdm

from pytest_modelqa.models import LoadedModel

logger = logging.getLogger(__name__)
DEFAULT_BATCH_SIZE = 64


class ImageLoadError(ValueError):
    """One or more images that could not be read, all named in one message."""

    def __init__(self, failures: list[tuple[Path, str]]):
        self.failures = failures
        shown = "\n".join(f"  {path}: {reason}" for path, reason in failures[:20])
        more = f"\n  ... and {len(failures) - 20} more" if len(failures) > 20 else ""
        super().__init__(f"{len(failures)} image(s) could not be read:\n{shown}{more}")


def open_rgb(path: Path) -> Image.Image:
    """Open an image as 8-bit RGB, whatever its mode (greyscale, CMYK, RGBA, 16-bit)."""
    with Image.open(path) as image:
        image.load()
        if image.mode in ("I;16", "I;16B", "I;16L", "I"):
            array = np.asarray(image, dtype=np.float64)
            peak = array.max() or 1.0
            image = Image.fromarray((array / peak * 255).astype(np.uint8), mode="L")
        if image.mode in ("RGBA", "LA", "P"):
            image = image.convert("RGBA")
            background = Image.new("RGBA", image.size, (255, 255, 255, 255))
            image = Image.alpha_composite(background, image)
        return image.convert("RGB")


class _ImageDataset(torch.utils.data.Dataset):
    def __init__(self, paths: Sequence[Path], preprocess):
        self.paths = list(paths)
        self.preprocess = preprocess

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        path = self.paths[index]
        try:
            pixels = self.preprocess(open_rgb(path))
        except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as error:
            return index, None, f"{type(error).__name__}: {error}"
        return index, pixels, None


def _collate(batch):
    return batch


def check_images(paths: Sequence[Path]) -> None:
    """Raise ImageLoadError listing every missing image path."""
    missing = [
        (Path(path), "file not found") for path in paths if not Path(path).is_file()
    ]
    if missing:
        raise ImageLoadError(missing)


@torch.inference_mode()
def encode_images(
    model: LoadedModel,
    paths: Sequence[Path],
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    workers: int = 0,
    device: str = "cpu",
    progress: bool = True,
    desc: str = "encoding images",
) -> np.ndarray:
    """Encode images into L2-normalised embeddings, shape (N, D), float32.

    Every image is read and preprocessed before its batch runs; unreadable images are
    collected and reported together in one ImageLoadError once the pass ends.
    """
    check_images(paths)
    loader = torch.utils.data.DataLoader(
        _ImageDataset(paths, model.preprocess),
        batch_size=batch_size,
        num_workers=workers,
        collate_fn=_collate,
    )
    network = model.model.to(device)
    chunks: list[np.ndarray] = []
    failures: list[tuple[Path, str]] = []
    bar = tqdm(
        total=len(paths), desc=desc, unit="img", disable=not progress, leave=False
    )
    for batch in loader:
        good = [(index, pixels) for index, pixels, error in batch if error is None]
        failures += [(Path(paths[index]), error) for index, _, error in batch if error]
        if good and not failures:
            pixels = torch.stack([pixels for _, pixels in good]).to(
                device
            )  # (B, 3, H, W)
            features = network.encode_image(pixels, normalize=True)  # (B, D)
            chunks.append(features.float().cpu().numpy())
        bar.update(len(batch))
    bar.close()
    if failures:
        raise ImageLoadError(failures)
    if not chunks:
        return np.zeros((0, 0), dtype=np.float32)
    return np.concatenate(chunks)


@torch.inference_mode()
def encode_texts(
    model: LoadedModel,
    texts: Sequence[str],
    *,
    batch_size: int = 256,
    device: str = "cpu",
) -> np.ndarray:
    """Encode prompts into L2-normalised embeddings, shape (T, D), float32."""
    network = model.model.to(device)
    chunks = []
    for start in range(0, len(texts), batch_size):
        tokens = model.tokenizer(list(texts[start : start + batch_size])).to(device)
        features = network.encode_text(tokens, normalize=True)  # (B, D)
        chunks.append(features.float().cpu().numpy())
    return np.concatenate(chunks)


def top_k(
    queries: np.ndarray,
    gallery: np.ndarray,
    *,
    k: int,
    exclude: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Return (indices, scores) of the k most similar gallery rows per query.

    `queries` is (Q, D) and `gallery` (N, D), both normalised, so the dot product is
    the cosine similarity. `exclude` is an optional (Q, N) boolean mask of gallery
    rows a query may not return, such as the query image itself. Ties go to the lower
    gallery index. Both outputs have shape (Q, min(k, N)).
    """
    similarity = torch.from_numpy(queries) @ torch.from_numpy(gallery).T  # (Q, N)
    if exclude is not None:
        similarity = similarity.masked_fill(torch.from_numpy(exclude), float("-inf"))
    k = min(k, gallery.shape[0])
    # A stable descending sort keeps the lowest index first among equal scores, which
    # torch.topk does not promise.
    scores, indices = torch.sort(similarity, dim=1, descending=True, stable=True)
    return indices[:, :k].numpy(), scores[:, :k].numpy()
