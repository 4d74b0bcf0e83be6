"""Tests for the gate rules, verdicts and model selection in pytest_modelqa.gate."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_modelqa.gate import (
    DEFAULT_BENCHMARK_RULE,
    DEFAULT_RULE,
    RULE_KINDS,
    Rule,
    compare,
    select_models,
    worst_class,
)

INF = float("inf")
finite_figures = st.floats(-1e6, 1e6, allow_nan=False)


def below(value: float) -> float:
    return math.nextafter(value, -INF)


def above(value: float) -> float:
    return math.nextafter(value, INF)


# -- better -------------------------------------------------------------------------


def test_better_needs_strictly_higher():
    rule = Rule("better")
    assert rule.passes(0.6, 0.5)
    assert rule.passes(above(0.5), 0.5)
    assert not rule.passes(0.5, 0.5)
    assert not rule.passes(0.4, 0.5)
    assert rule.threshold(0.5) == (0.5, INF)


def test_default_rule_is_better():
    assert DEFAULT_RULE.kind == "better"
    assert DEFAULT_RULE.amount == 0.0
    assert DEFAULT_RULE.tolerance == 0.0


@settings(deadline=None, max_examples=100)
@given(finite_figures)
def test_identical_candidate_never_passes_better(figure):
    assert not Rule("better").passes(figure, figure)
    assert not compare(
        "rank_score", "classification", "c", figure, figure, Rule()
    ).passed


# -- margin -------------------------------------------------------------------------


def test_margin_absolute():
    rule = Rule("margin", amount=0.25)
    assert rule.threshold(0.5) == (0.75, INF)
    assert rule.passes(0.75, 0.5)
    assert rule.passes(0.9, 0.5)
    assert not rule.passes(below(0.75), 0.5)


def test_margin_relative():
    rule = Rule("margin", amount=0.1, relative=True)
    low, high = rule.threshold(200.0)
    assert low == pytest.approx(220.0)
    assert high == INF
    assert rule.passes(low, 200.0)
    assert not rule.passes(below(low), 200.0)


def test_zero_margin_accepts_equal():
    assert Rule("margin").passes(0.5, 0.5)


# -- non_inferior -------------------------------------------------------------------


def test_non_inferior_absolute():
    rule = Rule("non_inferior", tolerance=0.125)
    assert rule.threshold(0.5) == (0.375, INF)
    assert rule.passes(0.375, 0.5)
    assert rule.passes(0.5, 0.5)
    assert rule.passes(0.99, 0.5)
    assert not rule.passes(below(0.375), 0.5)


def test_benchmark_default_5_percent_relative():
    rule = DEFAULT_BENCHMARK_RULE
    assert rule.kind == "non_inferior"
    assert rule.tolerance == 0.05
    assert rule.relative
    low, high = rule.threshold(0.8)
    assert low == pytest.approx(0.76)
    assert high == INF
    assert rule.passes(low, 0.8)
    assert not rule.passes(below(low), 0.8)
    # Any improvement passes: the tolerance only bounds a loss.
    assert rule.passes(0.95, 0.8)


def test_relative_tolerance_uses_baseline_magnitude():
    rule = Rule("non_inferior", tolerance=0.5, relative=True)
    assert rule.threshold(-4.0) == (-6.0, INF)


# -- band ---------------------------------------------------------------------------


def test_band_is_two_sided():
    rule = Rule("band", tolerance=0.125)
    assert rule.threshold(0.5) == (0.375, 0.625)
    for figure in (0.375, 0.5, 0.625):
        assert rule.passes(figure, 0.5), figure
    assert not rule.passes(below(0.375), 0.5)
    assert not rule.passes(above(0.625), 0.5)
    assert not rule.passes(0.9, 0.5)


def test_relative_band():
    rule = Rule("band", tolerance=0.05, relative=True)
    low, high = rule.threshold(200.0)
    assert low == pytest.approx(190.0)
    assert high == pytest.approx(210.0)


@settings(deadline=None, max_examples=100)
@given(finite_figures, st.floats(0, 1e3, allow_nan=False))
def test_band_passes_own_baseline(figure, tolerance):
    assert Rule("band", tolerance=tolerance).passes(figure, figure)
    assert Rule("non_inferior", tolerance=tolerance).passes(figure, figure)


def test_nan_candidate_fails_every_rule():
    options = {
        "margin": {"amount": 1.0},
        "non_inferior": {"tolerance": 1.0},
        "band": {"tolerance": 1.0},
    }
    for kind in RULE_KINDS:
        assert not Rule(kind, **options.get(kind, {})).passes(float("nan"), 0.5), kind


# -- invalid rules ------------------------------------------------------------------


def test_unknown_rule_kind_rejected():
    message = r"unknown rule 'greater'; use one of better, margin, non_inferior, band"
    with pytest.raises(ValueError, match=message):
        Rule("greater")


@pytest.mark.parametrize(
    "options",
    [
        {"kind": "margin", "amount": -0.1},
        {"kind": "non_inferior", "tolerance": -0.05},
        {"kind": "band", "tolerance": -1.0, "relative": True},
    ],
)
def test_negative_amounts_rejected(options):
    with pytest.raises(
        ValueError, match=r"(amount|tolerance) must be a number >= 0; got -"
    ):
        Rule(**options)


# -- describe and verdicts ----------------------------------------------------------


@pytest.mark.parametrize(
    ("rule", "text"),
    [
        (Rule("better"), "better: candidate > baseline"),
        (Rule("margin", amount=2), "margin: candidate >= baseline + 2"),
        (
            DEFAULT_BENCHMARK_RULE,
            "non_inferior: candidate >= baseline - 0.05 of baseline",
        ),
        (Rule("band", tolerance=0.1), "band: |candidate - baseline| <= 0.1"),
    ],
)
def test_rule_descriptions(rule, text):
    assert rule.describe() == text


def test_compare_builds_verdict():
    verdict = compare(
        "method_1", "retrieval", "epoch-3", 274, 247, Rule(), maximum=390, cases=26
    )
    assert verdict.passed
    assert verdict.observed == 274.0
    assert verdict.baseline == 247.0
    assert verdict.delta == 27.0
    assert verdict.details == {"maximum": 390, "cases": 26}
    assert verdict.explain() == (
        "method_1 passed for epoch-3: observed 274, baseline 247, delta +27; rule "
        "better: candidate > baseline (needs > 247)"
    )


def test_failed_verdict_explains_bound():
    verdict = compare(
        "benchmark_fmnist", "benchmark", "epoch-3", 0.7, 0.8, DEFAULT_BENCHMARK_RULE
    )
    assert not verdict.passed
    assert "FAILED for epoch-3" in verdict.explain()
    assert "(needs >= 0.76)" in verdict.explain()
    band = compare("x", "classification", "c", 0.9, 0.5, Rule("band", tolerance=0.25))
    assert "(needs in [0.25, 0.75])" in band.explain()


# -- model selection ----------------------------------------------------------------


def verdicts_for(candidate, *, retrieval, accuracy=0.7, benchmark=0.8):
    """Build a candidate's verdicts: two retrieval methods, accuracy, one benchmark.

    The baseline scores 247 and 35 on the methods, 0.6 accuracy and 0.8 on the
    benchmark.
    """
    return [
        compare("method_1", "retrieval", candidate, retrieval[0], 247, Rule()),
        compare("method_2", "retrieval", candidate, retrieval[1], 35, Rule()),
        compare(
            "zero_shot_accuracy",
            "classification",
            candidate,
            accuracy,
            0.6,
            Rule(),
        ),
        compare(
            "benchmark_fmnist",
            "benchmark",
            candidate,
            benchmark,
            0.8,
            DEFAULT_BENCHMARK_RULE,
        ),
    ]


def test_select_highest_retrieval_wins():
    verdicts = [
        *verdicts_for("epoch-1", retrieval=(260, 40)),
        *verdicts_for("epoch-2", retrieval=(274, 50)),
        *verdicts_for("epoch-3", retrieval=(268, 48), accuracy=0.9),
    ]
    selection = select_models(verdicts, ["epoch-1", "epoch-2", "epoch-3"])
    assert selection.acceptable == ["epoch-1", "epoch-2", "epoch-3"]
    assert selection.rejected == {}
    assert selection.winners == ["epoch-2"]
    assert selection.retrieval_totals == {
        "epoch-1": 300.0,
        "epoch-2": 324.0,
        "epoch-3": 316.0,
    }


def test_select_rejects_any_failed_check():
    verdicts = [
        *verdicts_for("epoch-1", retrieval=(260, 40)),
        # Best retrieval, but the benchmark falls by more than 5 %.
        *verdicts_for("epoch-2", retrieval=(300, 60), benchmark=0.7),
        # Zero-shot accuracy equal to the baseline's is not better.
        *verdicts_for("epoch-3", retrieval=(290, 55), accuracy=0.6),
    ]
    selection = select_models(verdicts, ["epoch-1", "epoch-2", "epoch-3"])
    assert selection.acceptable == ["epoch-1"]
    assert selection.rejected == {
        "epoch-2": ["benchmark_fmnist"],
        "epoch-3": ["zero_shot_accuracy"],
    }
    assert selection.winners == ["epoch-1"]


def test_select_reports_ties_as_several_winners():
    verdicts = [
        *verdicts_for("epoch-1", retrieval=(270, 50)),
        *verdicts_for("epoch-2", retrieval=(270, 50)),
        *verdicts_for("epoch-3", retrieval=(260, 50)),
    ]
    selection = select_models(verdicts, ["epoch-1", "epoch-2", "epoch-3"])
    assert selection.winners == ["epoch-1", "epoch-2"]


def test_select_classification_breaks_retrieval_tie():
    verdicts = [
        *verdicts_for("epoch-1", retrieval=(270, 50), accuracy=0.7),
        *verdicts_for("epoch-2", retrieval=(270, 50), accuracy=0.75),
    ]
    selection = select_models(verdicts, ["epoch-1", "epoch-2"])
    assert selection.winners == ["epoch-2"]


def test_select_retrieval_outweighs_classification():
    verdicts = [
        *verdicts_for("epoch-1", retrieval=(271, 50), accuracy=0.61),
        *verdicts_for("epoch-2", retrieval=(270, 50), accuracy=0.99),
    ]
    assert select_models(verdicts, ["epoch-1", "epoch-2"]).winners == ["epoch-1"]


def test_select_no_acceptable_candidate():
    verdicts = verdicts_for("epoch-1", retrieval=(200, 30))
    selection = select_models(verdicts, ["epoch-1"])
    assert selection.acceptable == []
    assert selection.winners == []
    assert selection.rejected == {"epoch-1": ["method_1", "method_2"]}


def test_select_skips_candidate_without_verdicts():
    verdicts = verdicts_for("epoch-1", retrieval=(260, 40))
    selection = select_models(verdicts, ["epoch-1", "epoch-2"])
    assert selection.acceptable == ["epoch-1"]
    assert selection.winners == ["epoch-1"]
    assert selection.retrieval_totals["epoch-2"] == 0.0


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            {"kind": "better", "tolerance": 0.1},
            "tolerance applies to non_inferior and band",
        ),
        (
            {"kind": "non_inferior", "amount": 0.1},
            "amount applies to the margin rule only",
        ),
        (
            {"kind": "margin", "amount": float("nan")},
            "amount must be a number >= 0; got nan",
        ),
        ({"kind": "better", "alpha": 1.5}, "alpha must lie between 0 and 1; got 1.5"),
        ({"kind": "better", "unresolved": "ignore"}, "unresolved must be warn or fail"),
    ],
)
def test_rule_options_must_fit_the_kind(options, message):
    with pytest.raises(ValueError, match=message):
        Rule(**options)


def test_significance_required_by_alpha():
    rule = Rule("better", alpha=0.05)
    stats = {
        "test": "mcnemar",
        "interval": [0.01, 0.2],
        "half_width": 0.1,
        "confidence": 0.95,
        "p_value": 0.2,
    }
    verdict = compare(
        "zero_shot_accuracy", "classification", "c", 0.6, 0.5, rule, statistics=stats
    )
    assert not verdict.passed
    assert "not significant: p-value 0.2 >= alpha 0.05" in verdict.explain()
    stats["p_value"] = 0.01
    assert compare(
        "zero_shot_accuracy", "classification", "c", 0.6, 0.5, rule, statistics=stats
    ).passed


def test_unresolved_interval_warns_or_fails():
    stats = {
        "test": "bootstrap",
        "interval": [-0.2, 0.2],
        "half_width": 0.2,
        "confidence": 0.95,
        "p_value": 0.5,
    }
    warn = compare(
        "benchmark_x",
        "benchmark",
        "c",
        0.5,
        0.5,
        Rule("non_inferior", tolerance=0.05),
        statistics=stats,
    )
    assert warn.passed
    assert warn.details["unresolved"] is True
    assert (
        "too small to resolve the rule: interval half-width 0.2 exceeds"
        in warn.explain()
    )
    fail = compare(
        "benchmark_x",
        "benchmark",
        "c",
        0.5,
        0.5,
        Rule("non_inferior", tolerance=0.05, unresolved="fail"),
        statistics=stats,
    )
    assert not fail.passed


def test_interval_clear_of_the_bound_is_resolved():
    stats = {
        "test": "bootstrap",
        "interval": [0.01, 0.4],
        "half_width": 0.2,
        "confidence": 0.95,
        "p_value": 0.01,
    }
    verdict = compare(
        "benchmark_x",
        "benchmark",
        "c",
        0.7,
        0.5,
        Rule("non_inferior", tolerance=0.05, unresolved="fail"),
        statistics=stats,
    )
    assert verdict.passed
    assert "unresolved" not in verdict.details


def test_select_tie_breaker_is_zero_shot():
    # epoch-1 has the higher zero-shot accuracy; epoch-2 a far larger rank score
    # delta, which must not count, because the tie-breaker is zero-shot accuracy.
    verdicts = [
        *verdicts_for("epoch-1", retrieval=(270, 50), accuracy=0.8),
        compare("rank_score", "classification", "epoch-1", 801, 800, Rule()),
        *verdicts_for("epoch-2", retrieval=(270, 50), accuracy=0.7),
        compare("rank_score", "classification", "epoch-2", 900, 800, Rule()),
    ]
    selection = select_models(verdicts, ["epoch-1", "epoch-2"])
    assert selection.winners == ["epoch-1"]
    assert selection.tie_breaker == {"epoch-1": 0.8, "epoch-2": 0.7}


# -- per-class F1 ---------------------------------------------------------------------

F1_BASELINE = {"black": 0.6, "white": 0.8, "red": 0.2}


def test_worst_class_is_largest_drop():
    rule = Rule("non_inferior", tolerance=0.1)
    candidate = {"black": 0.55, "white": 0.65, "red": 0.3}
    assert worst_class(rule, candidate, F1_BASELINE) == "white"
    assert not rule.passes(candidate["white"], F1_BASELINE["white"])


def test_worst_class_relative_tolerance():
    # Relative to each class's own baseline: red may lose 0.02, white 0.08, so red's
    # drop of 0.05 breaks the rule before white's drop of 0.07.
    rule = Rule("non_inferior", tolerance=0.1, relative=True)
    candidate = {"black": 0.6, "white": 0.73, "red": 0.15}
    assert worst_class(rule, candidate, F1_BASELINE) == "red"


def test_worst_class_ties_take_first_class():
    rule = Rule("non_inferior", tolerance=0.1)
    assert worst_class(rule, dict(F1_BASELINE), F1_BASELINE) == "black"


@given(
    st.dictionaries(
        st.sampled_from(["a", "b", "c", "d"]),
        st.tuples(st.floats(0, 1), st.floats(0, 1)),
        min_size=1,
    ),
    st.sampled_from(
        [
            Rule("better"),
            Rule("margin", amount=0.05),
            Rule("non_inferior", tolerance=0.1),
            Rule("non_inferior", tolerance=0.2, relative=True),
            Rule("band", tolerance=0.1),
        ]
    ),
)
def test_worst_class_fails_exactly_when_any_class_fails(pairs, rule):
    candidate = {name: pair[0] for name, pair in pairs.items()}
    baseline = {name: pair[1] for name, pair in pairs.items()}
    worst = worst_class(rule, candidate, baseline)
    any_fails = any(not rule.passes(candidate[n], baseline[n]) for n in candidate)
    assert rule.passes(candidate[worst], baseline[worst]) != any_fails


def test_per_class_verdict_names_the_class():
    verdict = compare(
        "per_class_f1",
        "classification",
        "epoch-1",
        0.65,
        0.8,
        Rule("non_inferior", tolerance=0.1),
        worst_class="white",
    )
    assert not verdict.passed
    assert verdict.explain().startswith(
        "per_class_f1 (class white) FAILED for epoch-1: observed 0.65, baseline 0.8"
    )
