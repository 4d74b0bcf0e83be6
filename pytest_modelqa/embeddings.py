"""Batched image and text encoding, and similarity search over normalised embeddings."""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from tqdm.auto import tqdm

from pytest_modelqa.cache import (
    PRECISIONS,
    EmbeddingCache,
    image_key,
    model_key,
    text_key,
)
from pytest_modelqa.models import LoadedModel

logger = logging.getLogger(__name__)
DEFAULT_BATCH_SIZE = 64
_AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
# Similarity entries that top_k computes at once (64 MiB of float32), so that an
# all-against-all search over a large catalog never allocates the whole (Q, N) matrix.
_TOP_K_BLOCK_ELEMENTS = 1 << 24


class ImageLoadError(ValueError):
    """One or more images that could not be read, all named in one message."""

    def __init__(self, failures: list[tuple[Path, str]]):
        self.failures = failures
        shown = "\n".join(f"  {path}: {reason}" for path, reason in failures[:20])
        more = f"\n  ... and {len(failures) - 20} more" if len(failures) > 20 else ""
        super().__init__(
            f"{len(failures)} image(s) could not be read:\n{shown}{more}\n"
            "Replace these files, or remove their rows from the catalog manifest"
        )


class EmbeddingError(ValueError):
    """A model whose forward pass returned NaN, infinite or all-zero embeddings."""


def normalise_features(features: torch.Tensor, model: LoadedModel) -> np.ndarray:
    """L2-normalise (B, D) features into float32 rows, or raise EmbeddingError.

    The norm is taken in float64, so large but finite features (a float32 norm
    overflows above about 1.8e19) still give unit rows.
    """
    features = features.double()
    finite = torch.isfinite(features).all(dim=-1)  # (B,)
    zero = (features == 0).all(dim=-1)  # (B,)
    broken = int((~finite | zero).sum())
    if broken:
        raise EmbeddingError(
            f"{model.spec}: the model returned NaN, infinite or all-zero embeddings "
            f"for {broken} of {len(features)} inputs in a batch, although its "
            "weights are finite: the forward pass overflows, or the weights are "
            "degenerate. Check how the checkpoint was trained and saved"
        )
    return F.normalize(features, dim=-1).float().cpu().numpy()


def open_rgb(path: Path | BinaryIO) -> Image.Image:
    """Open an image as 8-bit RGB, whatever its mode (greyscale, CMYK, RGBA, 16-bit).

    `path` is a file path or a binary file object such as io.BytesIO.
    """
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
    """Preprocessed images, each with the sha256 of the bytes it was decoded from."""

    def __init__(self, paths: Sequence[Path], preprocess, *, hash_bytes: bool):
        self.paths = list(paths)
        self.preprocess = preprocess
        self.hash_bytes = hash_bytes

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        try:
            data = Path(self.paths[index]).read_bytes()
            pixels = self.preprocess(open_rgb(io.BytesIO(data)))  # (3, H, W)
        except UnidentifiedImageError:
            # Pillow's own message names the BytesIO object, not the file.
            return index, None, None, "not an image format Pillow can decode"
        except (OSError, ValueError, SyntaxError) as error:
            return index, None, None, f"{type(error).__name__}: {error}"
        # The digest is of the bytes actually decoded, so a file rewritten after the
        # cache lookup is stored under its new content, never under the old key.
        digest = image_key(data) if self.hash_bytes else None
        return index, digest, pixels, None


def _collate(batch):
    """Stack the decoded images of a batch (in the loader worker); keep failures."""
    decoded = [item for item in batch if item[3] is None]
    failures = [(index, error) for index, _, _, error in batch if error is not None]
    pixels = torch.stack([item[2] for item in decoded]) if decoded else None
    return (
        [item[0] for item in decoded],
        [item[1] for item in decoded],
        pixels,
        failures,
    )


def missing_images(paths: Sequence[Path]) -> list[tuple[int, str]]:
    """Return (index, "file not found") for every path that is not a file."""
    return [
        (index, "file not found")
        for index, path in enumerate(paths)
        if not Path(path).is_file()
    ]


def effective_precision(precision: str, device: str | torch.device) -> str:
    """Return the precision a forward pass runs in: as requested on CUDA, else fp32.

    Raises ValueError for a precision other than fp32, bf16 or fp16.
    """
    if precision not in PRECISIONS:
        raise ValueError(
            f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}"
        )
    if precision != "fp32" and torch.device(device).type != "cuda":
        logger.info(
            "precision %s needs CUDA; encoding in fp32 on %s", precision, device
        )
        return "fp32"
    return precision


def _autocast(precision: str, device: str | torch.device):
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=_AUTOCAST_DTYPES[precision])


def embedding_dim(model: LoadedModel) -> int | None:
    """Return the width D of a model's embeddings, or None when the model omits it."""
    width = getattr(getattr(model.model, "visual", None), "output_dim", None)
    if isinstance(width, int):
        return width
    width = (model.model_cfg or {}).get("embed_dim")
    return width if isinstance(width, int) else None


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
    cache: EmbeddingCache | None = None,
    precision: str = "fp32",
) -> np.ndarray:
    """Encode images into L2-normalised embeddings, shape (N, D), float32.

    With a `cache`, every image's entry is looked up first, by the sha256 of its
    bytes and the model key (see pytest_modelqa.cache). Only the misses are decoded
    and encoded, once per distinct content, and each batch is stored as soon as it
    is computed, so an interrupted pass keeps the batches it finished.

    `precision` "bf16" or "fp16" runs the model under autocast on CUDA; every other
    device runs fp32, and the cache key records the precision actually used. Images
    stream through a DataLoader with `workers` decoding processes, so memory keeps
    the (N, D) result and a few batches of pixels, never the whole catalog's.
    Unreadable images are collected and reported together in one ImageLoadError
    once the pass ends, and no batch is encoded after the first of them.
    """
    precision = effective_precision(precision, device)
    dim = embedding_dim(model)
    if cache is not None and dim is None:
        logger.warning(
            "embedding width of %s is unknown (no visual.output_dim or embed_dim); "
            "encoding without the cache",
            model.name,
        )
        cache = None
    out = np.zeros((len(paths), dim or 0), dtype=np.float32)  # (N, D)
    # Missing files are reported with the images that fail to decode, in one error.
    failures = missing_images(paths)
    missing = {index for index, _ in failures}
    pending = [index for index in range(len(paths)) if index not in missing]
    copies: dict[int, int] = {}
    destination = _Destination(out, pending)
    if cache is not None:
        key = model_key(model, precision=precision)
        pending, copies, unreadable = _fill_from_cache(out, paths, cache, key, missing)
        failures += unreadable
        destination = _Destination(out, pending, cache=cache, key=key)
        logger.info(
            "%s: %d of %d images found in the embedding cache, %d to encode",
            desc,
            len(paths) - len(pending) - len(copies) - len(failures),
            len(paths),
            len(pending),
        )
    with tqdm(
        total=len(paths),
        initial=len(paths) - len(pending),
        desc=desc,
        unit="img",
        disable=not progress,
        leave=False,
    ) as bar:
        decode_failures = _encode_pending(
            model,
            [Path(paths[index]) for index in pending],
            destination,
            bar,
            batch_size=batch_size,
            workers=workers,
            device=device,
            precision=precision,
            encode=not failures,
        )
    failures += [(pending[position], error) for position, error in decode_failures]
    if failures:
        raise ImageLoadError([(Path(paths[i]), error) for i, error in sorted(failures)])
    out = destination.out
    for index, source in copies.items():
        out[index] = out[source]
    return out


def _fill_from_cache(
    out: np.ndarray,
    paths: Sequence[Path],
    cache: EmbeddingCache,
    key: str,
    skip: set[int],
) -> tuple[list[int], dict[int, int], list[tuple[int, str]]]:
    """Copy every cached row into `out` and plan the rest, leaving out `skip`.

    Return the indices to encode, {index: index of the same bytes} for images that
    repeat an earlier image's content, and (index, reason) of files that failed.
    """
    digests: list[str | None] = []
    failures: list[tuple[int, str]] = []
    for index, path in enumerate(paths):
        if index in skip:
            digests.append(None)
            continue
        try:
            digests.append(image_key(Path(path).read_bytes()))
        except OSError as error:
            digests.append(None)
            failures.append((index, f"{type(error).__name__}: {error}"))
    known = [digest for digest in digests if digest is not None]
    found = cache.get_many(key, known, dim=out.shape[1])
    pending: list[int] = []
    copies: dict[int, int] = {}
    first_with: dict[str, int] = {}
    for index, digest in enumerate(digests):
        if digest is None:
            continue
        if digest in found:
            out[index] = found[digest]
        elif digest in first_with:
            copies[index] = first_with[digest]
        else:
            first_with[digest] = index
            pending.append(index)
    return pending, copies, failures


class _Destination:
    """Destination of encoded batches: rows of the (N, D) result, and the cache."""

    def __init__(
        self,
        out: np.ndarray,
        rows: list[int],
        *,
        cache: EmbeddingCache | None = None,
        key: str = "",
    ):
        self.out = out
        self.rows = rows  # the result row of each position in the encode list
        self.cache = cache
        self.key = key

    def write(self, positions: list[int], digests: list, features: np.ndarray) -> None:
        if self.out.shape[1] == 0:
            # Without a cache the width may be unknown until the first batch.
            self.out = np.zeros((len(self.out), features.shape[1]), dtype=np.float32)
        if features.shape[1] != self.out.shape[1]:
            raise RuntimeError(
                f"the model returned embeddings of width {features.shape[1]}, but "
                f"its configuration gives {self.out.shape[1]}"
            )
        self.out[[self.rows[position] for position in positions]] = features
        if self.cache is not None:
            self.cache.set_many(self.key, zip(digests, features, strict=True))


def _encode_pending(
    model: LoadedModel,
    paths: list[Path],
    destination: _Destination,
    bar,
    *,
    batch_size: int,
    workers: int,
    device: str,
    precision: str,
    encode: bool,
) -> list[tuple[int, str]]:
    """Decode `paths` in batches and encode them into `destination`.

    Return (position, reason) of every image that could not be decoded. After the
    first failure, or from the start when `encode` is false, images are still
    decoded, to report every failure, but no longer encoded.
    """
    failures: list[tuple[int, str]] = []
    if not paths:
        return failures
    loader = torch.utils.data.DataLoader(
        _ImageDataset(
            paths, model.preprocess, hash_bytes=destination.cache is not None
        ),
        batch_size=batch_size,
        num_workers=workers,
        collate_fn=_collate,
        pin_memory=torch.device(device).type == "cuda",
    )
    network = model.model.to(device)
    for positions, digests, pixels, batch_failures in loader:
        failures += batch_failures
        if pixels is not None and encode and not failures:
            pixels = pixels.to(device, non_blocking=True)  # (B, 3, H, W)
            with _autocast(precision, device):
                features = network.encode_image(pixels)  # (B, D)
            features = normalise_features(features, model)
            destination.write(positions, digests, features)
        bar.update(len(positions) + len(batch_failures))
    return failures


@torch.inference_mode()
def encode_texts(
    model: LoadedModel,
    texts: Sequence[str],
    *,
    batch_size: int = 256,
    device: str = "cpu",
    precision: str = "fp32",
    cache: EmbeddingCache | None = None,
) -> np.ndarray:
    """Encode prompts into L2-normalised embeddings, shape (T, D), float32.

    Each distinct text is encoded once. With a `cache`, texts are looked up by the
    sha256 of their UTF-8 bytes and the model's text key, and only the misses run
    through the model. `precision` works as in encode_images.
    """
    precision = effective_precision(precision, device)
    dim = embedding_dim(model)
    texts = list(texts)
    keys = [text_key(text) for text in texts]
    found: dict[str, np.ndarray] = {}
    store_key = None
    if cache is not None and dim is not None:
        store_key = model_key(model, precision=precision, kind="text")
        found = cache.get_many(store_key, keys, dim=dim)
    first_with: dict[str, int] = {}
    for index, key in enumerate(keys):
        first_with.setdefault(key, index)
    pending = [key for key in first_with if key not in found]
    network = model.model.to(device)
    for start in range(0, len(pending), batch_size):
        chunk = pending[start : start + batch_size]
        tokens = model.tokenizer([texts[first_with[key]] for key in chunk]).to(device)
        with _autocast(precision, device):
            features = network.encode_text(tokens)  # (B, D)
        features = normalise_features(features, model)
        found.update(zip(chunk, features, strict=True))
        if store_key is not None:
            cache.set_many(store_key, zip(chunk, features, strict=True))
    if not texts:
        return np.zeros((0, dim or 0), dtype=np.float32)
    return np.stack([found[key] for key in keys])  # (T, D)


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
    rows a query may not return, such as the query image itself. Excluded rows
    score -inf and come last. Ties go to the lower gallery index. Both outputs have
    shape (Q, min(k, N)); indices are int64 and scores have the inputs' dtype.
    """
    _check_top_k_inputs(queries, gallery, k, exclude)
    k = min(k, gallery.shape[0])
    dtype = np.result_type(queries.dtype, gallery.dtype)
    if k == 0 or queries.shape[0] == 0:
        return np.zeros((queries.shape[0], k), np.int64), np.zeros(
            (queries.shape[0], k), dtype
        )
    gallery_t = torch.from_numpy(np.ascontiguousarray(gallery, dtype=dtype))  # (N, D)
    block_rows = max(1, _TOP_K_BLOCK_ELEMENTS // gallery.shape[0])
    indices, scores = [], []
    for start in range(0, queries.shape[0], block_rows):
        block = np.ascontiguousarray(queries[start : start + block_rows], dtype=dtype)
        similarity = torch.from_numpy(block) @ gallery_t.T  # (B, N)
        if exclude is not None:
            mask = torch.from_numpy(exclude[start : start + block_rows])
            similarity = similarity.masked_fill(mask, float("-inf"))
        block_indices, block_scores = _top_k_rows(similarity, k)
        indices.append(block_indices)
        scores.append(block_scores)
    return np.concatenate(indices), np.concatenate(scores)


def _top_k_rows(similarity: torch.Tensor, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Select the k best columns per row of (B, N) scores, lower index first on ties.

    torch.topk finds each row's k-th best score but promises no order among equal
    scores, so the selection is rebuilt from it: every column above that score,
    then the lowest-index columns equal to it until k are taken.
    """
    kth = torch.topk(similarity, k, dim=1).values[:, -1:]  # (B, 1)
    above = similarity > kth  # (B, N), fewer than k per row
    tied = similarity == kth  # (B, N), together with above at least k per row
    room = k - above.sum(dim=1, keepdim=True)  # (B, 1)
    keep = above | (tied & (tied.cumsum(dim=1) <= room))  # exactly k per row
    chosen = keep.nonzero()[:, 1].view(-1, k)  # (B, k), ascending gallery index
    chosen_scores = similarity.gather(1, chosen)  # (B, k)
    # A stable sort of the k chosen keeps ascending index order among equal scores.
    order = torch.sort(chosen_scores, dim=1, descending=True, stable=True).indices
    return chosen.gather(1, order).numpy(), chosen_scores.gather(1, order).numpy()


def _check_top_k_inputs(queries, gallery, k, exclude) -> None:
    if queries.ndim != 2 or gallery.ndim != 2 or queries.shape[1] != gallery.shape[1]:
        raise ValueError(
            "queries must have shape (Q, D) and gallery (N, D) with the same D; got "
            f"queries {queries.shape} and gallery {gallery.shape}"
        )
    if k < 0:
        raise ValueError(f"k must be at least 0; got {k}")
    if np.isnan(queries).any() or np.isnan(gallery).any():
        raise ValueError("queries and gallery must not contain NaN")
    expected = (queries.shape[0], gallery.shape[0])
    if exclude is not None and (exclude.shape != expected or exclude.dtype != bool):
        raise ValueError(
            f"exclude must be a boolean array of shape {expected}; got "
            f"{exclude.dtype} {exclude.shape}"
        )
