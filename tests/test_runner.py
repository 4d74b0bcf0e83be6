"""Figures of one suite computed directly: self-exclusion, prompts and sharing."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import copy_catalog_sample, write_tiny_checkpoint

from pytest_modelqa.runner import BaselineError, EncodeOptions, ModelPool, SuiteRunner
from pytest_modelqa.suite import load_suite

SUITE = """\
catalog: catalog
columns: {category: category, attribute: shoelace_colour}
attribute: {prompt: "{category} with {value} shoelace"}
retrieval: {min_matches: 2, cases: cases.yaml}
"""


@pytest.fixture
def setup(tmp_path: Path):
    root = tmp_path / "suite"
    catalog = copy_catalog_sample("footwear", root / "catalog",
                                  per_split={"train": 30, "test": 50})
    frame = pd.read_csv(catalog / "manifest.csv", dtype=str, keep_default_na=False)
    query = frame[(frame["category"] == "Casual Shoes")
                  & (frame["shoelace_colour"] == "white")].iloc[0]
    (root / "images").mkdir()
    shutil.copy2(catalog / query["image"], root / "images" / "query.jpg")
    (root / "modelqa-suite.yaml").write_text(SUITE)
    (root / "cases.yaml").write_text(
        "cases:\n"
        "  - {id: own, image: images/query.jpg, category: Casual Shoes, "
        "attribute: white, k: 80}\n"
        "  - {id: text, text: casual shoes with white shoelace, category: Casual Shoes, "
        "attribute: white}\n"
    )
    suite = load_suite(root / "modelqa-suite.yaml", catalog_dirs=[])
    spec = str(write_tiny_checkpoint(tmp_path / "model.pt"))
    runner = SuiteRunner(suite, ModelPool(EncodeOptions(progress=False)), spec, {"c": spec})
    return runner, spec, query["id"], frame


def test_image_query_never_returns_itself(setup):
    runner, spec, query_id, frame = setup
    own = runner.figures(spec).retrieval["own"]
    # k above the gallery size returns every product but the query's own one.
    assert query_id not in own.result_ids
    assert len(own.result_ids) == len(frame) - 1


def test_image_query_does_not_count_itself_as_a_match(setup):
    runner, _, _, frame = setup
    cases = {case.id: case for case in runner.suite.cases}
    laced_white = ((frame["category"] == "Casual Shoes")
                   & (frame["shoelace_colour"] == "white")).sum()
    assert runner.match_count(cases["text"])[0] == laced_white
    assert runner.match_count(cases["own"])[0] == laced_white - 1


def test_exact_duplicate_image_is_excluded_too(setup, tmp_path):
    runner, spec, query_id, frame = setup
    catalog = runner.suite.catalog
    row = frame.index[frame["id"] == query_id][0]
    duplicate = frame.iloc[(row + 1) % len(frame)]
    shutil.copy2(catalog.root / frame.loc[row, "image"], catalog.root / duplicate["image"])
    runner._image_hashes = None
    runner._matches.clear()
    own = runner.figures(spec).retrieval["own"]
    assert duplicate["id"] not in own.result_ids
    assert len(own.result_ids) == len(frame) - 2


def test_points_follow_judgements(setup):
    runner, spec, _, _ = setup
    result = runner.figures(spec).retrieval["text"]
    for position, (cat_ok, attr_ok) in enumerate(
        zip(result.category_ok, result.attribute_ok, strict=True)
    ):
        expected = 3 if cat_ok and attr_ok else 2 if cat_ok else 1 if attr_ok else 0
        assert result.points[1][position] == expected
    assert result.scores[2] == sum(result.attribute_ok)


def test_classification_uses_test_split_laced_items(setup):
    runner, spec, _, frame = setup
    figures = runner.figures(spec).classification
    expected = frame[(frame["split"] == "test") & (frame["shoelace_colour"] != "none")]
    assert figures["ids"] == expected["id"].tolist()
    assert "none" not in figures["classes"]
    assert figures["top_k"][0] == figures["zero_shot_accuracy"]
    assert np.all(np.diff(figures["top_k"]) >= 0)
    assert 0 <= figures["rank_score"] <= 5 * len(expected)


def test_bundled_shoelace_suite_cases():
    from pytest_modelqa.catalog import FIXTURES_DIR

    suite_file = FIXTURES_DIR.parent / "suites" / "shoelace" / "modelqa-suite.yaml"
    suite = load_suite(suite_file, catalog_dirs=[FIXTURES_DIR])
    runner = SuiteRunner(suite, ModelPool(EncodeOptions(progress=False)), "", {})
    counts = {case.id: runner.match_count(case)[0] for case in suite.cases}
    text = [case for case in suite.cases if case.text is not None]
    automated = [case for case in text if counts[case.id] >= suite.min_matches]
    manual = [case for case in text if counts[case.id] < suite.min_matches]
    assert suite.gallery_split == "all"
    assert len(automated) == 26
    assert {case.category for case in automated} == {
        "casual shoes",
        "sports shoes",
        "formal shoes",
    }
    assert 2 <= len(manual) <= 5
    assert all(counts[case.id] >= 1 for case in manual)

    frame = suite.catalog.frame
    images = [case for case in suite.cases if case.image is not None]
    assert images
    for case in images:
        row = frame[frame["id"] == case.image.stem].iloc[0]
        assert row["split"] == "test"
        # The query's own product is a match in the catalog but is never counted.
        own = (frame["category"].str.lower() == case.category) & (
            frame["shoelace_colour"] == case.attribute
        )
        assert counts[case.id] == own.sum() - 1


def _planted_classification(runner, spec, truth, predicted):
    """Replace the model's phase 1 predictions, keeping its other figures."""
    figures = runner.figures(spec)
    figures.classification["y_true"] = truth
    figures.classification["y_pred"] = predicted


def test_baseline_naming_one_class_looks_broken(setup):
    runner, spec, _, _ = setup
    classes = runner.figures(spec).classification["classes"]
    truth = [classes[0]] * 100 + [classes[1]] * 100
    # Always naming the majority class scores 0.5, far above uniform guessing, so
    # only the rule on predictions that ignore the image can catch it.
    _planted_classification(runner, spec, truth, [classes[0]] * len(truth))
    with pytest.raises(BaselineError, match=r"names '.*' for all 200 items"):
        runner.check_baseline_sane()


def test_baseline_near_guessing_looks_broken(setup):
    runner, spec, _, _ = setup
    classes = runner.figures(spec).classification["classes"]
    truth = [classes[i % len(classes)] for i in range(200)]
    shifted = [classes[(i + 1) % len(classes)] for i in range(200)]
    _planted_classification(runner, spec, truth, shifted)
    with pytest.raises(BaselineError, match="not above uniform guessing"):
        runner.check_baseline_sane()


def test_weak_baseline_above_guessing_is_sane(setup):
    runner, spec, _, _ = setup
    classes = runner.figures(spec).classification["classes"]
    truth = [classes[0]] * 150 + [classes[1]] * 50
    # Right on a third of the majority items only: 0.25 accuracy, far below the
    # majority share (0.75) but far above uniform guessing over the 8 classes.
    predicted = [classes[0]] * 50 + [classes[2]] * 100 + [classes[0]] * 50
    _planted_classification(runner, spec, truth, predicted)
    runner.check_baseline_sane()
