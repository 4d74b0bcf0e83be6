"""Gate rules, verdicts of candidate against baseline, and model selection."""

from __future__ import annotations

from dataclasses import dataclass, field

RULE_KINDS = ("better", "margin", "non_inferior", "band")


UNRESOLVED_POLICIES = ("warn", "fail")


@dataclass(frozen=True)
class Rule:
    """How a candidate's figure must compare with the baseline's (higher is better).

    - better: candidate > baseline; equal is not better.
    - margin: candidate >= baseline + amount.
    - non_inferior: candidate >= baseline - tolerance.
    - band: |candidate - baseline| <= tolerance, a two-sided band.
    With `relative`, tolerance and amount are fractions of the baseline's figure.
    With `alpha`, the improvement must also be significant: the paired test's
    one-sided p-value for "candidate better" must be below alpha. `unresolved` says
    what happens when the paired interval is wider than the margin or tolerance:
    "warn" (a ModelQAWarning) or "fail".
    """

    kind: str = "better"
    amount: float = 0.0
    tolerance: float = 0.0
    relative: bool = False
    alpha: float | None = None
    unresolved: str = "warn"

    def __post_init__(self):
        if self.kind not in RULE_KINDS:
            raise ValueError(
                f"unknown rule {self.kind!r}; use one of {', '.join(RULE_KINDS)}"
            )
        for name in ("amount", "tolerance"):
            value = getattr(self, name)
            if not value >= 0:  # also rejects NaN
                raise ValueError(f"{name} must be a number >= 0; got {value!r}")
        if self.amount and self.kind != "margin":
            raise ValueError(
                f"amount applies to the margin rule only, not {self.kind!r}"
            )
        if self.tolerance and self.kind not in ("non_inferior", "band"):
            raise ValueError(
                f"tolerance applies to non_inferior and band rules only, not {self.kind!r}"
            )
        if self.alpha is not None and not 0 < self.alpha < 1:
            raise ValueError(f"alpha must lie between 0 and 1; got {self.alpha!r}")
        if self.unresolved not in UNRESOLVED_POLICIES:
            raise ValueError(
                f"unresolved must be warn or fail; got {self.unresolved!r}"
            )

    def allowance(self, baseline: float) -> float:
        """Return the margin or tolerance in the figure's units (0 for better)."""
        if self.kind == "margin":
            return self._scaled(self.amount, baseline)
        if self.kind in ("non_inferior", "band"):
            return self._scaled(self.tolerance, baseline)
        return 0.0

    def _scaled(self, value: float, baseline: float) -> float:
        return value * abs(baseline) if self.relative else value

    def threshold(self, baseline: float) -> tuple[float, float]:
        """Return the (low, high) bounds a candidate must meet; high may be infinite."""
        inf = float("inf")
        if self.kind == "better":
            return baseline, inf
        if self.kind == "margin":
            return baseline + self._scaled(self.amount, baseline), inf
        tolerance = self._scaled(self.tolerance, baseline)
        if self.kind == "non_inferior":
            return baseline - tolerance, inf
        return baseline - tolerance, baseline + tolerance

    def passes(self, candidate: float, baseline: float) -> bool:
        low, high = self.threshold(baseline)
        if self.kind == "better":
            return candidate > low
        return low <= candidate <= high

    def describe(self) -> str:
        unit = " of baseline" if self.relative else ""
        if self.kind == "better":
            text = "better: candidate > baseline"
        elif self.kind == "margin":
            text = f"margin: candidate >= baseline + {self.amount:g}{unit}"
        elif self.kind == "non_inferior":
            text = f"non_inferior: candidate >= baseline - {self.tolerance:g}{unit}"
        else:
            text = f"band: |candidate - baseline| <= {self.tolerance:g}{unit}"
        if self.alpha is not None:
            text += f", significant at alpha {self.alpha:g}"
        return text


DEFAULT_RULE = Rule("better")
DEFAULT_BENCHMARK_RULE = Rule("non_inferior", tolerance=0.05, relative=True)


@dataclass
class Verdict:
    """The outcome of one check for one candidate."""

    check: str
    phase: str
    candidate: str
    observed: float
    baseline: float
    rule: Rule
    passed: bool
    details: dict = field(default_factory=dict)

    @property
    def delta(self) -> float:
        return self.observed - self.baseline

    def explain(self) -> str:
        """Describe the verdict: observed, baseline, rule, interval and p-value."""
        low, high = self.rule.threshold(self.baseline)
        if self.rule.kind == "better":
            bound = f"> {low:.4g}"
        elif high == float("inf"):
            bound = f">= {low:.4g}"
        else:
            bound = f"in [{low:.4g}, {high:.4g}]"
        outcome = "passed" if self.passed else "FAILED"
        subject = self.check
        if "worst_class" in self.details:
            subject += f" (class {self.details['worst_class']})"
        text = (
            f"{subject} {outcome} for {self.candidate}: observed {self.observed:.4g}, "
            f"baseline {self.baseline:.4g}, delta {self.delta:+.4g}; rule "
            f"{self.rule.describe()} (needs {bound})"
        )
        stats = self.details.get("statistics")
        if stats:
            low_ci, high_ci = stats["interval"]
            text += (
                f"; {stats['test']}: {stats['confidence']:.0%} interval of the "
                f"difference [{low_ci:+.4g}, {high_ci:+.4g}], one-sided p-value "
                f"{stats['p_value']:.4g}"
            )
        for reason in self.details.get("reasons", []):
            text += f"; {reason}"
        return text


def compare(
    check: str,
    phase: str,
    candidate: str,
    observed: float,
    baseline: float,
    rule: Rule,
    *,
    statistics: dict | None = None,
    **details,
) -> Verdict:
    """Judge one figure against its rule and the paired statistics, if any.

    `statistics` holds ``test``, ``interval`` (low, high of candidate minus baseline),
    ``half_width``, ``confidence`` and ``p_value`` (one-sided, candidate better).
    With it, a rule with `alpha` also needs p_value < alpha. The test set is too
    small to resolve the rule when the interval's half-width exceeds the margin or
    tolerance and the interval holds a bound of the rule, so that sampling noise
    alone could move the verdict; such a verdict is marked unresolved, which fails
    the check only when the rule says ``unresolved: fail``.
    """
    passed = rule.passes(observed, baseline)
    reasons: list[str] = []
    if statistics is not None:
        details["statistics"] = statistics
        if rule.alpha is not None and not statistics["p_value"] < rule.alpha:
            passed = False
            reasons.append(
                f"not significant: p-value {statistics['p_value']:.4g} >= alpha "
                f"{rule.alpha:g}"
            )
        allowance = rule.allowance(baseline)
        if (
            allowance > 0
            and statistics["half_width"] > allowance
            and _straddles(statistics["interval"], rule, baseline)
        ):
            details["unresolved"] = True
            reasons.append(
                f"test set too small to resolve the rule: interval half-width "
                f"{statistics['half_width']:.4g} exceeds the allowance {allowance:.4g}"
            )
            if rule.unresolved == "fail":
                passed = False
    if reasons:
        details["reasons"] = reasons
    return Verdict(
        check, phase, candidate, float(observed), float(baseline), rule, passed, details
    )


def worst_class(
    rule: Rule, candidate: dict[str, float], baseline: dict[str, float]
) -> str:
    """Return the class whose figure is closest to breaking `rule`, or furthest past it.

    A class's slack is its distance to the nearer bound of the rule, negative when
    the figure lies outside. The class with the least slack breaks the rule exactly
    when any class does. Ties go to the class that comes first in `candidate`.
    """
    if not candidate:
        raise ValueError("candidate is empty: no classes to judge")

    def slack(name: str) -> float:
        low, high = rule.threshold(baseline[name])
        return min(candidate[name] - low, high - candidate[name])

    return min(candidate, key=slack)


def _straddles(interval: list[float], rule: Rule, baseline: float) -> bool:
    """Return whether a bound of the rule, as a difference, lies inside the interval."""
    low, high = rule.threshold(baseline)
    bounds = [bound - baseline for bound in (low, high) if bound != float("inf")]
    return any(interval[0] < bound < interval[1] for bound in bounds)


@dataclass
class Selection:
    """Which candidates are acceptable and which one wins."""

    acceptable: list[str]
    rejected: dict[str, list[str]]
    winners: list[str]
    retrieval_totals: dict[str, float]
    tie_breaker: dict[str, float]  # zero-shot accuracy per candidate


def select_models(verdicts: list[Verdict], candidates: list[str]) -> Selection:
    """Apply the method's selection: all checks passed; retrieval totals decide.

    A candidate with any failed check is rejected. Among acceptable candidates the
    highest sum of the retrieval totals wins, then the higher zero-shot accuracy
    (summed over suites); candidates equal on both are all reported as winners (a
    tie).
    """
    rejected: dict[str, list[str]] = {}
    for verdict in verdicts:
        if not verdict.passed:
            rejected.setdefault(verdict.candidate, []).append(verdict.check)
    acceptable = [
        name
        for name in candidates
        if name not in rejected and any(v.candidate == name for v in verdicts)
    ]
    retrieval = {name: 0.0 for name in candidates}
    secondary = {name: 0.0 for name in candidates}
    for verdict in verdicts:
        if verdict.phase == "retrieval" and verdict.check.startswith("method_"):
            retrieval[verdict.candidate] += verdict.observed
        elif verdict.check == "zero_shot_accuracy":
            secondary[verdict.candidate] += verdict.observed
    winners: list[str] = []
    if acceptable:
        best = max((retrieval[name], secondary[name]) for name in acceptable)
        winners = [n for n in acceptable if (retrieval[n], secondary[n]) == best]
    return Selection(acceptable, rejected, winners, retrieval, secondary)
