"""The gate's embedding cache end to end: sessions, changes, clearing, damage."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import open_clip
import pytest
from conftest import copy_catalog_sample, write_tiny_checkpoint
from PIL import Image, ImageOps

from pytest_modelqa.cache import CACHE_FILE_NAME
from pytest_modelqa.catalog import load_catalog
from pytest_modelqa.runner import EncodeOptions, ModelPool

SUITE = """\
name: cached
catalog: catalog
columns: {category: category, attribute: shoelace_colour}
attribute:
  prompt: "{category} with {value} shoelace"
  none_policy: exclude
classification:
  split: test
  top_k: 3
  checks:
    zero_shot_accuracy: {rule: better}
retrieval:
  gallery_split: all
  min_matches: 1
  cases: cases/*.yaml
"""

CASES = """\
cases:
  - id: casual-white
    text: casual shoes with white shoelace
    category: Casual Shoes
    attribute: white
  - id: query-image
    image: {image}
    category: {category}
    attribute: {attribute}
"""

# Where the cacheprovider plugin puts the embedding cache of a pytester session.
DEFAULT_CACHE = Path(".pytest_cache", "d", "modelqa-embeddings", CACHE_FILE_NAME)


@pytest.fixture(scope="module")
def catalog_sample(tmp_path_factory) -> Path:
    """Real photos: 16 footwear items, 12 of them in the test split."""
    root = tmp_path_factory.mktemp("cached-catalog")
    return copy_catalog_sample("footwear", root, per_split={"train": 4, "test": 12})


@pytest.fixture
def gate(pytester: pytest.Pytester, catalog_sample: Path):
    """Write a suite and two tiny models; return a function that runs one session."""
    suite = pytester.path / "suite"
    shutil.copytree(catalog_sample, suite / "catalog")
    query = load_catalog(suite / "catalog").frame.iloc[-1]
    (suite / "cases").mkdir()
    (suite / "cases" / "cases.yaml").write_text(
        CASES.format(
            image=f"catalog/{query['image']}",
            category=query["category"],
            attribute=query["shoelace_colour"],
        )
    )
    (suite / "modelqa-suite.yaml").write_text(SUITE)
    base = write_tiny_checkpoint(pytester.path / "base.pt", seed=0)
    other = write_tiny_checkpoint(pytester.path / "other.pt", seed=1)

    def run(*args: str) -> pytest.RunResult:
        # The tiny random models are at chance level, so the baseline check is off.
        return pytester.runpytest_inprocess(
            "-o",
            "modelqa_check_baseline=false",
            str(suite),
            "--model",
            str(other),
            "--modelqa-baseline",
            str(base),
            *args,
        )

    run.suite = suite
    return run


class ForwardCounter:
    """Count the images and texts that go through any open_clip CLIP forward pass."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch):
        self.images = 0
        self.texts = 0
        encode_image = open_clip.CLIP.encode_image
        encode_text = open_clip.CLIP.encode_text

        def counting_image(network, pixels, *args, **kwargs):
            self.images += pixels.shape[0]
            return encode_image(network, pixels, *args, **kwargs)

        def counting_text(network, tokens, *args, **kwargs):
            self.texts += tokens.shape[0]
            return encode_text(network, tokens, *args, **kwargs)

        monkeypatch.setattr(open_clip.CLIP, "encode_image", counting_image)
        monkeypatch.setattr(open_clip.CLIP, "encode_text", counting_text)

    def reset(self) -> None:
        self.images = 0
        self.texts = 0


@pytest.fixture
def forward(monkeypatch) -> ForwardCounter:
    return ForwardCounter(monkeypatch)


def assert_gated(result: pytest.RunResult) -> None:
    """Check that a session ran the gate to its verdicts, whatever they were."""
    assert result.ret in (pytest.ExitCode.OK, pytest.ExitCode.TESTS_FAILED)
    result.stdout.fnmatch_lines(["*modelqa verdicts*", "other: *"])


def test_second_session_encodes_nothing(gate, forward, pytester):
    first = gate()
    assert_gated(first)
    # 16 catalog photos per model; the query image is one of them.
    assert forward.images == 2 * 16
    assert forward.texts > 0
    assert (pytester.path / DEFAULT_CACHE).is_file()
    first.stdout.fnmatch_lines(["embedding cache *: 0 embeddings read, * computed"])
    forward.reset()
    second = gate()
    assert_gated(second)
    assert forward.images == 0
    assert forward.texts == 0
    second.stdout.fnmatch_lines(["embedding cache *: * embeddings read, 0 computed"])


def test_second_session_gives_same_verdicts(gate, pytester):
    first = gate("-rA")
    second = gate("-rA")
    lines = [line for line in first.outlines if line.startswith("other: ")]
    assert lines
    assert lines == [line for line in second.outlines if line.startswith("other: ")]


def test_changed_image_is_reencoded(gate, forward):
    gate()
    photo = sorted((gate.suite / "catalog" / "images").iterdir())[0]
    with Image.open(photo) as image:
        ImageOps.mirror(image.convert("RGB")).save(photo)
    forward.reset()
    assert_gated(gate())
    # One changed photo, once per model.
    assert forward.images == 2
    assert forward.texts == 0


def test_cache_clear_empties_cache(gate, forward):
    gate()
    first = forward.images
    forward.reset()
    assert_gated(gate("--cache-clear"))
    assert forward.images == first


def test_damaged_entry_is_recomputed(gate, forward, pytester):
    gate()
    with sqlite3.connect(pytester.path / DEFAULT_CACHE) as connection:
        (content,) = connection.execute(
            "SELECT content_sha256 FROM embeddings WHERE dim = 32 LIMIT 1"
        ).fetchone()
        connection.execute(
            "UPDATE embeddings SET vector = zeroblob(128) WHERE content_sha256 = ?",
            (content,),
        )
    connection.close()
    forward.reset()
    result = gate()
    assert_gated(result)
    # The content key is shared by both models' entries, and each image entry or
    # text entry with that key was damaged.
    assert forward.images + forward.texts == 2
    result.stdout.fnmatch_lines(["*: * embeddings read, 2 computed (2 of them *)"])


def test_no_cache_option_writes_nothing(gate, forward, pytester):
    result = gate("--modelqa-no-cache")
    assert_gated(result)
    result.stdout.fnmatch_lines(["embedding cache off (--modelqa-no-cache)"])
    assert not (pytester.path / DEFAULT_CACHE).exists()
    first = forward.images
    forward.reset()
    gate("--modelqa-no-cache")
    assert forward.images == first


def test_cache_dir_option_moves_cache(gate, forward, pytester):
    folder = pytester.path / "embeddings"
    gate("--modelqa-cache-dir", "embeddings")
    assert (folder / CACHE_FILE_NAME).is_file()
    assert not (pytester.path / DEFAULT_CACHE).exists()
    forward.reset()
    result = gate("--modelqa-cache-dir", str(folder), "--cache-clear")
    assert_gated(result)
    # --cache-clear empties pytest's own cache folder only.
    assert forward.images == 0


def test_without_cacheprovider_gate_runs_uncached(gate, forward):
    result = gate("-p", "no:cacheprovider")
    assert_gated(result)
    assert forward.images == 2 * 16
    lines = [
        line for line in result.outlines if "cacheprovider plugin is disabled" in line
    ]
    assert len(lines) == 1
    forward.reset()
    gate("-p", "no:cacheprovider")
    assert forward.images == 2 * 16


def test_progress_bars_reach_terminal(gate, monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    result = gate("-rA")
    assert any("other: catalog" in line for line in result.errlines)
    assert not any("Captured stderr" in line for line in result.outlines)


@pytest.mark.parametrize(
    ("args", "ci"), [(("-q",), None), ((), "true")], ids=["quiet", "ci"]
)
def test_progress_bars_quiet(gate, monkeypatch, args, ci):
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    result = gate(*args)
    assert_gated(result)
    assert not any("catalog" in line for line in result.errlines)


def test_pool_encodes_each_prompt_once(tmp_path, forward):
    checkpoint = write_tiny_checkpoint(tmp_path / "tiny.pt")
    pool = ModelPool(EncodeOptions(progress=False))
    first = pool.text_embeddings(str(checkpoint), ["a", "b", "a"])
    second = pool.text_embeddings(str(checkpoint), ["b", "c"])
    assert first.shape == (3, 32)
    assert second.shape == (2, 32)
    assert (first[1] == second[0]).all()
    assert forward.texts == 3


def test_pool_reads_prompts_from_cache(tmp_path, forward):
    from pytest_modelqa.cache import EmbeddingCache

    checkpoint = write_tiny_checkpoint(tmp_path / "tiny.pt")
    with EmbeddingCache(tmp_path / "cache") as cache:
        options = EncodeOptions(progress=False, cache=cache)
        ModelPool(options).text_embeddings(str(checkpoint), ["a", "b"])
        forward.reset()
        ModelPool(options).text_embeddings(str(checkpoint), ["b", "a"])
    assert forward.texts == 0
