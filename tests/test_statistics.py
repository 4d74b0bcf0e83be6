"""Tests for McNemar's exact test and the paired bootstrap."""

from __future__ import annotations

import math
import time
from fractions import Fraction

import numpy as np
import pytest
import sklearn.metrics
from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_modelqa import statistics
from pytest_modelqa.statistics import (
    above_chance_p_value,
    mcnemar_exact,
    paired_bootstrap,
    paired_bootstrap_metric,
    resolves,
)


def paired_outcomes(b: int, c: int, both_right: int = 0, both_wrong: int = 0):
    """Build (correct_candidate, correct_baseline) with the given cell counts."""
    candidate = [True] * b + [False] * c + [True] * both_right + [False] * both_wrong
    baseline = [False] * b + [True] * c + [True] * both_right + [False] * both_wrong
    return np.array(candidate), np.array(baseline)


def reference_mcnemar(b: int, c: int) -> tuple[float, float]:
    """Sum binomial(b + c, 1/2) probabilities exactly with fractions."""
    n = b + c
    if n == 0:
        return 1.0, 1.0
    pmf = [Fraction(math.comb(n, i), 2**n) for i in range(n + 1)]
    two_sided = min(Fraction(1), 2 * sum(pmf[: min(b, c) + 1]))
    better = sum(pmf[b:])
    return float(two_sided), float(better)


def reference_bootstrap(candidate, baseline, *, statistic, n_resamples, seed):
    """Resample one index vector at a time and return the differences."""
    rng = np.random.default_rng(seed)
    differences = []
    for _ in range(n_resamples):
        idx = rng.integers(0, len(candidate), size=len(candidate))
        differences.append(statistic(candidate[idx]) - statistic(baseline[idx]))
    return np.array(differences)


def numpy_macro_f1(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> float:
    """Macro F1 over classes 0..n_classes-1, 0 where a class is absent from both."""
    scores = []
    for label in range(n_classes):
        true_positive = np.count_nonzero((y_true == label) & (y_pred == label))
        false_positive = np.count_nonzero((y_true != label) & (y_pred == label))
        false_negative = np.count_nonzero((y_true == label) & (y_pred != label))
        denominator = 2 * true_positive + false_positive + false_negative
        scores.append(2 * true_positive / denominator if denominator else 0.0)
    return float(np.mean(scores))


# -- McNemar ------------------------------------------------------------------------


def test_mcnemar_hand_computation():
    candidate, baseline = paired_outcomes(1, 9, both_right=5, both_wrong=3)
    result = mcnemar_exact(candidate, baseline)
    assert result.b == 1
    assert result.c == 9
    assert result.n_items == 18
    # 2 * (C(10, 0) + C(10, 1)) / 2**10 = 22 / 1024
    assert result.p_value == pytest.approx(0.021484375, rel=1e-12)
    # P(X >= 1) for X ~ Binomial(10, 1/2)
    assert result.p_value_better == pytest.approx(1023 / 1024, rel=1e-12)


def test_mcnemar_candidate_better():
    candidate, baseline = paired_outcomes(9, 1)
    result = mcnemar_exact(candidate, baseline)
    assert result.p_value == pytest.approx(0.021484375, rel=1e-12)
    assert result.p_value_better == pytest.approx(11 / 1024, rel=1e-12)


def test_mcnemar_equal_discordant_counts():
    result = mcnemar_exact(*paired_outcomes(3, 3, both_right=10))
    assert result.p_value == 1.0
    # P(X >= 3) for X ~ Binomial(6, 1/2) = 42 / 64
    assert result.p_value_better == pytest.approx(42 / 64, rel=1e-12)


def test_mcnemar_no_discordant_pairs():
    outcomes = np.array([True, False, True, True])
    result = mcnemar_exact(outcomes, outcomes)
    assert (result.b, result.c) == (0, 0)
    assert result.p_value == 1.0
    assert result.p_value_better == 1.0


def test_mcnemar_one_discordant_pair():
    result = mcnemar_exact(*paired_outcomes(1, 0))
    assert result.p_value == 1.0
    assert result.p_value_better == 0.5


def test_mcnemar_accepts_zero_one_integers():
    as_bool = mcnemar_exact(*paired_outcomes(4, 1, both_right=2))
    candidate, baseline = paired_outcomes(4, 1, both_right=2)
    as_int = mcnemar_exact(candidate.astype(int), baseline.astype(float))
    assert as_int == as_bool


@settings(deadline=None, max_examples=60)
@given(st.integers(0, 80), st.integers(0, 80), st.integers(0, 5))
def test_mcnemar_matches_exact_fractions(b, c, concordant):
    result = mcnemar_exact(*paired_outcomes(b, c, both_right=concordant, both_wrong=1))
    two_sided, better = reference_mcnemar(b, c)
    assert result.p_value == pytest.approx(two_sided, rel=1e-9, abs=1e-300)
    assert result.p_value_better == pytest.approx(better, rel=1e-9, abs=1e-300)


@settings(deadline=None, max_examples=60)
@given(st.lists(st.tuples(st.booleans(), st.booleans()), min_size=1, max_size=40))
def test_mcnemar_symmetric_in_models(pairs):
    candidate = np.array([first for first, _ in pairs])
    baseline = np.array([second for _, second in pairs])
    forward = mcnemar_exact(candidate, baseline)
    backward = mcnemar_exact(baseline, candidate)
    assert (forward.b, forward.c) == (backward.c, backward.b)
    assert forward.p_value == pytest.approx(backward.p_value, rel=1e-12)
    assert 0.0 < forward.p_value <= 1.0
    # One-sided p-values of the two directions add up to 1 + P(X = b).
    n = forward.b + forward.c
    if n:
        point = math.comb(n, forward.b) / 2**n
        total = forward.p_value_better + backward.p_value_better
        assert total == pytest.approx(1 + point, rel=1e-9)


def test_mcnemar_input_errors():
    message = (
        r"correct_candidate must be a non-empty 1-D "
        r"array \(N,\) of booleans; got shape \(2, 2\)"
    )
    with pytest.raises(ValueError, match=message):
        mcnemar_exact(np.ones((2, 2), bool), np.ones(4, bool))
    message = (
        r"correct_baseline must be a non-empty 1-D "
        r"array \(N,\) of booleans; got shape \(0,\)"
    )
    with pytest.raises(ValueError, match=message):
        mcnemar_exact(np.ones(4, bool), np.array([], bool))
    message = (
        r"correct_candidate must contain only "
        r"booleans or 0 and 1; got values \[0, 1, 2\]"
    )
    with pytest.raises(ValueError, match=message):
        mcnemar_exact(np.array([0, 1, 2]), np.array([0, 1, 1]))
    message = (
        r"correct_baseline must have shape \(3,\) "
        r"to match correct_candidate; got \(2,\)"
    )
    with pytest.raises(ValueError, match=message):
        mcnemar_exact(np.ones(3, bool), np.ones(2, bool))


# -- paired bootstrap ---------------------------------------------------------------


@pytest.fixture
def rank_points():
    """Seeded per-item rank points (0 to 5) for a candidate and a baseline."""
    rng = np.random.default_rng(7)
    baseline = rng.integers(0, 6, size=500)
    candidate = np.clip(baseline + rng.integers(-1, 3, size=500), 0, 5)
    return candidate, baseline


def test_bootstrap_is_deterministic(rank_points):
    candidate, baseline = rank_points
    first = paired_bootstrap(candidate, baseline, statistic=np.sum, seed=3)
    second = paired_bootstrap(candidate, baseline, statistic=np.sum, seed=3)
    assert first == second
    assert first.seed == 3
    assert first.n_resamples == 1000
    assert first.n_items == 500
    assert first.confidence == 0.95


def test_bootstrap_seed_changes_interval():
    rng = np.random.default_rng(0)
    candidate = rng.normal(size=200)
    baseline = rng.normal(size=200)
    first = paired_bootstrap(candidate, baseline, statistic=np.mean, seed=0)
    second = paired_bootstrap(candidate, baseline, statistic=np.mean, seed=1)
    assert first.difference == second.difference
    assert (first.low, first.high) != (second.low, second.high)


def test_bootstrap_matches_slow_loop(rank_points):
    candidate, baseline = rank_points
    result = paired_bootstrap(
        candidate, baseline, statistic=np.sum, n_resamples=1200, seed=11
    )
    differences = reference_bootstrap(
        candidate, baseline, statistic=np.sum, n_resamples=1200, seed=11
    )
    low, high = np.quantile(differences, [0.025, 0.975])
    assert result.difference == candidate.sum() - baseline.sum()
    # The quantile levels differ in the last bit: (1 - 0.95) / 2 is not 0.025.
    assert result.low == pytest.approx(low, rel=1e-12)
    assert result.high == pytest.approx(high, rel=1e-12)
    assert result.half_width == pytest.approx((high - low) / 2, rel=1e-12)
    assert result.p_value_better == (np.count_nonzero(differences <= 0) + 1) / 1201


def test_bootstrap_blocks_match_slow_loop(rank_points, monkeypatch):
    # Blocks of 3 rows of 500 items: the block boundaries must not change the draws.
    monkeypatch.setattr(statistics, "_CHUNK_ELEMENTS", 1500)
    candidate, baseline = rank_points
    result = paired_bootstrap(
        candidate, baseline, statistic=np.mean, confidence=0.9, seed=5
    )
    differences = reference_bootstrap(
        candidate, baseline, statistic=np.mean, n_resamples=1000, seed=5
    )
    low, high = np.quantile(differences, [0.05, 0.95])
    assert result.low == pytest.approx(low, rel=1e-12)
    assert result.high == pytest.approx(high, rel=1e-12)


def test_bootstrap_large_effect_excludes_zero(rank_points):
    _, baseline = rank_points
    candidate = np.clip(baseline + 2, 0, 5)
    result = paired_bootstrap(candidate, baseline, statistic=np.sum)
    assert result.low <= result.difference <= result.high
    assert result.low > 0
    assert result.p_value_better == 1 / 1001


def test_bootstrap_identical_inputs_zero_width(rank_points):
    candidate, _ = rank_points
    result = paired_bootstrap(candidate, candidate.copy(), statistic=np.sum)
    assert result.difference == 0.0
    assert result.low == 0.0
    assert result.high == 0.0
    assert result.half_width == 0.0
    assert result.p_value_better == 1.0


def test_bootstrap_coverage_sanity():
    # Independent Bernoulli(0.7) and Bernoulli(0.6) outcomes: the true difference of
    # means is 0.1, and about 95 % of the intervals should contain it.
    rng = np.random.default_rng(2024)
    covered = 0
    datasets = 300
    for seed in range(datasets):
        candidate = rng.random(200) < 0.7
        baseline = rng.random(200) < 0.6
        result = paired_bootstrap(candidate, baseline, statistic=np.mean, seed=seed)
        covered += result.low <= 0.1 <= result.high
    assert 0.88 <= covered / datasets <= 0.99


def test_bootstrap_sums_are_fast(rank_points):
    candidate, baseline = rank_points
    start = time.perf_counter()
    paired_bootstrap(candidate, baseline, statistic=np.sum)
    # Measured at about 6 ms on a 2-core development machine, so the bound leaves
    # room for a loaded machine.
    assert time.perf_counter() - start < 1.0


def test_bootstrap_metric_matches_per_item_values():
    rng = np.random.default_rng(4)
    y_true = rng.integers(0, 4, size=150)
    pred_candidate = np.where(rng.random(150) < 0.7, y_true, rng.integers(0, 4, 150))
    pred_baseline = np.where(rng.random(150) < 0.6, y_true, rng.integers(0, 4, 150))
    by_metric = paired_bootstrap_metric(
        y_true,
        pred_candidate,
        pred_baseline,
        metric=lambda truth, pred: float(np.mean(truth == pred)),
        seed=9,
    )
    by_values = paired_bootstrap(
        pred_candidate == y_true, pred_baseline == y_true, statistic=np.mean, seed=9
    )
    assert by_metric.difference == pytest.approx(by_values.difference, rel=1e-12)
    assert by_metric.low == pytest.approx(by_values.low, rel=1e-12)
    assert by_metric.high == pytest.approx(by_values.high, rel=1e-12)
    assert by_metric.p_value_better == by_values.p_value_better


def test_bootstrap_macro_f1():
    rng = np.random.default_rng(6)
    y_true = rng.choice(4, size=300, p=[0.55, 0.25, 0.15, 0.05])
    pred_candidate = np.where(rng.random(300) < 0.8, y_true, rng.integers(0, 4, 300))
    pred_baseline = np.where(rng.random(300) < 0.5, y_true, rng.integers(0, 4, 300))

    def macro_f1(truth, pred):
        return numpy_macro_f1(truth, pred, n_classes=4)

    result = paired_bootstrap_metric(
        y_true, pred_candidate, pred_baseline, metric=macro_f1
    )
    expected = sklearn.metrics.f1_score(
        y_true, pred_candidate, average="macro", labels=range(4), zero_division=0.0
    ) - sklearn.metrics.f1_score(
        y_true, pred_baseline, average="macro", labels=range(4), zero_division=0.0
    )
    assert result.difference == pytest.approx(expected, rel=1e-12)
    assert result.low <= result.difference <= result.high
    assert result.low > 0
    again = paired_bootstrap_metric(
        y_true, pred_candidate, pred_baseline, metric=macro_f1
    )
    assert again == result


def test_bootstrap_metric_accepts_string_labels():
    y_true = np.array(["red", "brown", "red", "black"] * 20)
    pred = np.array(["red", "brown", "black", "black"] * 20)
    result = paired_bootstrap_metric(
        y_true,
        pred,
        y_true,
        metric=lambda truth, predicted: float(np.mean(truth == predicted)),
    )
    assert result.difference == pytest.approx(-0.25)
    assert result.high <= 0
    assert result.p_value_better == 1.0


def test_bootstrap_value_errors():
    good = np.ones(10)
    message = (
        r"candidate_values must be a non-empty 1-D "
        r"array \(N,\); got shape \(2, 5\)"
    )
    with pytest.raises(ValueError, match=message):
        paired_bootstrap(np.ones((2, 5)), good, statistic=np.sum)
    message = (
        r"baseline_values must be a non-empty 1-D "
        r"array \(N,\); got shape \(0,\)"
    )
    with pytest.raises(ValueError, match=message):
        paired_bootstrap(good, np.array([]), statistic=np.sum)
    message = (
        r"baseline_values must have shape \(10,\) "
        r"to match candidate_values; got \(9,\)"
    )
    with pytest.raises(ValueError, match=message):
        paired_bootstrap(good, np.ones(9), statistic=np.sum)
    with pytest.raises(
        ValueError, match=r"candidate_values must be finite; got 1 NaN or infinite"
    ):
        paired_bootstrap(np.r_[good[:-1], np.nan], good, statistic=np.sum)
    message = (
        r"candidate_values must be numeric; got "
        r"dtype <U1"
    )
    with pytest.raises(ValueError, match=message):
        paired_bootstrap(np.array(["a"] * 10), good, statistic=np.sum)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"n_resamples": 999}, r"n_resamples must be an integer >= 1000; got 999"),
        (
            {"n_resamples": 1000.0},
            r"n_resamples must be an integer >= 1000; got 1000.0",
        ),
        ({"n_resamples": True}, r"n_resamples must be an integer >= 1000; got True"),
        ({"confidence": 1.0}, r"confidence must be strictly between 0 and 1; got 1.0"),
        ({"confidence": 0}, r"confidence must be strictly between 0 and 1; got 0"),
        ({"confidence": float("nan")}, r"confidence must be .*; got nan"),
        ({"seed": -1}, r"seed must be an integer >= 0; got -1"),
        ({"seed": 1.5}, r"seed must be an integer >= 0; got 1.5"),
    ],
)
def test_bootstrap_option_errors(options, message):
    values = np.ones(10)
    with pytest.raises(ValueError, match=message):
        paired_bootstrap(values, values, statistic=np.sum, **options)
    labels = np.zeros(10)
    with pytest.raises(ValueError, match=message):
        paired_bootstrap_metric(
            labels, labels, labels, metric=lambda t, p: 0.0, **options
        )


def test_bootstrap_statistic_contract_errors():
    values = np.arange(10.0)
    message = (
        r"statistic must reduce the last axis, "
        r"statistic\(values, axis=-1\), and return shape \(1000,\) "
        r"for values of shape \(1000, 10\); got shape \(\)"
    )
    with pytest.raises(ValueError, match=message):
        paired_bootstrap(values, values, statistic=lambda v, axis: np.sum(v))
    with pytest.raises(ValueError, match=r"statistic returned a NaN or infinite value"):
        paired_bootstrap(
            values, values, statistic=lambda v, axis: np.full(v.shape[:-1], np.nan)
        )


def test_bootstrap_metric_errors():
    labels = np.zeros(10)
    message = (
        r"pred_baseline must have shape \(10,\) to "
        r"match y_true; got \(9,\)"
    )
    with pytest.raises(ValueError, match=message):
        paired_bootstrap_metric(labels, labels, labels[:9], metric=lambda t, p: 0.0)
    with pytest.raises(ValueError, match=r"y_true must be a non-empty 1-D array"):
        paired_bootstrap_metric([], [], [], metric=lambda t, p: 0.0)
    with pytest.raises(ValueError, match=r"metric returned nan for 10 items"):
        paired_bootstrap_metric(labels, labels, labels, metric=lambda t, p: np.nan)


# -- resolves -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("half_width", "margin", "expected"),
    [
        (0.5, 1.0, True),
        (1.0, 1.0, True),
        (1.5, 1.0, False),
        (0.0, 0.0, True),
        (0.01, 0.0, False),
    ],
)
def test_resolves_table(half_width, margin, expected):
    assert resolves(half_width, margin_or_tolerance=margin) is expected


def test_resolves_errors():
    message = (
        r"interval_half_width must be a number >= 0; "
        r"got -0.1"
    )
    with pytest.raises(ValueError, match=message):
        resolves(-0.1, margin_or_tolerance=1.0)
    with pytest.raises(
        ValueError, match=r"margin_or_tolerance must be a number >= 0; got nan"
    ):
        resolves(0.1, margin_or_tolerance=float("nan"))


def test_resolves_with_bootstrap_half_width(rank_points):
    candidate, baseline = rank_points
    result = paired_bootstrap(candidate, baseline, statistic=np.sum)
    assert resolves(result.half_width, margin_or_tolerance=result.half_width)
    assert not resolves(result.half_width, margin_or_tolerance=result.half_width / 2)


@pytest.mark.parametrize(
    ("correct", "n", "chance", "expected"),
    [
        (10, 10, 0.5, 1 / 1024),  # every trial a hit
        (0, 10, 0.5, 1.0),  # P(X >= 0) is certain
        (9, 10, 0.5, 11 / 1024),  # 10 choose 9 plus 10 choose 10, over 2^10
    ],
)
def test_above_chance_p_value_by_hand(correct, n, chance, expected):
    assert above_chance_p_value(correct, n, chance=chance) == pytest.approx(expected)


def test_above_chance_p_value_rejects_bad_counts():
    with pytest.raises(ValueError, match=r"correct must be in \[0, n=5\]; got 6"):
        above_chance_p_value(6, 5, chance=0.2)
