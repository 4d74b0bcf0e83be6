"""Gate rules, verdicts of candidate against baseline, and model selection."""

from __future__ import annotations

from dataclasses import dataclass, field

RULE_KINDS = ("better", "margin", "non_inferior", "band")


@dataclass(frozen=True)
class Rule:
    """How a candidate's figure must compare with the baseline's (higher is better).

    - better: candidate > baseline; equal is not better.
    - margin: candidate >= baseline + amount.
    - non_inferior: candidate >= baseline - tolerance.
    - band: |candidate - baseline| <= tolerance, a two-sided band.
    With `relative`, tolerance and amount are fractions of the baseline's figure.
    """

    kind: str = "better"
    amount: float = 0.0
    tolerance: float = 0.0
    relative: bool = False

    def __post_init__(self):
        if self.kind not in RULE_KINDS:
            raise ValueError(
                f"unknown rule {self.kind!r}; use one of {', '.join(RULE_KINDS)}"
            )
        if self.amount < 0 or self.tolerance < 0:
            raise ValueError("amount and tolerance must not be negative")

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
            return "better: candidate > baseline"
        if self.kind == "margin":
            return f"margin: candidate >= baseline + {self.amount:g}{unit}"
        if self.kind == "non_inferior":
            return f"non_inferior: candidate >= baseline - {self.tolerance:g}{unit}"
        return f"band: |candidate - baseline| <= {self.tolerance:g}{unit}"


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
        low, high = self.rule.threshold(self.baseline)
        bound = (
            f">= {low:.4g}" if high == float("inf") else f"in [{low:.4g}, {high:.4g}]"
        )
        if self.rule.kind == "better":
            bound = f"> {low:.4g}"
        outcome = "passed" if self.passed else "FAILED"
        return (
            f"{self.check} {outcome} for {self.candidate}: observed {self.observed:.4g}, "
            f"baseline {self.baseline:.4g}, delta {self.delta:+.4g}; rule "
            f"{self.rule.describe()} (needs {bound})"
        )


def compare(
    check: str,
    phase: str,
    candidate: str,
    observed: float,
    baseline: float,
    rule: Rule,
    **details,
) -> Verdict:
    return Verdict(
        check,
        phase,
        candidate,
        float(observed),
        float(baseline),
        rule,
        rule.passes(observed, baseline),
        details,
    )


@dataclass
class Selection:
    """Which candidates are acceptable and which one wins."""

    acceptable: list[str]
    rejected: dict[str, list[str]]
    winners: list[str]
    retrieval_totals: dict[str, float]


def select_models(verdicts: list[Verdict], candidates: list[str]) -> Selection:
    """Apply the method's selection: all checks passed; retrieval totals decide.

    A candidate with any failed check is rejected. Among acceptable candidates the
    highest sum of retrieval totals wins, then the highest classification checks'
    sum of deltas; equal candidates are all reported as winners (a tie).
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
        elif verdict.phase == "classification":
            secondary[verdict.candidate] += verdict.delta
    winners: list[str] = []
    if acceptable:
        best = max((retrieval[name], secondary[name]) for name in acceptable)
        winners = [n for n in acceptable if (retrieval[n], secondary[n]) == best]
    return Selection(acceptable, rejected, winners, retrieval)
