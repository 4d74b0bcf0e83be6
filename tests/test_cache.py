"""The embedding cache, driven through encode_images on real catalog photos."""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from conftest import write_tiny_checkpoint
from open_clip import SimpleTokenizer
from PIL import Image

from pytest_modelqa.cache import (
    CACHE_FILE_NAME,
    EmbeddingCache,
    image_key,
    model_key,
)
from pytest_modelqa.catalog import FIXTURES_DIR
from pytest_modelqa.embeddings import encode_images, encode_texts
from pytest_modelqa.models import build_preprocess, load_model

PHOTOS = sorted((FIXTURES_DIR / "footwear" / "images").glob("*.jpg"))[:24]
BATCH = 8


class ForwardCounter:
    """Wrap a model's encode_image to count the images it encodes.

    With `interrupt_after` set, the call after that many batches raises
    KeyboardInterrupt, as Ctrl-C inside the forward pass would.
    """

    def __init__(self, model, monkeypatch, *, interrupt_after: int | None = None):
        self.batches: list[int] = []
        real = model.model.encode_image

        def counting(pixels, *args, **kwargs):
            if interrupt_after is not None and len(self.batches) >= interrupt_after:
                raise KeyboardInterrupt
            self.batches.append(len(pixels))
            return real(pixels, *args, **kwargs)

        monkeypatch.setattr(model.model, "encode_image", counting)

    @property
    def images(self) -> int:
        return sum(self.batches)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("models")
    return {
        "base": write_tiny_checkpoint(folder / "base.pt", seed=0),
        "other": write_tiny_checkpoint(folder / "other.pt", seed=1),
    }


@pytest.fixture(scope="module")
def model(checkpoints):
    return load_model(str(checkpoints["base"]))


@pytest.fixture
def photos(tmp_path) -> list[Path]:
    """Copies of 24 catalog photos that a test may rewrite."""
    folder = tmp_path / "photos"
    folder.mkdir()
    return [Path(shutil.copy2(photo, folder / photo.name)) for photo in PHOTOS]


@pytest.fixture
def cache(tmp_path) -> EmbeddingCache:
    with EmbeddingCache(tmp_path / "cache") as opened:
        yield opened


def encode(model, paths, cache=None, **kwargs) -> np.ndarray:
    return encode_images(
        model, paths, batch_size=BATCH, progress=False, cache=cache, **kwargs
    )


def digests(paths) -> list[str]:
    return [image_key(Path(path).read_bytes()) for path in paths]


def integrity(path: Path) -> str:
    with sqlite3.connect(path) as connection:
        return connection.execute("PRAGMA integrity_check").fetchone()[0]


def test_second_pass_encodes_nothing(model, photos, cache, monkeypatch):
    first = encode(model, photos, cache)
    counter = ForwardCounter(model, monkeypatch)
    second = encode(model, photos, cache)
    assert counter.images == 0
    assert np.array_equal(first, second)
    assert len(cache) == len(photos)


def test_cached_embeddings_equal_fresh(model, photos, cache):
    fresh = encode(model, photos)
    cold = encode(model, photos, cache)
    warm = encode(model, photos, cache)
    assert cold.dtype == np.float32
    assert warm.shape == fresh.shape
    assert np.allclose(cold, fresh, atol=1e-6)
    assert np.allclose(warm, fresh, atol=1e-6)


def test_first_pass_encodes_each_image_once(model, photos, cache, monkeypatch):
    counter = ForwardCounter(model, monkeypatch)
    encode(model, photos, cache)
    assert counter.images == len(photos)
    assert counter.batches == [BATCH] * (len(photos) // BATCH)


def test_changed_image_alone_is_reencoded(model, photos, cache, monkeypatch):
    before = encode(model, photos, cache)
    changed = photos[5]
    with Image.open(changed) as image:
        image.transpose(Image.Transpose.FLIP_TOP_BOTTOM).save(changed)
    counter = ForwardCounter(model, monkeypatch)
    after = encode(model, photos, cache)
    assert counter.images == 1
    assert np.allclose(after[5], encode(model, [changed])[0], atol=1e-6)
    assert not np.allclose(after[5], before[5])
    others = [i for i in range(len(photos)) if i != 5]
    assert np.array_equal(after[others], before[others])


def test_moved_images_still_hit(model, photos, cache, tmp_path, monkeypatch):
    encode(model, photos, cache)
    moved = tmp_path / "moved"
    shutil.copytree(photos[0].parent, moved)
    counter = ForwardCounter(model, monkeypatch)
    encode(model, [moved / photo.name for photo in photos], cache)
    assert counter.images == 0


def test_other_weights_miss(model, checkpoints, photos, cache, monkeypatch):
    encode(model, photos, cache)
    other = load_model(str(checkpoints["other"]))
    counter = ForwardCounter(other, monkeypatch)
    result = encode(other, photos, cache)
    assert counter.images == len(photos)
    assert np.allclose(result, encode(other, photos), atol=1e-6)


def test_changed_weights_hash_misses(model, photos, cache, monkeypatch):
    encode(model, photos, cache)
    renamed = dataclasses.replace(model, sha256="0" * 64)
    counter = ForwardCounter(renamed, monkeypatch)
    encode(renamed, photos, cache)
    assert counter.images == len(photos)


def test_changed_preprocessing_misses(model, photos, cache, monkeypatch):
    encode(model, photos, cache)
    resized = dataclasses.replace(
        model, preprocess=build_preprocess({"size": 32, "resize_mode": "shortest"})
    )
    counter = ForwardCounter(resized, monkeypatch)
    encode(resized, photos, cache)
    assert counter.images == len(photos)


def test_model_key_covers_precision_and_weights(model):
    keys = {
        model_key(model, precision="fp32"),
        model_key(model, precision="bf16"),
        model_key(model, precision="fp16"),
        model_key(dataclasses.replace(model, sha256="1" * 64), precision="fp32"),
    }
    assert len(keys) == 4
    assert model_key(model, precision="fp32") == model_key(model, precision="fp32")


def test_model_key_rejects_unknown_precision(model):
    with pytest.raises(ValueError, match="precision must be one of fp32, bf16, fp16"):
        model_key(model, precision="int8")


def test_model_key_rejects_unknown_kind(model):
    with pytest.raises(ValueError, match="kind must be image or text; got 'audio'"):
        model_key(model, precision="fp32", kind="audio")


def test_cpu_bf16_request_reuses_fp32_entries(model, photos, cache, monkeypatch):
    encode(model, photos, cache)
    counter = ForwardCounter(model, monkeypatch)
    encode(model, photos, cache, precision="bf16")
    assert counter.images == 0


def test_identical_bytes_encode_once(model, photos, cache, monkeypatch):
    twin = photos[0].with_name("twin.jpg")
    shutil.copy2(photos[0], twin)
    counter = ForwardCounter(model, monkeypatch)
    result = encode(model, [*photos, twin], cache)
    assert counter.images == len(photos)
    assert np.array_equal(result[-1], result[0])


def _damage_checksum(connection, key, digest):
    (vector,) = connection.execute(
        "SELECT vector FROM embeddings WHERE model_key = ? AND content_sha256 = ?",
        (key, digest),
    ).fetchone()
    flipped = bytes([vector[0] ^ 0xFF]) + vector[1:]
    connection.execute(
        "UPDATE embeddings SET vector = ? WHERE model_key = ? AND content_sha256 = ?",
        (flipped, key, digest),
    )


def _damage_length(connection, key, digest):
    connection.execute(
        "UPDATE embeddings SET vector = substr(vector, 1, 10) "
        "WHERE model_key = ? AND content_sha256 = ?",
        (key, digest),
    )


def _damage_dim(connection, key, digest):
    connection.execute(
        "UPDATE embeddings SET dim = dim + 1 "
        "WHERE model_key = ? AND content_sha256 = ?",
        (key, digest),
    )


@pytest.mark.parametrize(
    "damage",
    [_damage_checksum, _damage_length, _damage_dim],
    ids=["checksum", "length", "dim"],
)
def test_damaged_entry_is_recomputed(model, photos, cache, damage, monkeypatch):
    fresh = encode(model, photos, cache)
    key = model_key(model, precision="fp32")
    with sqlite3.connect(cache.path) as connection:
        damage(connection, key, digests(photos)[7])
    counter = ForwardCounter(model, monkeypatch)
    repaired = encode(model, photos, cache)
    assert counter.images == 1
    assert cache.corrupt == 1
    assert np.allclose(repaired, fresh, atol=1e-6)
    encode(model, photos, cache)
    assert counter.images == 1  # the entry was rewritten


def test_entry_of_wrong_width_is_recomputed(model, photos, cache, monkeypatch):
    fresh = encode(model, photos, cache)
    key = model_key(model, precision="fp32")
    # A well-formed entry of width 16 for a model of width 32.
    assert cache.set_many(key, [(digests(photos)[3], np.ones(16))])
    counter = ForwardCounter(model, monkeypatch)
    repaired = encode(model, photos, cache)
    assert counter.images == 1
    assert cache.corrupt == 1
    assert np.allclose(repaired, fresh, atol=1e-6)


def test_garbage_database_is_set_aside(model, photos, tmp_path, caplog, monkeypatch):
    folder = tmp_path / "cache"
    folder.mkdir()
    (folder / CACHE_FILE_NAME).write_bytes(b"not a database at all\n" * 200)
    with (
        caplog.at_level(logging.WARNING, logger="pytest_modelqa.cache"),
        EmbeddingCache(folder) as cache,
    ):
        result = encode(model, photos, cache)
        counter = ForwardCounter(model, monkeypatch)
        encode(model, photos, cache)
    assert "is not a valid SQLite database" in caplog.text
    assert (folder / (CACHE_FILE_NAME + ".corrupt")).is_file()
    assert counter.images == 0
    assert np.allclose(result, encode(model, photos), atol=1e-6)


def test_interrupted_encode_leaves_valid_entries(model, photos, cache, monkeypatch):
    with monkeypatch.context() as patch:
        ForwardCounter(model, patch, interrupt_after=1)
        with pytest.raises(KeyboardInterrupt):
            encode(model, photos, cache)
    assert integrity(cache.path) == "ok"
    with EmbeddingCache(cache.folder) as reopened:
        stored = reopened.get_many(
            model_key(model, precision="fp32"), digests(photos), dim=32
        )
        assert reopened.corrupt == 0
    assert set(stored) == set(digests(photos[:BATCH]))
    counter = ForwardCounter(model, monkeypatch)
    resumed = encode(model, photos, cache)
    assert counter.images == len(photos) - BATCH
    assert np.allclose(resumed, encode(model, photos), atol=1e-6)


def test_interrupted_write_stores_nothing(cache):
    key = "m" * 64
    assert cache.set_many(key, [("a" * 64, np.ones(4))])

    def entries():
        yield "b" * 64, np.ones(4)
        yield "c" * 64, np.ones(4)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        cache.set_many(key, entries())
    assert len(cache) == 1
    assert cache.set_many(key, [("d" * 64, np.ones(4))])
    assert sorted(cache.get_many(key, ["a" * 64, "b" * 64, "d" * 64], dim=4)) == [
        "a" * 64,
        "d" * 64,
    ]


def test_set_many_rejects_matrix(cache):
    with pytest.raises(ValueError, match=r"must have shape \(D,\); got \(2, 2\)"):
        cache.set_many("m" * 64, [("a" * 64, np.ones((2, 2)))])
    assert len(cache) == 0


def test_unwritable_folder_encodes_without_cache(model, photos, tmp_path, caplog):
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache folder would go")
    with caplog.at_level(logging.WARNING, logger="pytest_modelqa.cache"):
        result = encode(model, photos[:4], EmbeddingCache(blocker / "cache"))
    assert "cannot be created" in caplog.text
    assert np.allclose(result, encode(model, photos[:4]), atol=1e-6)


# Guards against a hung writer, not timings: the spawned child imports torch and
# open_clip first, which took over 60 s on a 2-core machine shared by other jobs.
_CHILD_TIMEOUT_S = 300


def _encode_in_child(checkpoint: str, paths: list[Path], folder: Path, barrier) -> None:
    model = load_model(checkpoint)
    barrier.wait(timeout=_CHILD_TIMEOUT_S)
    with EmbeddingCache(folder) as cache:
        encode_images(model, paths, batch_size=1, progress=False, cache=cache)


def test_two_processes_share_one_cache(model, checkpoints, photos, cache, monkeypatch):
    # This process is the second writer. A spawned child, because a forked one
    # inherits torch's thread pool and can hang in its first parallel region.
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(2)
    child = context.Process(
        target=_encode_in_child,
        args=(str(checkpoints["base"]), photos[:16], cache.folder, barrier),
    )
    child.start()
    try:
        barrier.wait(timeout=_CHILD_TIMEOUT_S)
        # Overlapping halves in opposite orders, so the writers collide on keys.
        encode_images(
            model, photos[8:][::-1], batch_size=1, progress=False, cache=cache
        )
    finally:
        child.join(timeout=_CHILD_TIMEOUT_S)
    assert child.exitcode == 0
    assert integrity(cache.path) == "ok"
    assert len(cache) == len(photos)
    counter = ForwardCounter(model, monkeypatch)
    shared = encode(model, photos, cache)
    assert counter.images == 0
    assert cache.corrupt == 0
    assert np.allclose(shared, encode(model, photos), atol=1e-6)


class TextCounter:
    """Wrap a model's encode_text to count the prompts it encodes."""

    def __init__(self, model, monkeypatch):
        self.texts = 0
        real = model.model.encode_text

        def counting(tokens, *args, **kwargs):
            self.texts += len(tokens)
            return real(tokens, *args, **kwargs)

        monkeypatch.setattr(model.model, "encode_text", counting)


PROMPTS = [
    "casual shoes with white shoelace",
    "sports shoes with black shoelace",
    "heels",
    "casual shoes with white shoelace",
]


def test_texts_second_pass_encodes_nothing(model, cache, monkeypatch):
    fresh = encode_texts(model, PROMPTS)
    counter = TextCounter(model, monkeypatch)
    cold = encode_texts(model, PROMPTS, cache=cache)
    assert counter.texts == 3  # the repeated prompt runs once
    warm = encode_texts(model, [*PROMPTS, "flats"], cache=cache, batch_size=2)
    assert counter.texts == 4
    assert np.allclose(cold, fresh, atol=1e-6)
    assert np.array_equal(warm[:4], cold)


def test_texts_and_images_keep_apart(model, photos, cache):
    encode(model, photos[:2], cache)
    encode_texts(model, PROMPTS, cache=cache)
    assert len(cache) == 2 + 3
    assert model_key(model, precision="fp32", kind="text") != model_key(
        model, precision="fp32"
    )


def test_text_key_covers_tokenizer(model):
    other = dataclasses.replace(model, tokenizer=SimpleTokenizer(context_length=8))
    assert model_key(other, precision="fp32", kind="text") != model_key(
        model, precision="fp32", kind="text"
    )
    assert model_key(other, precision="fp32") == model_key(model, precision="fp32")


def test_text_of_other_weights_misses(model, checkpoints, cache, monkeypatch):
    encode_texts(model, PROMPTS, cache=cache)
    other = load_model(str(checkpoints["other"]))
    counter = TextCounter(other, monkeypatch)
    encode_texts(other, PROMPTS, cache=cache)
    assert counter.texts == 3
