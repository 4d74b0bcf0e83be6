"""Collection of a suite file into one pytest item per check and candidate."""

from __future__ import annotations

import warnings

import pytest

from pytest_modelqa.catalog import CatalogError
from pytest_modelqa.embeddings import EmbeddingError, ImageLoadError
from pytest_modelqa.gate import Verdict
from pytest_modelqa.models import ModelLoadError
from pytest_modelqa.runner import BaselineError, CaseResult, SuiteRunner
from pytest_modelqa.state import ModelQAWarning, runner_for, state_key
from pytest_modelqa.suite import RETRIEVAL_CHECKS, Case, load_suite
from pytest_modelqa.yamlsource import SuiteError


class GateFailure(Exception):
    """A check whose candidate figure breaks its rule."""

    def __init__(self, verdict: Verdict, detail: str = ""):
        super().__init__(verdict.explain())
        self.verdict = verdict
        self.detail = detail


class ModelUnavailable(Exception):
    """A model the check needs that could not be loaded or encoded."""


class SuiteFile(pytest.File):
    """A modelqa-suite.yaml file and the case files it names."""

    def collect(self):
        state = self.config.stash[state_key]
        try:
            suite = load_suite(self.path, catalog_dirs=state.catalog_dirs)
        except (SuiteError, CatalogError) as error:
            raise self.CollectError(str(error)) from error
        self.suite = suite
        runner = runner_for(self.config, suite)
        labels = list(state.candidates) or [None]
        for label in labels:
            yield from self._items_for(runner, label)

    def _items_for(self, runner: SuiteRunner, label: str | None):
        suite = runner.suite
        suffix = f"[{label}]" if label else ""
        for check in suite.classification_rules:
            if check == "top_k_accuracy":
                for k in range(1, suite.top_k + 1):
                    yield CheckItem.from_parent(
                        self,
                        name=f"top_{k}_accuracy{suffix}",
                        label=label,
                        check=check,
                        phase="classification",
                        k=k,
                    )
            else:
                yield CheckItem.from_parent(
                    self,
                    name=f"{check}{suffix}",
                    label=label,
                    check=check,
                    phase="classification",
                )
        for case in suite.cases:
            yield CaseItem.from_parent(
                self, name=f"case_{case.id}{suffix}", label=label, case=case
            )
        for check in RETRIEVAL_CHECKS:
            if check in suite.retrieval_rules:
                yield CheckItem.from_parent(
                    self,
                    name=f"retrieval_{check}{suffix}",
                    label=label,
                    check=check,
                    phase="retrieval",
                )
        for benchmark in suite.benchmarks:
            yield CheckItem.from_parent(
                self,
                name=f"benchmark_{benchmark.name}{suffix}",
                label=label,
                check="benchmark",
                phase="benchmark",
                benchmark=benchmark.name,
            )


class _GateItem(pytest.Item):
    """Shared behaviour: candidate lookup, model errors and domain failure reports."""

    def __init__(self, *, label: str | None, phase: str, **kwargs):
        super().__init__(**kwargs)
        self.label = label
        self.phase = phase
        self.add_marker(pytest.mark.modelqa(phase=phase, candidate=label))

    @property
    def runner(self) -> SuiteRunner:
        return runner_for(self.config, self.parent.suite)

    def setup(self) -> None:
        if self.label is None:
            pytest.skip("no candidate given: pass --model CKPT to gate a model")

    def repr_failure(self, excinfo, style=None):
        if isinstance(excinfo.value, GateFailure):
            failure = excinfo.value
            return "\n".join(
                part for part in (failure.verdict.explain(), failure.detail) if part
            )
        if isinstance(excinfo.value, ModelUnavailable | ModelLoadError):
            return str(excinfo.value)
        return super().repr_failure(excinfo, style=style)

    def _guard(self, compute):
        try:
            self.runner.check_baseline_loads()
            if self.config.getini("modelqa_check_baseline"):
                self.runner.check_baseline_sane()
            return compute()
        except BaselineError as error:
            pytest.exit(str(error), returncode=pytest.ExitCode.USAGE_ERROR)
        except ModelLoadError as error:
            raise ModelUnavailable(f"model could not be loaded: {error}") from error
        except (ImageLoadError, EmbeddingError) as error:
            raise ModelUnavailable(str(error)) from error


class CheckItem(_GateItem):
    """One gate check (a phase 1 figure, a retrieval total or a benchmark)."""

    def __init__(
        self,
        *,
        check: str,
        k: int | None = None,
        benchmark: str | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.check = check
        self.k = k
        self.benchmark = benchmark

    def setup(self) -> None:
        super().setup()
        if self.phase == "retrieval":
            suite = self.runner.suite
            automated = sum(
                self.runner.match_count(case)[0] >= suite.min_matches
                for case in suite.cases
            )
            if not automated:
                pytest.skip(
                    f"no automated retrieval case: none has {suite.min_matches} or more "
                    "matching products in the gallery"
                )

    def runtest(self) -> None:
        verdict = self._guard(
            lambda: self.runner.verdict(
                self.label, self.check, k=self.k, benchmark=self.benchmark
            )
        )
        self.user_properties.append(("modelqa_observed", verdict.observed))
        self.user_properties.append(("modelqa_baseline", verdict.baseline))
        self.user_properties.append(("modelqa_delta", verdict.delta))
        stats = verdict.details.get("statistics")
        if stats:
            self.user_properties.append(("modelqa_p_value", stats["p_value"]))
            self.user_properties.append(("modelqa_interval", stats["interval"]))
        if verdict.passed:
            # A failure shows the same text as its message, so only a pass needs it
            # as a section of its own (shown by -rP and in the HTML report).
            self.add_report_section("call", "modelqa verdict", self._describe(verdict))
        if self.check in (
            "macro_f1",
            "weighted_f1",
            "macro_precision",
            "macro_recall",
            "per_class_f1",
        ):
            figures = self.runner.figures(self.runner.candidates[self.label])
            for message in figures.classification["warnings"]:
                warnings.warn(ModelQAWarning(f"{self.label}: {message}"), stacklevel=1)
        if verdict.passed and verdict.details.get("unresolved"):
            warnings.warn(ModelQAWarning(verdict.explain()), stacklevel=1)
        if not verdict.passed:
            raise GateFailure(verdict, self._detail(verdict))

    def _describe(self, verdict: Verdict) -> str:
        return "\n".join(
            part for part in (verdict.explain(), self._detail(verdict)) if part
        )

    def _detail(self, verdict: Verdict) -> str:
        if self.phase == "retrieval":
            return (
                f"retrieval total over {verdict.details.get('cases', 0)} automated "
                f"cases, max {verdict.details.get('maximum', 0)}"
            )
        if self.check == "per_class_f1":
            details = verdict.details
            failing = ", ".join(details["failing_classes"]) or "none"
            deltas = ", ".join(
                f"{name} {delta:+.4g}" for name, delta in details["class_deltas"].items()
            )
            return (
                f"class {details['worst_class']} is nearest the rule's bound; classes "
                f"breaking the rule: {failing}\nF1 delta per class: {deltas}"
            )
        return ""

    def reportinfo(self):
        return self.path, None, f"{self.name}: {self.phase} check"


class CaseItem(_GateItem):
    """One retrieval case, scored for candidate and baseline side by side."""

    def __init__(self, *, case: Case, **kwargs):
        super().__init__(phase="retrieval", **kwargs)
        self.case = case

    def setup(self) -> None:
        super().setup()
        matches, _ = self.runner.match_count(self.case)
        if matches < self.runner.suite.min_matches:
            pytest.skip(
                f"manual review: {matches} matching products in the gallery, "
                f"fewer than {self.runner.suite.min_matches}"
            )

    def runtest(self) -> None:
        runner = self.runner
        candidate = self._guard(
            lambda: runner.figures(runner.candidates[self.label]).retrieval[
                self.case.id
            ]
        )
        baseline = self._guard(
            lambda: runner.figures(runner.baseline).retrieval[self.case.id]
        )
        text = format_case(self.case, {"candidate": candidate, "baseline": baseline})
        self.add_report_section("call", "modelqa case", text)
        problems = []
        for method, minimum in sorted(self.case.min_scores.items()):
            if candidate.scores[method] < minimum:
                problems.append(
                    f"method {method}: {candidate.scores[method]} points, expected at least {minimum}"
                )
        if self.case.beat_baseline and candidate.scores[1] <= baseline.scores[1]:
            problems.append(
                f"method 1: {candidate.scores[1]} points, not above the baseline's "
                f"{baseline.scores[1]}"
            )
        if problems:
            raise CaseFailure(
                "\n".join([f"case {self.case.id} failed:", *problems, text])
            )

    def repr_failure(self, excinfo, style=None):
        if isinstance(excinfo.value, CaseFailure):
            return str(excinfo.value)
        return super().repr_failure(excinfo, style=style)

    def reportinfo(self):
        return (
            self.case.source,
            self.case.line - 1,
            f"case {self.case.id}: {self.case.query}",
        )


class CaseFailure(Exception):
    """A retrieval case whose per-case expectation is not met."""


def format_case(case: Case, results: dict[str, CaseResult]) -> str:
    """Render a case's top results with judgements and points, one block per model."""
    lines = [f"query: {case.query}  (expect {case.category} / {case.attribute})"]
    for role, result in results.items():
        totals = ", ".join(f"m{m} {s}" for m, s in sorted(result.scores.items()))
        lines.append(f"{role}: {totals}")
        for position, item_id in enumerate(result.result_ids):
            marks = (
                ("category ok" if result.category_ok[position] else "category wrong")
                + ", "
                + (
                    "attribute ok"
                    if result.attribute_ok[position]
                    else "attribute wrong"
                )
            )
            points = ", ".join(
                f"m{m} {result.points[m][position]}" for m in sorted(result.points)
            )
            lines.append(
                f"  {position + 1}. {item_id}: {result.result_categories[position]} / "
                f"{result.result_attributes[position]} ({marks}; {points})"
            )
    return "\n".join(lines)
