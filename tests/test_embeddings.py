"""Image and text encoding on real photos with a tiny open_clip model, and top_k."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from conftest import TINY_MODEL_CFG, write_tiny_checkpoint
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from pytest_modelqa import embeddings
from pytest_modelqa.cache import EmbeddingCache
from pytest_modelqa.catalog import FIXTURES_DIR
from pytest_modelqa.embeddings import (
    ImageLoadError,
    embedding_dim,
    encode_images,
    encode_texts,
    top_k,
)
from pytest_modelqa.models import load_model

PHOTOS = sorted((FIXTURES_DIR / "footwear" / "images").glob("*.jpg"))[:20]
DIM = TINY_MODEL_CFG["embed_dim"]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models")
    return load_model(str(write_tiny_checkpoint(folder / "tiny.pt")))


# -- images ----------------------------------------------------------------------


def test_images_are_normalised_rows(model):
    result = encode_images(model, PHOTOS, batch_size=8, progress=False)
    assert result.shape == (len(PHOTOS), DIM)
    assert result.dtype == np.float32
    assert np.allclose(np.linalg.norm(result, axis=1), 1.0, atol=1e-5)


def test_embedding_dim_of_tiny_model(model):
    assert embedding_dim(model) == DIM


def test_batch_size_does_not_change_result(model):
    one = encode_images(model, PHOTOS, batch_size=1, progress=False)
    many = encode_images(model, PHOTOS, batch_size=64, progress=False)
    assert np.allclose(one, many, atol=1e-5)


def test_loader_workers_match_in_process(model, tmp_path):
    alone = encode_images(model, PHOTOS, batch_size=4, progress=False)
    with EmbeddingCache(tmp_path / "cache") as cache:
        pooled = encode_images(
            model, PHOTOS, batch_size=4, workers=2, progress=False, cache=cache
        )
    assert np.allclose(alone, pooled, atol=1e-6)


def test_matches_open_clip_encode_image(model):
    expected = [
        model.model.encode_image(
            model.preprocess(embeddings.open_rgb(path))[None], normalize=True
        )
        .detach()
        .numpy()[0]
        for path in PHOTOS[:4]
    ]
    result = encode_images(model, PHOTOS[:4], progress=False)
    assert np.allclose(result, np.stack(expected), atol=1e-5)


def test_pixels_stream_in_batches(model, monkeypatch):
    """At each forward pass at most one more batch has been preprocessed."""
    preprocessed = 0
    seen_at_forward: list[int] = []
    real_preprocess = model.preprocess
    real_encode = model.model.encode_image

    def counting_preprocess(image):
        nonlocal preprocessed
        preprocessed += 1
        return real_preprocess(image)

    def recording_encode(pixels, *args, **kwargs):
        seen_at_forward.append(preprocessed)
        return real_encode(pixels, *args, **kwargs)

    monkeypatch.setattr(model, "preprocess", counting_preprocess)
    monkeypatch.setattr(model.model, "encode_image", recording_encode)
    encode_images(model, PHOTOS, batch_size=4, progress=False)
    assert seen_at_forward == [4, 8, 12, 16, 20]


def test_unreadable_images_reported_together(model, tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 not really a jpeg")
    text = tmp_path / "notes.jpg"
    text.write_text("plain text")
    paths = [*PHOTOS[:3], broken, PHOTOS[3], text]
    with pytest.raises(ImageLoadError, match=r"2 image\(s\) could not be read") as info:
        encode_images(model, paths, batch_size=2, progress=False)
    assert [path for path, _ in info.value.failures] == [broken, text]


def test_unreadable_image_with_cache_is_not_stored(model, tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 not really a jpeg")
    with EmbeddingCache(tmp_path / "cache") as cache:
        for _ in range(2):
            with pytest.raises(ImageLoadError, match=r"broken\.jpg: "):
                encode_images(
                    model,
                    [*PHOTOS[:4], broken],
                    batch_size=4,
                    progress=False,
                    cache=cache,
                )
        assert len(cache) == 4


def test_missing_image_is_named(model, tmp_path):
    missing = tmp_path / "gone.jpg"
    with pytest.raises(ImageLoadError, match=r"gone\.jpg: file not found"):
        encode_images(model, [PHOTOS[0], missing], progress=False)


def test_empty_path_list(model):
    assert encode_images(model, [], progress=False).shape == (0, DIM)


def test_bf16_on_cpu_runs_fp32(model):
    full = encode_images(model, PHOTOS[:6], progress=False)
    requested = encode_images(model, PHOTOS[:6], progress=False, precision="bf16")
    assert np.array_equal(full, requested)


def test_unknown_precision_is_rejected(model):
    with pytest.raises(ValueError, match="precision must be one of fp32, bf16, fp16"):
        encode_images(model, PHOTOS[:2], progress=False, precision="fp8")


def test_quiet_without_progress(model, capsys):
    encode_images(model, PHOTOS[:4], batch_size=2, progress=False)
    captured = capsys.readouterr()
    assert captured.err == ""
    assert captured.out == ""


def test_progress_bar_on_stderr(model, capsys):
    encode_images(model, PHOTOS[:4], batch_size=2, progress=True, desc="catalog")
    assert "catalog" in capsys.readouterr().err


def test_image_paths_may_be_strings(model, tmp_path):
    copies = [shutil.copy2(path, tmp_path / path.name) for path in PHOTOS[:3]]
    as_text = encode_images(model, [str(path) for path in copies], progress=False)
    assert np.allclose(as_text, encode_images(model, PHOTOS[:3], progress=False))


# -- texts -----------------------------------------------------------------------


def test_texts_are_normalised_rows(model):
    prompts = ["casual shoes with white shoelace", "heels", "a photo of a sandal"]
    result = encode_texts(model, prompts, batch_size=2)
    assert result.shape == (3, DIM)
    assert np.allclose(np.linalg.norm(result, axis=1), 1.0, atol=1e-5)
    alone = encode_texts(model, prompts[1:2])
    assert np.allclose(result[1], alone[0], atol=1e-6)


def test_no_texts(model):
    assert encode_texts(model, []).shape == (0, DIM)


# -- top_k -----------------------------------------------------------------------


def reference_top_k(similarity: np.ndarray, k: int) -> np.ndarray:
    """Sort each row by (score descending, gallery index ascending), one at a time."""
    return np.array(
        [
            sorted(range(len(row)), key=lambda j, row=row: (-row[j], j))[:k]
            for row in similarity
        ]
    ).reshape(len(similarity), min(k, similarity.shape[1]))


def test_top_k_hand_table():
    # Gallery rows 1 and 3 tie with the query, rows 0 and 2 tie below them.
    queries = np.array([[1.0, 0.0]], dtype=np.float32)
    gallery = np.array(
        [[0.0, 1.0], [1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [-1.0, 0.0]],
        dtype=np.float32,
    )
    indices, scores = top_k(queries, gallery, k=4)
    assert indices.tolist() == [[1, 3, 0, 2]]
    assert scores.tolist() == [[1.0, 1.0, 0.0, 0.0]]
    assert indices.dtype == np.int64
    assert scores.dtype == np.float32


def test_top_k_tie_at_cutoff():
    queries = np.ones((1, 1), dtype=np.float32)
    gallery = np.ones((6, 1), dtype=np.float32)
    indices, _ = top_k(queries, gallery, k=3)
    assert indices.tolist() == [[0, 1, 2]]


def test_top_k_excluded_rows_come_last():
    queries = np.array([[1.0, 0.0]], dtype=np.float32)
    gallery = np.array([[1.0, 0.0], [0.5, 0.5], [0.0, 1.0]], dtype=np.float32)
    exclude = np.array([[True, False, True]])
    indices, scores = top_k(queries, gallery, k=3, exclude=exclude)
    assert indices.tolist() == [[1, 0, 2]]
    assert scores[0, 0] == pytest.approx(0.5)
    assert np.isneginf(scores[0, 1:]).all()


def test_top_k_larger_than_gallery():
    indices, scores = top_k(
        np.eye(2, dtype=np.float32), np.eye(2, dtype=np.float32), k=5
    )
    assert indices.tolist() == [[0, 1], [1, 0]]
    assert scores.shape == (2, 2)


def test_top_k_zero():
    indices, scores = top_k(
        np.eye(2, dtype=np.float32), np.eye(2, dtype=np.float32), k=0
    )
    assert indices.shape == (2, 0)
    assert scores.shape == (2, 0)


@settings(max_examples=150, deadline=None)
@given(
    data=st.data(),
    queries=st.integers(1, 6),
    gallery=st.integers(1, 12),
    width=st.integers(1, 3),
    k=st.integers(1, 14),
)
def test_top_k_matches_reference(data, queries, gallery, width, k):
    # Small integer vectors give exact float32 scores with many ties.
    values = st.integers(-2, 2)
    q = data.draw(hnp.arrays(np.float32, (queries, width), elements=values))
    g = data.draw(hnp.arrays(np.float32, (gallery, width), elements=values))
    exclude = data.draw(hnp.arrays(np.bool_, (queries, gallery)))
    similarity = np.where(exclude, -np.inf, q.astype(np.int64) @ g.astype(np.int64).T)
    indices, scores = top_k(q, g, k=k, exclude=exclude)
    expected = reference_top_k(similarity, k)
    assert indices.tolist() == expected.tolist()
    assert np.array_equal(scores, np.take_along_axis(similarity, expected, axis=1))


def test_top_k_in_blocks_matches_whole(monkeypatch):
    rng = np.random.default_rng(0)
    q = rng.integers(-2, 3, size=(37, 4)).astype(np.float32)
    g = rng.integers(-2, 3, size=(50, 4)).astype(np.float32)
    whole = top_k(q, g, k=7)
    monkeypatch.setattr(embeddings, "_TOP_K_BLOCK_ELEMENTS", 120)  # 2 queries a block
    blocked = top_k(q, g, k=7)
    assert np.array_equal(whole[0], blocked[0])
    assert np.array_equal(whole[1], blocked[1])


def test_top_k_rejects_mismatched_width():
    with pytest.raises(ValueError, match=r"same D; got queries \(1, 3\) and gallery"):
        top_k(np.ones((1, 3)), np.ones((4, 2)), k=1)


def test_top_k_rejects_negative_k():
    with pytest.raises(ValueError, match="k must be at least 0; got -1"):
        top_k(np.ones((1, 2)), np.ones((4, 2)), k=-1)


def test_top_k_rejects_nan():
    gallery = np.ones((4, 2))
    gallery[2, 1] = np.nan
    with pytest.raises(ValueError, match="must not contain NaN"):
        top_k(np.ones((1, 2)), gallery, k=1)


def test_top_k_rejects_bad_mask():
    with pytest.raises(ValueError, match=r"exclude must be a boolean array of shape"):
        top_k(np.ones((2, 2)), np.ones((4, 2)), k=1, exclude=np.zeros((2, 3), bool))
