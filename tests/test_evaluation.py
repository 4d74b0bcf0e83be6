"""Tests for the metric and retrieval scoring functions in pytest_modelqa.evaluation."""

from __future__ import annotations

import itertools
import warnings

import numpy as np
import pytest
import sklearn.metrics
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from pytest_modelqa import evaluation
from pytest_modelqa.evaluation import MetricWarning

# -- strategies ---------------------------------------------------------------------


@st.composite
def scored_items(draw, max_items: int = 30, max_classes: int = 9):
    """Draw (y_true, scores) with integer-valued scores, so that ties are common."""
    n_items = draw(st.integers(1, max_items))
    n_classes = draw(st.integers(1, max_classes))
    scores = draw(
        hnp.arrays(np.float64, (n_items, n_classes), elements=st.integers(-3, 3))
    )
    y_true = draw(
        hnp.arrays(np.int64, (n_items,), elements=st.integers(0, n_classes - 1))
    )
    return y_true, scores


result_flags = st.lists(st.tuples(st.booleans(), st.booleans()), min_size=1, max_size=8)


def split_flags(flags):
    category_ok = np.array([category for category, _ in flags], dtype=bool)
    attribute_ok = np.array([attribute for _, attribute in flags], dtype=bool)
    return category_ok, attribute_ok


# -- slow reference -----------------------------------------------------------------


def reference_ranks(y_true, scores) -> list[int]:
    """Rank each row by sorting (−score, column) pairs in plain Python."""
    ranks = []
    for row, truth in zip(scores.tolist(), y_true.tolist(), strict=True):
        order = sorted(range(len(row)), key=lambda column: (-row[column], column))
        ranks.append(order.index(truth) + 1)
    return ranks


def reference_top_k(ranks: list[int], k: int) -> float:
    return sum(1 for rank in ranks if rank <= k) / len(ranks)


def reference_rank_score(ranks: list[int]) -> int:
    total = 0
    for rank in ranks:
        if rank <= 5:
            total += 6 - rank
    return total


# -- the worked examples ------------------------------------------------------------


def test_rank_score_worked_example():
    classes = ["black", "brown", "pink", "purple", "red", "white"]
    # Ranking pink, red, brown, black, purple, white.
    scores = np.array([[0.30, 0.32, 0.40, 0.20, 0.35, 0.10]])
    y_true = np.array([classes.index("red")])
    order = evaluation.rank_classes(scores)[0]
    assert [classes[i] for i in order[:5]] == [
        "pink",
        "red",
        "brown",
        "black",
        "purple",
    ]
    ranks = evaluation.true_class_ranks(y_true, scores)
    assert ranks.tolist() == [2]
    assert evaluation.rank_score(ranks) == 4


def test_retrieval_method_1_worked_example():
    category_ok, attribute_ok = evaluation.judge_results(
        ["Casual Shoes"] * 5,
        ["brown", "white", "brown", "brown", "beige"],
        category="Casual Shoes",
        attribute="brown",
    )
    points = evaluation.retrieval_points(category_ok, attribute_ok)
    assert points[1].tolist() == [3, 2, 3, 3, 2]
    assert evaluation.retrieval_scores(category_ok, attribute_ok)[1] == 13


def test_judge_results_flags():
    category_ok, attribute_ok = evaluation.judge_results(
        ["Casual Shoes", "Heels", "Casual Shoes"],
        ["brown", "brown", "white"],
        category="Casual Shoes",
        attribute="brown",
    )
    assert category_ok.tolist() == [True, False, True]
    assert attribute_ok.tolist() == [True, True, False]


# -- rank points and ranks ----------------------------------------------------------


@pytest.mark.parametrize(
    ("rank", "points"), [(1, 5), (2, 4), (3, 3), (4, 2), (5, 1), (6, 0), (40, 0)]
)
def test_rank_points_table(rank, points):
    assert evaluation.rank_points(np.array([rank])).tolist() == [points]


def test_top_k_accuracy_hand_table():
    ranks = np.array([1, 2, 2, 3, 7])
    assert evaluation.top_k_accuracy(ranks, k=1) == pytest.approx(0.2)
    assert evaluation.top_k_curve(ranks, max_k=4) == pytest.approx([0.2, 0.6, 0.8, 0.8])
    assert evaluation.top_k_accuracy(ranks, k=7) == 1.0
    assert evaluation.rank_score(ranks) == 5 + 4 + 4 + 3 + 0


def test_zero_shot_is_top_1():
    scores = np.array([[0.9, 0.1, 0.0], [0.2, 0.3, 0.5], [0.4, 0.4, 0.1]])
    y_true = np.array([0, 1, 1])
    ranks = evaluation.true_class_ranks(y_true, scores)
    predictions = evaluation.rank_classes(scores)[:, 0]
    zero_shot = float(np.mean(predictions == y_true))
    assert evaluation.top_k_accuracy(ranks, k=1) == zero_shot
    assert evaluation.top_k_curve(ranks, max_k=3)[0] == zero_shot


# -- tie-breaking -------------------------------------------------------------------


def test_ties_rank_lower_column_first():
    scores = np.array([[0.5, 0.5, 0.5, 0.5], [0.1, 0.7, 0.7, 0.2]])
    assert evaluation.rank_classes(scores).tolist() == [[0, 1, 2, 3], [1, 2, 3, 0]]


def test_ties_give_true_class_column_rank():
    scores = np.full((4, 4), 0.25)
    ranks = evaluation.true_class_ranks(np.array([0, 1, 2, 3]), scores)
    assert ranks.tolist() == [1, 2, 3, 4]


def test_tie_at_top_predicts_lower_column():
    scores = np.array([[0.1, 0.8, 0.8]])
    assert evaluation.true_class_ranks(np.array([1]), scores).tolist() == [1]
    assert evaluation.true_class_ranks(np.array([2]), scores).tolist() == [2]


# -- comparison with the slow reference ---------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ranks_match_reference(seed):
    rng = np.random.default_rng(seed)
    n_items, n_classes = 300, 11
    # Rounded scores make ties frequent, continuous ones make them rare.
    scores = np.round(rng.normal(size=(n_items, n_classes)), 1)
    y_true = rng.integers(0, n_classes, size=n_items)
    expected = reference_ranks(y_true, scores)
    ranks = evaluation.true_class_ranks(y_true, scores)
    assert ranks.tolist() == expected
    for k in range(1, n_classes + 1):
        assert evaluation.top_k_accuracy(ranks, k=k) == reference_top_k(expected, k)
    assert evaluation.rank_score(ranks) == reference_rank_score(expected)


# -- retrieval methods: hand-checkable tables ---------------------------------------

T, F = True, False

RETRIEVAL_TABLE = [
    # category_ok, attribute_ok, per-result points of methods 1 to 4
    (
        [T, T, F, F, T],
        [T, F, T, F, T],
        {
            1: [3, 2, 1, 0, 3],
            2: [1, 0, 1, 0, 1],
            3: [5, 0, 0, 0, 1],
            4: [5, 0, 3, 0, 1],
        },
    ),
    (
        [T] * 5,
        [T] * 5,
        {1: [3] * 5, 2: [1] * 5, 3: [5, 4, 3, 2, 1], 4: [5, 4, 3, 2, 1]},
    ),
    ([F] * 5, [F] * 5, {1: [0] * 5, 2: [0] * 5, 3: [0] * 5, 4: [0] * 5}),
    ([T] * 5, [F] * 5, {1: [2] * 5, 2: [0] * 5, 3: [0] * 5, 4: [0] * 5}),
    ([F] * 5, [T] * 5, {1: [1] * 5, 2: [1] * 5, 3: [0] * 5, 4: [5, 4, 3, 2, 1]}),
    (
        [F, T, T, T, T],
        [T, F, T, T, F],
        {
            1: [1, 2, 3, 3, 2],
            2: [1, 0, 1, 1, 0],
            3: [0, 0, 3, 2, 0],
            4: [5, 0, 3, 2, 0],
        },
    ),
    # Seven results: positions beyond 5 earn nothing in methods 3 and 4.
    (
        [T] * 7,
        [T] * 7,
        {1: [3] * 7, 2: [1] * 7, 3: [5, 4, 3, 2, 1, 0, 0], 4: [5, 4, 3, 2, 1, 0, 0]},
    ),
]


@pytest.mark.parametrize(("category_ok", "attribute_ok", "expected"), RETRIEVAL_TABLE)
def test_retrieval_points_table(category_ok, attribute_ok, expected):
    points = evaluation.retrieval_points(np.array(category_ok), np.array(attribute_ok))
    assert sorted(points) == [1, 2, 3, 4]
    for method in evaluation.RETRIEVAL_METHODS:
        assert points[method].tolist() == expected[method], f"method {method}"


@pytest.mark.parametrize(("category_ok", "attribute_ok", "expected"), RETRIEVAL_TABLE)
def test_retrieval_scores_sum_points(category_ok, attribute_ok, expected):
    totals = evaluation.retrieval_scores(np.array(category_ok), np.array(attribute_ok))
    assert totals == {method: sum(values) for method, values in expected.items()}


@pytest.mark.parametrize(
    ("k", "expected"),
    [
        (5, {1: 15, 2: 5, 3: 15, 4: 15}),
        (3, {1: 9, 2: 3, 3: 12, 4: 12}),
        (7, {1: 21, 2: 7, 3: 15, 4: 15}),
    ],
)
def test_max_retrieval_scores(k, expected):
    assert evaluation.max_retrieval_scores(k) == expected


# -- classification report ----------------------------------------------------------


def test_classification_report_hand_values():
    report = evaluation.classification_report(
        ["a", "a", "b", "c"], ["a", "b", "b", "c"], labels=["a", "b", "c"]
    )
    assert report["a"] == {
        "precision": 1.0,
        "recall": 0.5,
        "f1-score": 2 / 3,
        "support": 2.0,
    }
    assert report["b"]["precision"] == 0.5
    assert report["b"]["recall"] == 1.0
    assert report["c"]["f1-score"] == 1.0
    assert report["accuracy"] == 0.75
    assert report["macro avg"]["f1-score"] == pytest.approx((2 / 3 + 2 / 3 + 1) / 3)
    assert report["weighted avg"]["f1-score"] == pytest.approx(
        (2 * 2 / 3 + 2 / 3 + 1) / 4
    )


@pytest.mark.parametrize("seed", [0, 1])
def test_classification_report_equals_sklearn(seed):
    rng = np.random.default_rng(seed)
    labels = ["beige", "black", "brown", "grey", "red", "white"]
    # Imbalanced truth, and predictions right about 60 % of the time.
    y_true = rng.choice(labels, size=400, p=[0.4, 0.25, 0.15, 0.1, 0.06, 0.04])
    guesses = rng.choice(labels, size=400)
    y_pred = np.where(rng.random(400) < 0.6, y_true, guesses)
    report = evaluation.classification_report(
        y_true.tolist(), y_pred.tolist(), labels=labels
    )
    expected = sklearn.metrics.classification_report(
        y_true.tolist(),
        y_pred.tolist(),
        labels=labels,
        output_dict=True,
        zero_division=0.0,
    )
    assert report == expected


def test_classification_report_label_order_kept():
    report = evaluation.classification_report(["b", "a"], ["b", "a"], labels=["b", "a"])
    assert list(report)[:2] == ["b", "a"]


def test_class_never_predicted_warns():
    message = r"classes never predicted: c; their precision is set to 0\.0"
    with pytest.warns(MetricWarning, match=message):
        report = evaluation.classification_report(
            ["a", "b", "c"], ["a", "b", "b"], labels=["a", "b", "c"]
        )
    assert report["c"]["precision"] == 0.0
    assert report["c"]["recall"] == 0.0
    assert report["c"]["support"] == 1.0


def test_class_without_test_items_warns():
    with pytest.warns(
        MetricWarning, match=r"classes with no test items: c; their recall is set to 1"
    ):
        report = evaluation.classification_report(
            ["a", "b", "b"], ["a", "b", "c"], labels=["a", "b", "c"], zero_division=1.0
        )
    assert report["c"]["recall"] == 1.0
    # Predicted but never true: one false positive, so precision and F1 are 0.
    assert report["c"]["precision"] == 0.0
    assert report["c"]["f1-score"] == 0.0
    assert report["c"]["support"] == 0.0


def test_class_absent_everywhere_warns():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = evaluation.classification_report(
            ["a", "b"], ["a", "b"], labels=["a", "b", "c"], zero_division=1.0
        )
    messages = [str(w.message) for w in caught]
    assert all(w.category is MetricWarning for w in caught), messages
    assert len(messages) == 3, messages
    assert "classes with no test items: c; their recall is set to 1.0" in messages
    assert "classes never predicted: c; their precision is set to 1.0" in messages
    assert (
        "classes neither in the test items nor predicted: c; their F1 is set to 1.0"
        in messages
    )
    assert report["c"] == {
        "precision": 1.0,
        "recall": 1.0,
        "f1-score": 1.0,
        "support": 0.0,
    }
    assert report["accuracy"] == 1.0


def test_report_complete_no_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        evaluation.classification_report(["a", "b"], ["b", "a"], labels=["a", "b"])


# -- input errors -------------------------------------------------------------------


def test_scores_must_be_2d():
    message = r"scores must be a 2-D array \(N, C\); got shape \(3,\)"
    with pytest.raises(ValueError, match=message):
        evaluation.true_class_ranks(np.array([0]), np.array([0.1, 0.2, 0.3]))
    with pytest.raises(ValueError, match=r"scores must be a 2-D array"):
        evaluation.rank_classes(np.zeros(3))


def test_y_true_shape_must_match_scores():
    with pytest.raises(
        ValueError, match=r"y_true must have shape \(2,\) to match scores; got \(3,\)"
    ):
        evaluation.true_class_ranks(np.array([0, 1, 0]), np.zeros((2, 4)))


def test_y_true_must_index_columns():
    message = r"y_true holds class indices in \[0, 4\); got values from 0 to 4"
    with pytest.raises(ValueError, match=message):
        evaluation.true_class_ranks(np.array([0, 4]), np.zeros((2, 4)))
    with pytest.raises(ValueError, match=r"got values from -1 to 1"):
        evaluation.true_class_ranks(np.array([-1, 1]), np.zeros((2, 4)))


def test_non_finite_scores_rejected():
    scores = np.zeros((3, 2))
    scores[1, 0] = np.nan
    scores[2, 1] = np.inf
    message = (
        r"scores must be finite; got NaN or infinite values in 2 of 3 rows, "
        r"first at row 1"
    )
    with pytest.raises(ValueError, match=message):
        evaluation.true_class_ranks(np.array([0, 0, 0]), scores)
    with pytest.raises(ValueError, match=r"scores must be finite"):
        evaluation.rank_classes(scores)


def test_top_k_errors():
    with pytest.raises(ValueError, match=r"k must be at least 1; got 0"):
        evaluation.top_k_accuracy(np.array([1, 2]), k=0)
    with pytest.raises(ValueError, match=r"ranks is empty: no items to score"):
        evaluation.top_k_accuracy(np.array([], dtype=int), k=1)
    with pytest.raises(ValueError, match=r"max_k must be at least 1; got 0"):
        evaluation.top_k_curve(np.array([1, 2]), max_k=0)


def test_retrieval_points_shape_error():
    message = (
        r"category_ok and attribute_ok must be 1-D arrays of one shape; "
        r"got \(5,\) and \(4,\)"
    )
    with pytest.raises(ValueError, match=message):
        evaluation.retrieval_points(np.ones(5, bool), np.ones(4, bool))
    with pytest.raises(ValueError, match=r"got \(1, 5\) and \(1, 5\)"):
        evaluation.retrieval_points(np.ones((1, 5), bool), np.ones((1, 5), bool))


def test_accuracy_values_and_errors():
    assert evaluation.accuracy(["a", "b", "c", "c"], ["a", "b", "b", "c"]) == 0.75
    assert evaluation.accuracy(np.array(["a", "b"]), np.array(["a", "a"])) == 0.5
    with pytest.raises(
        ValueError, match=r"y_true and y_pred must have the same length; got 2 and 1"
    ):
        evaluation.accuracy(["a", "b"], ["a"])
    with pytest.raises(ValueError, match=r"y_true is empty: no items to score"):
        evaluation.accuracy([], [])
    with pytest.raises(ValueError, match=r"y_true is empty"):
        evaluation.accuracy(np.array([]), np.array([]))


def test_classification_report_errors():
    with pytest.raises(
        ValueError, match=r"y_true and y_pred must have the same length; got 2 and 3"
    ):
        evaluation.classification_report(["a", "b"], ["a", "b", "b"], labels=["a"])
    with pytest.raises(ValueError, match=r"y_true is empty: no items to score"):
        evaluation.classification_report([], [], labels=["a"])
    message = r"y_pred contains values missing from labels: x; add them to labels"
    with pytest.raises(ValueError, match=message):
        evaluation.classification_report(["a", "b"], ["a", "x"], labels=["a", "b"])
    with pytest.raises(ValueError, match=r"y_true contains values missing .*: q, z"):
        evaluation.classification_report(["z", "q"], ["a", "a"], labels=["a"])


# -- properties ---------------------------------------------------------------------


@settings(deadline=None, max_examples=60)
@given(scored_items())
def test_top_k_never_falls_as_k_grows(items):
    y_true, scores = items
    ranks = evaluation.true_class_ranks(y_true, scores)
    curve = evaluation.top_k_curve(ranks, max_k=scores.shape[1])
    assert all(low <= high for low, high in itertools.pairwise(curve))
    assert curve[-1] == 1.0


@settings(deadline=None, max_examples=60)
@given(scored_items())
def test_rank_score_bounds(items):
    y_true, scores = items
    ranks = evaluation.true_class_ranks(y_true, scores)
    assert 0 <= evaluation.rank_score(ranks) <= 5 * len(y_true)
    assert ranks.min() >= 1
    assert ranks.max() <= scores.shape[1]


@settings(deadline=None, max_examples=60)
@given(scored_items())
def test_vectorised_ranks_match_reference(items):
    y_true, scores = items
    assert evaluation.true_class_ranks(y_true, scores).tolist() == reference_ranks(
        y_true, scores
    )


@settings(deadline=None, max_examples=40)
@given(scored_items(), st.randoms(use_true_random=False))
def test_figures_ignore_item_order(items, random):
    y_true, scores = items
    order = list(range(len(y_true)))
    random.shuffle(order)
    ranks = evaluation.true_class_ranks(y_true, scores)
    shuffled = evaluation.true_class_ranks(y_true[order], scores[order])
    max_k = scores.shape[1]
    assert shuffled.tolist() == ranks[order].tolist()
    assert evaluation.top_k_curve(shuffled, max_k=max_k) == pytest.approx(
        evaluation.top_k_curve(ranks, max_k=max_k)
    )
    assert evaluation.rank_score(shuffled) == evaluation.rank_score(ranks)
    labels = [f"class {i}" for i in range(max_k)]
    truth = [labels[i] for i in y_true]
    predicted = [labels[i] for i in evaluation.rank_classes(scores)[:, 0]]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MetricWarning)
        report = evaluation.classification_report(truth, predicted, labels=labels)
        shuffled_report = evaluation.classification_report(
            [truth[i] for i in order], [predicted[i] for i in order], labels=labels
        )
    for key in [*labels, "macro avg", "weighted avg"]:
        assert shuffled_report[key] == pytest.approx(report[key]), key
    assert shuffled_report["accuracy"] == pytest.approx(report["accuracy"])


@settings(deadline=None, max_examples=80)
@given(result_flags)
def test_method_3_never_exceeds_method_4(flags):
    totals = evaluation.retrieval_scores(*split_flags(flags))
    assert totals[3] <= totals[4]


@settings(deadline=None, max_examples=80)
@given(st.lists(st.tuples(st.booleans(), st.booleans()), min_size=5, max_size=5))
def test_case_of_five_within_maxima(flags):
    totals = evaluation.retrieval_scores(*split_flags(flags))
    maxima = evaluation.max_retrieval_scores(5)
    assert 0 <= totals[2] <= 5
    for method in evaluation.RETRIEVAL_METHODS:
        assert 0 <= totals[method] <= maxima[method], f"method {method}"


@settings(deadline=None, max_examples=80)
@given(result_flags)
def test_method_1_counts_each_flag(flags):
    category_ok, attribute_ok = split_flags(flags)
    totals = evaluation.retrieval_scores(category_ok, attribute_ok)
    # Method 1 gives 2 per correct category plus 1 per correct attribute.
    assert totals[1] == 2 * category_ok.sum() + attribute_ok.sum()
    assert totals[2] == attribute_ok.sum()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_class_scores_equal_sklearn(seed):
    rng = np.random.default_rng(seed)
    n_classes = 7
    # Class 6 never occurs and class 5 is never predicted, so the zero_division
    # paths run too.
    y_true = rng.choice(6, size=300, p=[0.4, 0.25, 0.15, 0.1, 0.06, 0.04])
    y_pred = np.where(rng.random(300) < 0.5, y_true, rng.choice(5, size=300))
    precision, recall, f1, support = evaluation.class_scores(
        y_true, y_pred, n_classes=n_classes
    )
    expected = sklearn.metrics.precision_recall_fscore_support(
        y_true, y_pred, labels=list(range(n_classes)), zero_division=0.0
    )
    for name, mine, theirs in zip(
        ("precision", "recall", "f1", "support"),
        (precision, recall, f1, support),
        expected,
        strict=True,
    ):
        assert mine.tolist() == theirs.tolist(), name


@pytest.mark.parametrize("seed", [0, 1])
def test_averaged_scores_equal_report(seed):
    rng = np.random.default_rng(seed)
    labels = list(range(6))
    y_true = rng.choice(5, size=200)
    y_pred = np.where(rng.random(200) < 0.5, y_true, rng.choice(6, size=200))
    figures = evaluation.averaged_scores(y_true, y_pred, n_classes=6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MetricWarning)
        report = evaluation.classification_report(
            y_true.tolist(), y_pred.tolist(), labels=labels
        )
    assert figures["macro_precision"] == pytest.approx(
        report["macro avg"]["precision"], rel=1e-12
    )
    assert figures["macro_recall"] == pytest.approx(
        report["macro avg"]["recall"], rel=1e-12
    )
    assert figures["macro_f1"] == pytest.approx(report["macro avg"]["f1-score"], rel=1e-12)
    assert figures["weighted_f1"] == pytest.approx(
        report["weighted avg"]["f1-score"], rel=1e-12
    )
