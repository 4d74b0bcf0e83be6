"""Computation of every figure a suite needs, once per model per session."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import string
import warnings
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pytest_modelqa import evaluation, statistics
from pytest_modelqa.cache import EmbeddingCache
from pytest_modelqa.catalog import Catalog
from pytest_modelqa.embeddings import (
    embedding_dim,
    encode_images,
    encode_texts,
    top_k,
)
from pytest_modelqa.gate import Verdict, compare, worst_class
from pytest_modelqa.models import LoadedModel, ModelLoadError, load_model
from pytest_modelqa.suite import Case, Suite

if TYPE_CHECKING:
    from pytest_modelqa.recording import BaselineRecording

logger = logging.getLogger(__name__)
# Largest p-value at which a baseline's accuracy counts as above uniform guessing.
BASELINE_CHANCE_ALPHA = 0.01


@dataclass
class EncodeOptions:
    """Encoding settings: device, batch size, workers, precision, cache, progress.

    `progress_output` returns the context in which progress bars are drawn. The
    plugin passes one that suspends pytest's output capture, so that the bars reach
    the terminal instead of a test's captured stderr.
    """

    device: str = "cpu"
    batch_size: int = 64
    workers: int = 0
    progress: bool = True
    precision: str = "fp32"
    cache: EmbeddingCache | None = None
    progress_output: Callable[[], AbstractContextManager] = contextlib.nullcontext


@dataclass
class CaseResult:
    """One model's answer to one retrieval case."""

    case: Case
    matches: int
    automated: bool
    result_ids: list[str] = field(default_factory=list)
    result_categories: list[str] = field(default_factory=list)
    result_attributes: list[str] = field(default_factory=list)
    category_ok: list[bool] = field(default_factory=list)
    attribute_ok: list[bool] = field(default_factory=list)
    points: dict[int, list[int]] = field(default_factory=dict)
    scores: dict[int, int] = field(default_factory=dict)


@dataclass
class ModelFigures:
    """Every figure of one model on one suite."""

    classification: dict
    retrieval: dict[str, CaseResult]
    benchmarks: dict[str, dict]


class BaselineError(Exception):
    """A baseline that cannot serve as the yardstick: changed, or at chance level."""


class ModelPool:
    """Loaded models and their embeddings, shared by every suite of a session.

    Each model encodes a catalog once and a prompt once per session. With a cache in
    the options, embeddings that an earlier session computed are read from it.
    """

    def __init__(self, options: EncodeOptions, *, arch: str | None = None):
        self.options = options
        self.arch = arch
        self._models: dict[str, LoadedModel | ModelLoadError] = {}
        self._images: dict[tuple[str, str], np.ndarray] = {}
        # weights hash -> {prompt: (D,) embedding}
        self._texts: dict[str, dict[str, np.ndarray]] = {}

    def model(self, spec: str) -> LoadedModel:
        """Load a model once; a failed load is remembered and raised again."""
        if spec not in self._models:
            try:
                self._models[spec] = load_model(spec, arch=self.arch)
            except ModelLoadError as error:
                self._models[spec] = error
        loaded = self._models[spec]
        if isinstance(loaded, ModelLoadError):
            raise loaded
        return loaded

    def image_embeddings(self, spec: str, catalog: Catalog) -> np.ndarray:
        """Return (N, D) embeddings of a catalog's images, encoding each once."""
        model = self.model(spec)
        paths = catalog.image_paths()
        key = (model.sha256, _paths_key(paths))
        if key not in self._images:
            logger.info(
                "encoding %d images of %s with %s", len(paths), catalog.name, model.name
            )
            with self.options.progress_output():
                self._images[key] = self._encode_images(
                    model, paths, progress=self.options.progress, desc=catalog.name
                )
        return self._images[key]

    def query_embedding(self, spec: str, path: Path) -> np.ndarray:
        """Return the (1, D) embedding of a query image, encoding it once."""
        model = self.model(spec)
        key = (model.sha256, _paths_key([path]))
        if key not in self._images:
            self._images[key] = self._encode_images(
                model, [path], progress=False, desc=Path(path).name
            )
        return self._images[key]

    def store_image_embeddings(
        self, spec: str, catalog: Catalog, embeddings: np.ndarray
    ) -> None:
        """Keep (N, D) embeddings of a catalog's images that other processes encoded."""
        key = (self.model(spec).sha256, _paths_key(catalog.image_paths()))
        self._images[key] = embeddings

    def _encode_images(
        self, model: LoadedModel, paths: list[Path], *, progress: bool, desc: str
    ) -> np.ndarray:
        options = self.options
        return encode_images(
            model,
            paths,
            batch_size=options.batch_size,
            workers=options.workers,
            device=options.device,
            progress=progress,
            desc=f"{model.name}: {desc}",
            cache=options.cache,
            precision=options.precision,
        )

    def text_embeddings(self, spec: str, texts: list[str]) -> np.ndarray:
        """Return (T, D) embeddings of prompts, encoding each text once per model."""
        model = self.model(spec)
        known = self._texts.setdefault(model.sha256, {})
        missing = [text for text in dict.fromkeys(texts) if text not in known]
        if missing:
            encoded = encode_texts(
                model,
                missing,
                device=self.options.device,
                precision=self.options.precision,
                cache=self.options.cache,
            )  # (M, D)
            known.update(zip(missing, encoded, strict=True))
        if not texts:
            return np.zeros((0, embedding_dim(model) or 0), dtype=np.float32)
        return np.stack([known[text] for text in texts])  # (T, D)

    def loaded(self) -> list[LoadedModel]:
        return [
            model for model in self._models.values() if isinstance(model, LoadedModel)
        ]


def _paths_key(paths: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in paths:
        digest.update(str(path).encode())
        digest.update(b"\0")
    return digest.hexdigest()


def format_prompt(template: str, *, value: str, category: str = "") -> str:
    return template.format(value=value, category=category)


def template_fields(template: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(template) if name}


class SuiteRunner:
    """Figures and verdicts of one suite for the baseline and each candidate."""

    def __init__(
        self,
        suite: Suite,
        pool: ModelPool,
        baseline: str,
        candidates: dict[str, str],
        *,
        recording: BaselineRecording | None = None,
    ):
        self.suite = suite
        self.pool = pool
        self.baseline = baseline
        self.candidates = candidates  # label -> spec
        # With a recorded baseline, the baseline's figures are read from the
        # recording instead of computed, and `baseline` is the recording's spec.
        self.recording = recording
        self._figures: dict[str, ModelFigures] = {}
        self._image_hashes: list[str] | None = None
        self._baseline_sane = False
        self._matches: dict[str, tuple[int, np.ndarray]] = {}
        self.verdicts: list[Verdict] = []

    # -- figures --------------------------------------------------------------------

    def figures(self, spec: str) -> ModelFigures:
        if spec == self.baseline and spec not in self._figures:
            self._check_pin()
            if self.recording is not None:
                self._figures[spec] = self.recording.figures_for(self.suite)
        if spec not in self._figures:
            self._figures[spec] = ModelFigures(
                classification=self._classification(spec),
                retrieval={
                    case.id: self._case(spec, case) for case in self.suite.cases
                },
                benchmarks={
                    b.name: self._benchmark(spec, b) for b in self.suite.benchmarks
                },
            )
        return self._figures[spec]

    def _check_pin(self) -> None:
        pinned = self.suite.baseline_sha256
        if not pinned:
            return
        if self.recording is not None:
            name = f"{self.recording.model['spec']} (recorded in {self.recording.path})"
            actual = self.recording.sha256
            fix = "Record the pinned model with --modelqa-save-baseline"
        else:
            name = self.baseline
            actual = self.pool.model(self.baseline).sha256
            fix = "Point --modelqa-baseline at the pinned model"
        if actual != pinned:
            raise BaselineError(
                f"baseline {name} has sha256 {actual}, but {self.suite.path} "
                f"pins baseline_sha256 {pinned}: the baseline's weights changed. "
                f"{fix}, or update the pin on purpose."
            )

    def check_baseline_loads(self) -> None:
        """Raise BaselineError when the baseline cannot be loaded.

        A recorded baseline is checked against the suite instead: the suite must be
        in the recording, with the recorded settings and catalog hashes.
        """
        if self.recording is not None:
            self.figures(self.baseline)
            return
        try:
            self.pool.model(self.baseline)
        except ModelLoadError as error:
            raise BaselineError(f"baseline could not be loaded: {error}") from error

    def check_baseline_sane(self) -> None:
        """Raise BaselineError when the baseline's phase 1 predictions ignore images.

        Its accuracy must beat uniform guessing over the classes, by a one-sided
        binomial p-value of at most BASELINE_CHANCE_ALPHA. It must also name more
        than one class, which open_clip weights loaded with the wrong activation
        (QuickGELU or GELU) may fail to do. A baseline that never
        learned the attribute may still score below the most frequent class's
        share, and stays a valid yardstick.
        """
        if self._baseline_sane:
            return
        figures = self.figures(self.baseline).classification
        truth, predicted = figures["y_true"], figures["y_pred"]
        classes = len(figures["classes"])
        correct = sum(a == b for a, b in zip(truth, predicted, strict=True))
        p_value = statistics.above_chance_p_value(
            correct, len(truth), chance=1 / classes
        )
        named = set(predicted)
        reason = None
        if p_value > BASELINE_CHANCE_ALPHA:
            reason = (
                f"its zero-shot accuracy {correct / len(truth):.4f} on {len(truth)} "
                f"items is not above uniform guessing over {classes} classes "
                f"({1 / classes:.4f}; one-sided binomial p-value {p_value:.3g})"
            )
        elif len(named) == 1 and len(set(truth)) > 1:
            reason = (
                f"it names {next(iter(named))!r} for all {len(truth)} items, so its "
                "predictions do not depend on the image"
            )
        if reason is not None:
            raise BaselineError(
                f"baseline looks broken: {reason}. Check the baseline spec and its "
                "activation (QuickGELU or GELU), or set the ini option "
                "modelqa_check_baseline = false to gate against it anyway."
            )
        self._baseline_sane = True

    def attribute_classes(self) -> list[str]:
        suite = self.suite
        values = {
            suite.canonical("", v) for v in suite.catalog.labels(suite.attribute_column)
        }
        if suite.none_policy == "exclude":
            values.discard(suite.none_value)
        return sorted(values)

    def classification_items(self) -> np.ndarray:
        """Return the catalog row indices scored in phase 1."""
        suite = self.suite
        frame = suite.catalog.frame
        mask = np.ones(len(frame), dtype=bool)
        if suite.classification_split != "all":
            mask &= (frame["split"] == suite.classification_split).to_numpy()
        if suite.none_policy == "exclude":
            attributes = [
                suite.canonical("", v)
                for v in suite.catalog.labels(suite.attribute_column)
            ]
            mask &= np.array([value != suite.none_value for value in attributes])
        return np.flatnonzero(mask)

    def _classification(self, spec: str) -> dict:
        suite = self.suite
        classes = self.attribute_classes()
        rows = self.classification_items()
        if rows.size == 0:
            raise ValueError(
                f"suite {suite.name!r}: no items in split {suite.classification_split!r} "
                "to classify"
            )
        images = self.pool.image_embeddings(spec, suite.catalog)[rows]  # (N, D)
        all_attributes = suite.catalog.labels(suite.attribute_column)
        all_categories = suite.catalog.labels(suite.category_column)
        truth = [suite.canonical("", all_attributes[i]) for i in rows]
        categories = [all_categories[i] for i in rows]
        scores = self._attribute_scores(spec, images, categories, classes)  # (N, C)
        y_true = np.array([classes.index(value) for value in truth])
        ranks = evaluation.true_class_ranks(y_true, scores)
        y_pred = [classes[i] for i in evaluation.rank_classes(scores)[:, 0]]
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", evaluation.MetricWarning)
            report = evaluation.classification_report(truth, y_pred, labels=classes)
        max_k = max(suite.top_k, min(10, len(classes)))
        return {
            "classes": classes,
            "ids": [suite.catalog.ids[i] for i in rows],
            "y_true": truth,
            "y_pred": y_pred,
            "ranks": ranks,
            "report": report,
            "zero_shot_accuracy": evaluation.top_k_accuracy(ranks, k=1),
            "top_k": evaluation.top_k_curve(ranks, max_k=max_k),
            "rank_score": evaluation.rank_score(ranks),
            "rank_score_max": evaluation.RANK_SCORE_POINTS * len(rows),
            "warnings": [str(w.message) for w in caught],
        }

    def _attribute_scores(self, spec, images, categories, classes) -> np.ndarray:
        template = self.suite.attribute_prompt
        if "category" not in template_fields(template):
            prompts = [format_prompt(template, value=value) for value in classes]
            return images @ self.pool.text_embeddings(spec, prompts).T
        scores = np.zeros((len(images), len(classes)), dtype=np.float32)
        for category in sorted(set(categories)):
            prompts = [
                format_prompt(template, value=v, category=category) for v in classes
            ]
            texts = self.pool.text_embeddings(spec, prompts)  # (C, D)
            rows = np.array([c == category for c in categories])
            scores[rows] = images[rows] @ texts.T
        return scores

    def gallery(self) -> np.ndarray:
        """Return the catalog row indices that form the retrieval gallery."""
        frame = self.suite.catalog.frame
        if self.suite.gallery_split == "all":
            return np.arange(len(frame))
        return np.flatnonzero((frame["split"] == self.suite.gallery_split).to_numpy())

    def image_hashes(self) -> list[str]:
        if self._image_hashes is None:
            self._image_hashes = [
                _sha256(path) for path in self.suite.catalog.image_paths()
            ]
        return self._image_hashes

    def match_count(self, case: Case) -> tuple[int, np.ndarray]:
        """Count gallery products matching a case; return it with the excluded mask."""
        if case.id in self._matches:
            return self._matches[case.id]
        suite = self.suite
        rows = self.gallery()
        categories = suite.catalog.labels(suite.category_column)
        attributes = suite.catalog.labels(suite.attribute_column)
        excluded = np.zeros(rows.size, dtype=bool)
        if case.image is not None:
            own = _sha256(case.image)
            hashes = self.image_hashes()
            excluded = np.array([hashes[i] == own for i in rows], dtype=bool)
        matches = sum(
            1
            for position, i in enumerate(rows)
            if not excluded[position]
            and categories[i] == case.category
            and suite.canonical("", attributes[i]) == case.attribute
        )
        self._matches[case.id] = (matches, excluded)
        return matches, excluded

    def _case(self, spec: str, case: Case) -> CaseResult:
        suite = self.suite
        matches, excluded = self.match_count(case)
        result = CaseResult(case, matches, matches >= suite.min_matches)
        if not result.automated:
            return result
        rows = self.gallery()
        gallery = self.pool.image_embeddings(spec, suite.catalog)[rows]  # (G, D)
        if case.text is not None:
            query = self.pool.text_embeddings(spec, [case.text])  # (1, D)
        else:
            query = self.pool.query_embedding(spec, case.image)  # (1, D)
        k = min(case.k, int((~excluded).sum()))
        indices, _ = top_k(query, gallery, k=k, exclude=excluded[None, :])
        picked = rows[indices[0]]
        categories = suite.catalog.labels(suite.category_column)
        attributes = suite.catalog.labels(suite.attribute_column)
        result.result_ids = [suite.catalog.ids[i] for i in picked]
        result.result_categories = [categories[i] for i in picked]
        result.result_attributes = [suite.canonical("", attributes[i]) for i in picked]
        category_ok, attribute_ok = evaluation.judge_results(
            result.result_categories,
            result.result_attributes,
            category=case.category,
            attribute=case.attribute,
        )
        result.category_ok = category_ok.tolist()
        result.attribute_ok = attribute_ok.tolist()
        points = evaluation.retrieval_points(category_ok, attribute_ok)
        result.points = {method: values.tolist() for method, values in points.items()}
        result.scores = {
            method: int(sum(values)) for method, values in result.points.items()
        }
        return result

    def _benchmark(self, spec: str, benchmark) -> dict:
        catalog = benchmark.catalog
        truth = catalog.labels(benchmark.column)
        classes = sorted(set(truth))
        prompts = [format_prompt(benchmark.prompt, value=value) for value in classes]
        images = self.pool.image_embeddings(spec, catalog)  # (N, D)
        scores = images @ self.pool.text_embeddings(spec, prompts).T  # (N, C)
        predicted = [classes[i] for i in evaluation.rank_classes(scores)[:, 0]]
        return {
            "accuracy": evaluation.accuracy(truth, predicted),
            "correct": np.array(
                [a == b for a, b in zip(truth, predicted, strict=True)]
            ),
            "n": len(truth),
            "classes": len(classes),
            "chance": 1.0 / len(classes),
        }

    # -- verdicts -------------------------------------------------------------------

    def automated_cases(self) -> list[Case]:
        return [
            c
            for c in self.suite.cases
            if self.match_count(c)[0] >= self.suite.min_matches
        ]

    def paired_statistics(
        self,
        spec: str,
        check: str,
        *,
        k: int | None = None,
        benchmark: str | None = None,
        class_name: str | None = None,
    ) -> dict | None:
        """Compare candidate and baseline item by item on the same test items.

        Accuracy-type figures get the exact McNemar test (its one-sided p-value) and
        a bootstrap interval of the accuracy difference; F1, precision, recall, rank
        score and retrieval totals get a paired bootstrap interval and p-value. For
        per_class_f1 the bootstrapped figure is the F1 of `class_name`.
        """
        config = self.suite.statistics
        options = {
            "n_resamples": config.resamples,
            "confidence": config.confidence,
            "seed": config.seed,
        }
        mine, base = self.figures(spec), self.figures(self.baseline)
        if benchmark is not None:
            correct = (
                mine.benchmarks[benchmark]["correct"],
                base.benchmarks[benchmark]["correct"],
            )
            return _accuracy_statistics(*correct, options)
        if check.startswith("method_"):
            method = int(check.removeprefix("method_"))
            cases = self.automated_cases()
            if not cases:
                return None
            values = [
                np.array(
                    [figures.retrieval[c.id].scores[method] for c in cases], dtype=float
                )
                for figures in (mine, base)
            ]
            return _bootstrap_statistics(
                statistics.paired_bootstrap(*values, statistic=np.sum, **options)
            )
        ranks = mine.classification["ranks"], base.classification["ranks"]
        if check in ("zero_shot_accuracy", "top_k_accuracy"):
            limit = 1 if k is None else k
            return _accuracy_statistics(ranks[0] <= limit, ranks[1] <= limit, options)
        if check == "rank_score":
            points = [evaluation.rank_points(r).astype(float) for r in ranks]
            return _bootstrap_statistics(
                statistics.paired_bootstrap(*points, statistic=np.sum, **options)
            )
        classes = mine.classification["classes"]
        index = {value: i for i, value in enumerate(classes)}
        y_true = np.array([index[v] for v in mine.classification["y_true"]])
        predictions = [
            np.array([index[v] for v in figures.classification["y_pred"]])
            for figures in (mine, base)
        ]

        def metric(truth, predicted):
            if check == "per_class_f1":
                _, _, f1, _ = evaluation.class_scores(
                    truth, predicted, n_classes=len(classes)
                )
                return f1[index[class_name]]
            return evaluation.averaged_scores(truth, predicted, n_classes=len(classes))[
                check
            ]

        return _bootstrap_statistics(
            statistics.paired_bootstrap_metric(
                y_true, *predictions, metric=metric, **options
            )
        )

    def classification_figure(
        self, spec: str, check: str, k: int | None = None
    ) -> float:
        figures = self.figures(spec).classification
        report = figures["report"]
        if check == "macro_f1":
            return report["macro avg"]["f1-score"]
        if check == "weighted_f1":
            return report["weighted avg"]["f1-score"]
        if check == "macro_precision":
            return report["macro avg"]["precision"]
        if check == "macro_recall":
            return report["macro avg"]["recall"]
        if check == "zero_shot_accuracy":
            return figures["zero_shot_accuracy"]
        if check == "top_k_accuracy":
            return figures["top_k"][k - 1]
        if check == "rank_score":
            return float(figures["rank_score"])
        raise KeyError(check)

    def retrieval_total(self, spec: str, method: int) -> float:
        results = self.figures(spec).retrieval.values()
        return float(sum(r.scores.get(method, 0) for r in results if r.automated))

    def verdict(
        self,
        label: str,
        check: str,
        *,
        k: int | None = None,
        benchmark: str | None = None,
    ) -> Verdict:
        """Compare candidate `label` with the baseline on one check and record it."""
        spec = self.candidates[label]
        name = check if k is None else f"top_{k}_accuracy"
        if check == "per_class_f1":
            verdict = self._per_class_verdict(label, spec)
            verdict.details["suite"] = self.suite.name
            self.verdicts.append(verdict)
            return verdict
        paired = self.paired_statistics(spec, check, k=k, benchmark=benchmark)
        if benchmark is not None:
            rule = next(b.rule for b in self.suite.benchmarks if b.name == benchmark)
            observed = self.figures(spec).benchmarks[benchmark]["accuracy"]
            base = self.figures(self.baseline).benchmarks[benchmark]["accuracy"]
            verdict = compare(
                f"benchmark_{benchmark}",
                "benchmark",
                label,
                observed,
                base,
                rule,
                statistics=paired,
            )
        elif check.startswith("method_"):
            method = int(check.removeprefix("method_"))
            automated = self.automated_cases()
            maximum = sum(
                evaluation.max_retrieval_scores(c.k)[method] for c in automated
            )
            verdict = compare(
                name,
                "retrieval",
                label,
                self.retrieval_total(spec, method),
                self.retrieval_total(self.baseline, method),
                self.suite.retrieval_rules[check],
                statistics=paired,
                maximum=maximum,
                cases=len(automated),
            )
        else:
            verdict = compare(
                name,
                "classification",
                label,
                self.classification_figure(spec, check, k),
                self.classification_figure(self.baseline, check, k),
                self.suite.classification_rules[check],
                statistics=paired,
            )
        verdict.details["suite"] = self.suite.name
        self.verdicts.append(verdict)
        return verdict

    def class_f1(self, spec: str) -> dict[str, float]:
        """Return each attribute class's F1 from the classification report."""
        figures = self.figures(spec).classification
        return {
            name: figures["report"][name]["f1-score"] for name in figures["classes"]
        }

    def _per_class_verdict(self, label: str, spec: str) -> Verdict:
        """Judge every class's F1 against the rule through the class nearest failing."""
        rule = self.suite.classification_rules["per_class_f1"]
        mine, base = self.class_f1(spec), self.class_f1(self.baseline)
        worst = worst_class(rule, mine, base)
        return compare(
            "per_class_f1",
            "classification",
            label,
            mine[worst],
            base[worst],
            rule,
            statistics=self.paired_statistics(spec, "per_class_f1", class_name=worst),
            worst_class=worst,
            class_deltas={name: mine[name] - base[name] for name in mine},
            failing_classes=[
                name for name in mine if not rule.passes(mine[name], base[name])
            ],
        )


def _sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _bootstrap_statistics(result) -> dict:
    return {
        "test": "paired bootstrap",
        "interval": [result.low, result.high],
        "half_width": result.half_width,
        "confidence": result.confidence,
        "p_value": result.p_value_better,
        "resamples": result.n_resamples,
        "seed": result.seed,
    }


def _accuracy_statistics(correct_candidate, correct_baseline, options) -> dict:
    """McNemar's exact test for the p-value, a paired bootstrap for the interval."""
    test = statistics.mcnemar_exact(correct_candidate, correct_baseline)
    interval = statistics.paired_bootstrap(
        np.asarray(correct_candidate, dtype=float),
        np.asarray(correct_baseline, dtype=float),
        statistic=np.mean,
        **options,
    )
    return {
        **_bootstrap_statistics(interval),
        "test": "McNemar exact",
        "p_value": test.p_value_better,
        "p_value_two_sided": test.p_value,
        "discordant": [test.b, test.c],
    }
