"""Metrics and retrieval scoring: plain functions on numpy arrays, no torch or pytest.

Conventions shared by every function here:

- `scores` is an (N, C) array of image-text similarities, one row per image and one
  column per class prompt; `y_true` holds class indices into those columns.
- Ties are broken by class order: when two prompts score the same for an image, the
  one with the lower column index ranks first. `rank_classes` applies the rule and
  every ranking metric derives from it, so zero-shot accuracy and top-1 accuracy are
  one computation.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
from sklearn.metrics import classification_report as _sklearn_report

RETRIEVAL_METHODS = (1, 2, 3, 4)
RANK_SCORE_POINTS = 5  # points for the true class at rank 1, falling by one per rank


class MetricWarning(UserWarning):
    """A metric that can be computed but means little for the given inputs."""


def _check_score_matrix(scores: np.ndarray) -> np.ndarray:
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 2:
        raise ValueError(f"scores must be a 2-D array (N, C); got shape {scores.shape}")
    # A NaN would sort last in every row and silently turn the ranking into column
    # order, so a broken checkpoint would score as if it predicted class 0 throughout.
    finite = np.isfinite(scores)
    if not finite.all():
        rows = np.flatnonzero(~finite.all(axis=1))
        raise ValueError(
            f"scores must be finite; got NaN or infinite values in {rows.size} of "
            f"{scores.shape[0]} rows, first at row {rows[0]}"
        )
    return scores


def _check_scores(
    y_true: np.ndarray, scores: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    scores = _check_score_matrix(scores)
    y_true = np.asarray(y_true)
    if y_true.shape != (scores.shape[0],):
        raise ValueError(
            f"y_true must have shape ({scores.shape[0]},) to match scores; "
            f"got {y_true.shape}"
        )
    if y_true.size and (y_true.min() < 0 or y_true.max() >= scores.shape[1]):
        raise ValueError(
            f"y_true holds class indices in [0, {scores.shape[1]}); "
            f"got values from {y_true.min()} to {y_true.max()}"
        )
    return y_true.astype(np.int64), scores


def rank_classes(scores: np.ndarray) -> np.ndarray:
    """Return the (N, C) class indices of each row, most similar first.

    Ties keep column order (a stable sort on the negated scores). Raises ValueError
    unless `scores` is a 2-D array of finite values.
    """
    scores = _check_score_matrix(scores)
    return np.argsort(-scores, axis=1, kind="stable")


def true_class_ranks(y_true: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Return the 1-based rank of the true class in each row of `scores`, shape (N,)."""
    y_true, scores = _check_scores(y_true, scores)
    order = rank_classes(scores)
    return np.argmax(order == y_true[:, None], axis=1) + 1


def top_k_accuracy(ranks: np.ndarray, *, k: int) -> float:
    """Return the share of items whose true class ranks within the top `k`.

    `ranks` comes from `true_class_ranks`. Top-1 accuracy is zero-shot accuracy.
    """
    ranks = np.asarray(ranks)
    if k < 1:
        raise ValueError(f"k must be at least 1; got {k}")
    if ranks.size == 0:
        raise ValueError("ranks is empty: no items to score")
    return float(np.mean(ranks <= k))


def top_k_curve(ranks: np.ndarray, *, max_k: int) -> list[float]:
    """Return top-K accuracy for K = 1..max_k."""
    if max_k < 1:
        raise ValueError(f"max_k must be at least 1; got {max_k}")
    return [top_k_accuracy(ranks, k=k) for k in range(1, max_k + 1)]


def rank_points(ranks: np.ndarray) -> np.ndarray:
    """Return per-item rank points: 5 at rank 1 down to 1 at rank 5, 0 beyond."""
    ranks = np.asarray(ranks, dtype=np.int64)
    return np.clip(RANK_SCORE_POINTS + 1 - ranks, 0, RANK_SCORE_POINTS)


def rank_score(ranks: np.ndarray) -> int:
    """Return the summed rank points over all items; the maximum is 5 x N."""
    return int(rank_points(ranks).sum())


def classification_report(
    y_true: Sequence[str],
    y_pred: Sequence[str],
    *,
    labels: Sequence[str],
    zero_division: float = 0.0,
) -> dict:
    """Return sklearn's classification report as a dict, for the given label order.

    Every label in `labels` gets a row, with support 0 when it has no true items.
    The precision of a label never predicted and the recall of a label with no true
    items would divide by zero, so they take `zero_division`. F1 takes it only for a
    label absent from both `y_true` and `y_pred`, and a label predicted but never
    true gets F1 0. A MetricWarning names the labels concerned.

    Raises ValueError when the inputs differ in length, are empty, or contain a value
    missing from `labels`. sklearn would leave such a value out of the per-class rows
    and report "micro avg" in place of "accuracy".
    """
    y_true = list(y_true)
    y_pred = list(y_pred)
    labels = list(labels)
    if len(y_true) != len(y_pred):
        raise ValueError(
            f"y_true and y_pred must have the same length; got {len(y_true)} and "
            f"{len(y_pred)}"
        )
    if not y_true:
        raise ValueError("y_true is empty: no items to score")
    known = set(labels)
    for name, values in (("y_true", y_true), ("y_pred", y_pred)):
        unknown = sorted({str(value) for value in values if value not in known})
        if unknown:
            raise ValueError(
                f"{name} contains values missing from labels: {', '.join(unknown)}; "
                "add them to labels"
            )
    true_set = set(y_true)
    pred_set = set(y_pred)
    absent_true = [label for label in labels if label not in true_set]
    absent_pred = [label for label in labels if label not in pred_set]
    if absent_true:
        warnings.warn(
            f"classes with no test items: {', '.join(map(str, absent_true))}; their "
            f"recall is set to {zero_division}",
            MetricWarning,
            stacklevel=2,
        )
    if absent_pred:
        warnings.warn(
            f"classes never predicted: {', '.join(map(str, absent_pred))}; their "
            f"precision is set to {zero_division}",
            MetricWarning,
            stacklevel=2,
        )
    absent_both = [label for label in absent_true if label not in pred_set]
    if absent_both:
        warnings.warn(
            f"classes neither in the test items nor predicted: "
            f"{', '.join(map(str, absent_both))}; their F1 is set to {zero_division}",
            MetricWarning,
            stacklevel=2,
        )
    return _sklearn_report(
        y_true,
        y_pred,
        labels=labels,
        output_dict=True,
        zero_division=zero_division,
    )


def judge_results(
    result_categories: Sequence[str],
    result_attributes: Sequence[str],
    *,
    category: str,
    attribute: str,
) -> tuple[np.ndarray, np.ndarray]:
    """Return (category_ok, attribute_ok) boolean arrays for a ranked result list."""
    category_ok = np.array(
        [value == category for value in result_categories], dtype=bool
    )
    attribute_ok = np.array(
        [value == attribute for value in result_attributes], dtype=bool
    )
    return category_ok, attribute_ok


def retrieval_points(
    category_ok: np.ndarray, attribute_ok: np.ndarray
) -> dict[int, np.ndarray]:
    """Return the per-result points of the four scoring methods, keyed 1 to 4.

    Position p counts from 1 at the top result. Per result:
    method 1: both correct 3, category only 2, attribute only 1, neither 0;
    method 2: 1 if the attribute is correct;
    method 3: 6 - p if both are correct;
    method 4: 6 - p if the attribute is correct.
    """
    category_ok = np.asarray(category_ok, dtype=bool)
    attribute_ok = np.asarray(attribute_ok, dtype=bool)
    if category_ok.shape != attribute_ok.shape or category_ok.ndim != 1:
        raise ValueError(
            "category_ok and attribute_ok must be 1-D arrays of one shape; got "
            f"{category_ok.shape} and {attribute_ok.shape}"
        )
    position_points = np.clip(6 - np.arange(1, category_ok.size + 1), 0, None)
    both = category_ok & attribute_ok
    return {
        1: np.where(both, 3, np.where(category_ok, 2, np.where(attribute_ok, 1, 0))),
        2: attribute_ok.astype(np.int64),
        3: np.where(both, position_points, 0),
        4: np.where(attribute_ok, position_points, 0),
    }


def retrieval_scores(
    category_ok: np.ndarray, attribute_ok: np.ndarray
) -> dict[int, int]:
    """Return each method's total for one case's ranked results."""
    return {
        method: int(points.sum())
        for method, points in retrieval_points(category_ok, attribute_ok).items()
    }


def max_retrieval_scores(k: int) -> dict[int, int]:
    """Return the maximum total per method for a case of `k` results."""
    perfect = np.ones(k, dtype=bool)
    return retrieval_scores(perfect, perfect)


def accuracy(y_true: Sequence[str], y_pred: Sequence[str]) -> float:
    """Return the share of positions where prediction equals truth."""
    if len(y_true) != len(y_pred):
        raise ValueError(
            f"y_true and y_pred must have the same length; got {len(y_true)} and "
            f"{len(y_pred)}"
        )
    if len(y_true) == 0:
        raise ValueError("y_true is empty: no items to score")
    return float(np.mean([a == b for a, b in zip(y_true, y_pred, strict=True)]))


def averaged_scores(
    y_true: np.ndarray, y_pred: np.ndarray, *, n_classes: int
) -> dict[str, float]:
    """Return macro precision, recall and F1 and weighted F1 from class indices.

    The same figures as `classification_report` with every class index in
    [0, n_classes) listed and zero_division 0, computed from one confusion count so
    that a bootstrap can call it a thousand times.
    """
    precision, recall, f1, true_count = class_scores(
        y_true, y_pred, n_classes=n_classes
    )
    weights = true_count / true_count.sum() if true_count.sum() else np.zeros(n_classes)
    return {
        "macro_precision": float(precision.mean()),
        "macro_recall": float(recall.mean()),
        "macro_f1": float(f1.mean()),
        "weighted_f1": float((f1 * weights).sum()),
    }


def class_scores(
    y_true: np.ndarray, y_pred: np.ndarray, *, n_classes: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Return per-class precision, recall, F1 and support, each of shape (C,).

    The per-class rows of `classification_report` for class indices in
    [0, n_classes) with zero_division 0, computed from one confusion count so that a
    bootstrap can call it a thousand times.
    """
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    true_count = np.bincount(y_true, minlength=n_classes)  # support per class
    pred_count = np.bincount(y_pred, minlength=n_classes)
    hits = np.bincount(y_true[y_true == y_pred], minlength=n_classes)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(pred_count > 0, hits / pred_count, 0.0)
        recall = np.where(true_count > 0, hits / true_count, 0.0)
        denominator = true_count + pred_count
        f1 = np.where(denominator > 0, 2 * hits / denominator, 0.0)
    return precision, recall, f1, true_count
