"""Recorded baselines: a baseline's figures, per-item results and hashes as JSON.

``--modelqa-save-baseline PATH`` writes a recording while the baseline's weights are at
hand; ``--modelqa-baseline-results PATH`` gates candidates against it without loading
them. The recording contains every per-item result that the paired statistics use:
the true class's rank and the prediction per test item, the judged results of each
retrieval case and the correctness per benchmark image. A gate against it therefore
reaches the same verdicts as a gate against the weights.

Each suite in a recording carries two kinds of hash. The settings hash covers what in
the suite determines the figures (catalog, columns, prompt, labels, splits, top_k,
min_matches, the retrieval queries and the benchmarks). Gate rules, statistics
settings, case expectations and tags are left out, so changing a rule needs no new
recording. The catalog hashes cover each catalog's manifest and the content of its
images.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pytest_modelqa.catalog import Catalog
from pytest_modelqa.models import LoadedModel, describe_model, file_sha256
from pytest_modelqa.runner import BaselineError, CaseResult, ModelFigures, SuiteRunner
from pytest_modelqa.suite import Suite

RECORDING_FORMAT = "pytest-modelqa-baseline"
RECORDING_VERSION = 1
# Prefix of the name that replaces the baseline spec when a recording is used. No
# spec loads under such a name, because "recorded" is not an open_clip architecture.
RECORDED_PREFIX = "recorded:"


class RecordingError(ValueError):
    """A recorded baseline file that is unreadable, of another format or malformed."""


# --- Hashes ---------------------------------------------------------------------------


def suite_key(suite: Suite, root: Path) -> str:
    """Return the suite's file path relative to `root` (the rootdir), else absolute."""
    path = Path(suite.path).resolve()
    try:
        return path.relative_to(Path(root).resolve()).as_posix()
    except ValueError:
        return path.as_posix()


def suite_settings(suite: Suite) -> dict:
    """Return what in a suite determines a model's figures, as plain JSON values."""
    return {
        "catalog": suite.catalog.name,
        "columns": {
            "category": suite.category_column,
            "attribute": suite.attribute_column,
        },
        "attribute_prompt": suite.attribute_prompt,
        "none_value": suite.none_value,
        "none_policy": suite.none_policy,
        "synonyms": dict(sorted(suite.synonyms.items())),
        "classification_split": suite.classification_split,
        "top_k": suite.top_k,
        "gallery_split": suite.gallery_split,
        "min_matches": suite.min_matches,
        "cases": {
            case.id: {
                "text": case.text,
                "image_sha256": file_sha256(case.image) if case.image else None,
                "category": case.category,
                "attribute": case.attribute,
                "k": case.k,
            }
            for case in suite.cases
        },
        "benchmarks": {
            benchmark.name: {
                "catalog": benchmark.catalog.name,
                "prompt": benchmark.prompt,
                "column": benchmark.column,
            }
            for benchmark in suite.benchmarks
        },
    }


def settings_sha256(settings: dict) -> str:
    text = json.dumps(settings, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def catalog_fingerprint(catalog: Catalog) -> dict:
    """Hash a catalog's manifest and, separately, its items' ids and image contents."""
    digest = hashlib.sha256()
    for item_id, path in zip(catalog.ids, catalog.image_paths(), strict=True):
        try:
            content = file_sha256(path)
        except OSError:
            # A missing image fails the gate when it is encoded; here it only has
            # to hash differently from any image.
            content = "missing"
        digest.update(f"{item_id}\0{content}\0".encode())
    return {
        "name": catalog.name,
        "items": len(catalog),
        "manifest_sha256": catalog.sha256,
        "images_sha256": digest.hexdigest(),
    }


def suite_catalogs(suite: Suite) -> dict[str, dict]:
    """Return the fingerprint of every catalog a suite reads, by its YAML key."""
    catalogs = {"catalog": catalog_fingerprint(suite.catalog)}
    for benchmark in suite.benchmarks:
        key = f"benchmarks.{benchmark.name}.catalog"
        catalogs[key] = catalog_fingerprint(benchmark.catalog)
    return catalogs


# --- Writing --------------------------------------------------------------------------


def _figures_to_json(figures: ModelFigures) -> dict:
    classification = figures.classification
    return {
        "classification": {
            "classes": list(classification["classes"]),
            "ids": list(classification["ids"]),
            "y_true": list(classification["y_true"]),
            "y_pred": list(classification["y_pred"]),
            "ranks": [int(rank) for rank in classification["ranks"]],
            "report": classification["report"],
            "zero_shot_accuracy": float(classification["zero_shot_accuracy"]),
            "top_k": [float(value) for value in classification["top_k"]],
            "rank_score": int(classification["rank_score"]),
            "rank_score_max": int(classification["rank_score_max"]),
            "warnings": list(classification["warnings"]),
        },
        "retrieval": {
            case_id: {
                "matches": result.matches,
                "automated": result.automated,
                "result_ids": result.result_ids,
                "result_categories": result.result_categories,
                "result_attributes": result.result_attributes,
                "category_ok": result.category_ok,
                "attribute_ok": result.attribute_ok,
                "points": {str(m): values for m, values in result.points.items()},
                "scores": {str(m): score for m, score in result.scores.items()},
            }
            for case_id, result in figures.retrieval.items()
        },
        "benchmarks": {
            name: {
                "accuracy": float(entry["accuracy"]),
                "correct": [bool(value) for value in entry["correct"]],
                "n": int(entry["n"]),
                "classes": int(entry["classes"]),
                "chance": float(entry["chance"]),
            }
            for name, entry in figures.benchmarks.items()
        },
    }


def build_recording(
    runners: list[SuiteRunner], model: LoadedModel, root: Path, environment: dict
) -> dict:
    """Compute the baseline's figures on every suite and return the recording.

    Raises what computing the figures raises (ModelLoadError, ImageLoadError,
    BaselineError).
    """
    suites = {}
    for runner in runners:
        settings = suite_settings(runner.suite)
        suites[suite_key(runner.suite, root)] = {
            "name": runner.suite.name,
            "settings": settings,
            "settings_sha256": settings_sha256(settings),
            "catalogs": suite_catalogs(runner.suite),
            "figures": _figures_to_json(runner.figures(runner.baseline)),
        }
    return {
        "format": RECORDING_FORMAT,
        "format_version": RECORDING_VERSION,
        "environment": environment,
        "model": describe_model(model),
        "suites": suites,
    }


def write_recording(path: str | Path, document: dict) -> Path:
    """Write a recording atomically, so a crash mid-write keeps the old file."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.partial")
    partial.write_text(json.dumps(document, indent=1, default=_json_default))
    os.replace(partial, target)
    return target


def _json_default(value):
    # sklearn's report and numpy reductions return numpy scalars.
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"cannot store {type(value).__name__} in a recorded baseline")


# --- Reading --------------------------------------------------------------------------

_KIND_NAMES = {
    dict: "an object",
    list: "a list",
    str: "text",
    int: "a whole number",
    float: "a number",
    bool: "true or false",
}


def _kind_name(value: Any) -> str:
    if value is None:
        return "null"
    return _KIND_NAMES.get(type(value), type(value).__name__)


def _matches_kind(value: Any, kind: type) -> bool:
    if kind is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, kind)


def _field(node: Any, key: str, kind: type, where: str) -> Any:
    if not isinstance(node, dict):
        raise RecordingError(f"{where} is {_kind_name(node)}, expected an object")
    if key not in node:
        raise RecordingError(f"{where} lacks {key!r}")
    value = node[key]
    if not _matches_kind(value, kind):
        raise RecordingError(
            f"{where}.{key} is {_kind_name(value)}, expected {_KIND_NAMES[kind]}"
        )
    return value


def _list_field(node: Any, key: str, kind: type, where: str) -> list:
    values = _field(node, key, list, where)
    for index, value in enumerate(values):
        if not _matches_kind(value, kind):
            raise RecordingError(
                f"{where}.{key}[{index}] is {_kind_name(value)}, expected "
                f"{_KIND_NAMES[kind]}"
            )
    return values


def _points_field(node: dict, key: str, kind: type, where: str) -> dict[int, Any]:
    """Read a mapping from scoring method (1 to 4, stored as text) to a value."""
    mapping = _field(node, key, dict, where)
    parsed = {}
    for method in mapping:
        if method not in ("1", "2", "3", "4"):
            raise RecordingError(
                f"{where}.{key} has method {method!r}, expected 1, 2, 3 or 4"
            )
        parsed[int(method)] = _field(mapping, method, kind, f"{where}.{key}")
    return parsed


def _parse_classification(node: Any, where: str) -> dict:
    ids = _list_field(node, "ids", str, where)
    figures = {
        "classes": _list_field(node, "classes", str, where),
        "ids": ids,
        "y_true": _list_field(node, "y_true", str, where),
        "y_pred": _list_field(node, "y_pred", str, where),
        "ranks": np.array(_list_field(node, "ranks", int, where), dtype=np.int64),
        "report": _field(node, "report", dict, where),
        "zero_shot_accuracy": float(_field(node, "zero_shot_accuracy", float, where)),
        "top_k": [float(v) for v in _list_field(node, "top_k", float, where)],
        "rank_score": _field(node, "rank_score", int, where),
        "rank_score_max": _field(node, "rank_score_max", int, where),
        "warnings": _list_field(node, "warnings", str, where),
    }
    for key in ("y_true", "y_pred", "ranks"):
        if len(figures[key]) != len(ids):
            raise RecordingError(
                f"{where}.{key} has {len(figures[key])} entries but ids has {len(ids)}"
            )
    if not ids:
        raise RecordingError(f"{where}.ids is empty")
    return figures


def _parse_case(node: Any, where: str) -> dict:
    results = {
        "matches": _field(node, "matches", int, where),
        "automated": _field(node, "automated", bool, where),
        "result_ids": _list_field(node, "result_ids", str, where),
        "result_categories": _list_field(node, "result_categories", str, where),
        "result_attributes": _list_field(node, "result_attributes", str, where),
        "category_ok": _list_field(node, "category_ok", bool, where),
        "attribute_ok": _list_field(node, "attribute_ok", bool, where),
        "points": _points_field(node, "points", list, where),
        "scores": _points_field(node, "scores", int, where),
    }
    if results["automated"] and set(results["scores"]) != {1, 2, 3, 4}:
        raise RecordingError(f"{where}.scores lacks some of the methods 1 to 4")
    return results


def _parse_benchmark(node: Any, where: str) -> dict:
    entry = {
        "accuracy": float(_field(node, "accuracy", float, where)),
        "correct": np.array(_list_field(node, "correct", bool, where), dtype=bool),
        "n": _field(node, "n", int, where),
        "classes": _field(node, "classes", int, where),
        "chance": float(_field(node, "chance", float, where)),
    }
    if entry["correct"].size != entry["n"]:
        raise RecordingError(
            f"{where}.correct has {entry['correct'].size} entries but n is {entry['n']}"
        )
    return entry


@dataclass
class RecordedSuite:
    """One suite's entry of a recording, parsed and checked for shape."""

    key: str
    name: str
    settings: dict
    settings_sha256: str
    catalogs: dict[str, dict]
    classification: dict
    retrieval: dict[str, dict]
    benchmarks: dict[str, dict]


def _parse_suite(key: str, node: Any) -> RecordedSuite:
    where = f"suites[{key!r}]"
    figures = _field(node, "figures", dict, where)
    catalogs = _field(node, "catalogs", dict, where)
    for role in catalogs:
        for name in ("manifest_sha256", "images_sha256", "name"):
            _field(catalogs[role], name, str, f"{where}.catalogs[{role!r}]")
    retrieval = _field(figures, "retrieval", dict, f"{where}.figures")
    benchmarks = _field(figures, "benchmarks", dict, f"{where}.figures")
    return RecordedSuite(
        key=key,
        name=_field(node, "name", str, where),
        settings=_field(node, "settings", dict, where),
        settings_sha256=_field(node, "settings_sha256", str, where),
        catalogs=catalogs,
        classification=_parse_classification(
            _field(figures, "classification", dict, f"{where}.figures"),
            f"{where}.figures.classification",
        ),
        retrieval={
            case_id: _parse_case(case, f"{where}.figures.retrieval[{case_id!r}]")
            for case_id, case in retrieval.items()
        },
        benchmarks={
            name: _parse_benchmark(entry, f"{where}.figures.benchmarks[{name!r}]")
            for name, entry in benchmarks.items()
        },
    )


@dataclass
class BaselineRecording:
    """A recorded baseline read from disk: the model's identity and its figures."""

    path: Path
    root: Path
    model: dict  # describe_model() of the recorded baseline: spec, name, sha256, ...
    environment: dict
    suites: dict[str, RecordedSuite]

    @property
    def spec(self) -> str:
        """Return the name used in place of a baseline spec: recorded:PATH."""
        return f"{RECORDED_PREFIX}{self.path}"

    @property
    def sha256(self) -> str:
        return self.model["sha256"]

    def figures_for(self, suite: Suite) -> ModelFigures:
        """Return the recorded figures of a suite, after checking that it is unchanged.

        Raises BaselineError when the suite is not in the recording, or when its
        settings or one of its catalogs differ from the recorded hashes.
        """
        key = suite_key(suite, self.root)
        recorded = self.suites.get(key)
        if recorded is None:
            known = ", ".join(sorted(self.suites)) or "none"
            raise BaselineError(
                f"suite {suite.name!r} ({key}) is not in the recorded baseline "
                f"{self.path}, which contains: {known}. Record the baseline on this "
                "suite with --modelqa-save-baseline"
            )
        self._check_settings(suite, recorded)
        self._check_catalogs(suite, recorded)
        retrieval = {}
        for case in suite.cases:
            fields = recorded.retrieval.get(case.id)
            if fields is None:
                raise BaselineError(
                    f"{self.path}: case {case.id!r} of suite {suite.name!r} has no "
                    "recorded results; record the baseline again"
                )
            retrieval[case.id] = CaseResult(case=case, **fields)
        return ModelFigures(
            classification=dict(recorded.classification),
            retrieval=retrieval,
            benchmarks=dict(recorded.benchmarks),
        )

    def _mismatch(self, suite: Suite, what: str) -> BaselineError:
        return BaselineError(
            f"suite {suite.name!r}: {what}, so the baseline recorded in {self.path} "
            "does not apply. Record the baseline again with --modelqa-save-baseline, "
            "or gate against its weights with --modelqa-baseline"
        )

    def _check_settings(self, suite: Suite, recorded: RecordedSuite) -> None:
        settings = suite_settings(suite)
        actual = settings_sha256(settings)
        if actual == recorded.settings_sha256:
            return
        changed = [
            key
            for key in sorted(set(settings) | set(recorded.settings))
            if settings.get(key) != recorded.settings.get(key)
        ]
        details = [
            _describe_change(key, settings, recorded.settings) for key in changed
        ]
        raise self._mismatch(
            suite,
            f"the suite changed since the recording ({'; '.join(details) or 'settings'}"
            f"; settings sha256 {actual}, recorded {recorded.settings_sha256})",
        )

    def _check_catalogs(self, suite: Suite, recorded: RecordedSuite) -> None:
        for role, fingerprint in suite_catalogs(suite).items():
            expected = recorded.catalogs.get(role)
            if expected is None:
                raise self._mismatch(
                    suite, f"{role} {fingerprint['name']!r} has no recorded hash"
                )
            for part in ("manifest_sha256", "images_sha256"):
                if fingerprint[part] != expected[part]:
                    what = "manifest" if part == "manifest_sha256" else "images"
                    raise self._mismatch(
                        suite,
                        f"catalog {fingerprint['name']!r} ({role}) changed since the "
                        f"recording: its {what} sha256 is {fingerprint[part]}, "
                        f"recorded {expected[part]}",
                    )


def _describe_change(key: str, now: dict, recorded: dict) -> str:
    before, after = recorded.get(key), now.get(key)
    if isinstance(before, dict) and isinstance(after, dict) and key == "cases":
        added = sorted(set(after) - set(before))
        removed = sorted(set(before) - set(after))
        changed = sorted(k for k in set(after) & set(before) if after[k] != before[k])
        parts = [
            f"{label} {', '.join(ids)}"
            for label, ids in (
                ("added", added),
                ("removed", removed),
                ("changed", changed),
            )
            if ids
        ]
        return f"cases {'; '.join(parts)}"
    return f"{key} is {_short(after)}, recorded {_short(before)}"


def _short(value: Any, limit: int = 80) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def read_recording(path: str | Path, *, root: Path) -> BaselineRecording:
    """Read and check a recorded baseline; raise RecordingError saying what is wrong."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as error:
        raise RecordingError("file not found") from error
    except (OSError, UnicodeDecodeError) as error:
        raise RecordingError(f"not readable ({error})") from error
    try:
        document = json.loads(text, parse_constant=_reject_constant)
    except (json.JSONDecodeError, ValueError) as error:
        raise RecordingError(f"not valid JSON ({error})") from error

    if not isinstance(document, dict):
        raise RecordingError(f"contains {_kind_name(document)}, expected an object")
    found = document.get("format")
    if found != RECORDING_FORMAT:
        hint = (
            ": it is a results file written by --modelqa-json"
            if found == "pytest-modelqa-results"
            else ""
        )
        raise RecordingError(
            f"not a recorded baseline (format {found!r}, expected "
            f"{RECORDING_FORMAT!r}){hint}. Write one with --modelqa-save-baseline PATH"
        )
    version = document.get("format_version")
    if not _matches_kind(version, int) or version > RECORDING_VERSION:
        raise RecordingError(
            f"format_version {version!r} is newer than this pytest-modelqa reads "
            f"({RECORDING_VERSION}); upgrade pytest-modelqa"
        )

    model = _field(document, "model", dict, "the file")
    _field(model, "sha256", str, "model")
    _field(model, "spec", str, "model")
    suites = _field(document, "suites", dict, "the file")
    return BaselineRecording(
        path=path,
        root=root,
        model=model,
        environment=document.get("environment") or {},
        suites={key: _parse_suite(key, node) for key, node in suites.items()},
    )


def _reject_constant(name: str) -> float:
    # json accepts NaN and Infinity, which no recorded figure can be.
    raise ValueError(f"{name} is not a valid figure")
