"""The session's results as one JSON-ready document: models, figures, verdicts, selection.

The HTML report and ``--modelqa-json`` both render this document, so the two always
carry the same figures.
"""

from __future__ import annotations

import datetime as dt
import platform
import subprocess
from dataclasses import asdict
from pathlib import Path

import pytest

from pytest_modelqa import __version__
from pytest_modelqa.gate import select_models
from pytest_modelqa.models import describe_model
from pytest_modelqa.runner import SuiteRunner
from pytest_modelqa.state import GateState

RESULTS_FORMAT = "pytest-modelqa-results"
RESULTS_VERSION = 1

# The session's document once built, so that the HTML report and --modelqa-json render
# the same one instead of each building its own.
results_key = pytest.StashKey[dict]()


def _git_commit(root: Path) -> str | None:
    try:
        completed = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return completed.stdout.strip() or None


def environment(root: Path) -> dict:
    """Return versions, machine, date and commit for the results header."""
    import open_clip
    import torch

    return {
        "pytest_modelqa": __version__,
        "torch": torch.__version__,
        "open_clip": open_clip.__version__,
        "python": platform.python_version(),
        "machine": f"{platform.machine()}, {platform.processor() or platform.system()}",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "commit": _git_commit(root),
    }


def _model_entry(state: GateState, spec: str, role: str, label: str) -> dict:
    entry = {"label": label, "role": role, "spec": spec}
    if role == "baseline" and state.recording is not None:
        # The recording's description of the model; its weights are not loaded.
        entry.update(state.recording.model)
        entry["recorded_in"] = str(state.recording.path)
        return entry
    try:
        model = state.pool.model(spec)
        entry.update(describe_model(model))
        entry["history"] = model.info.get("history", [])
    except ValueError as error:  # the load failed; its items already report why
        entry["error"] = str(error)
    return entry


def _classification(figures: dict) -> dict:
    return {
        "n": len(figures["ids"]),
        "classes": figures["classes"],
        "zero_shot_accuracy": figures["zero_shot_accuracy"],
        "top_k": figures["top_k"],
        "rank_score": figures["rank_score"],
        "rank_score_max": figures["rank_score_max"],
        "report": figures["report"],
        "warnings": figures["warnings"],
    }


def _retrieval(runner: SuiteRunner, spec: str) -> dict:
    cases = {}
    root = runner.suite.catalog.root
    images = dict(
        zip(runner.suite.catalog.ids, runner.suite.catalog.frame["image"], strict=True)
    )
    for case_id, result in runner.figures(spec).retrieval.items():
        case = result.case
        cases[case_id] = {
            "query": case.query,
            "text": case.text,
            "image": str(case.image) if case.image else None,
            "category": case.category,
            "attribute": case.attribute,
            "matches": result.matches,
            "automated": result.automated,
            "scores": result.scores,
            "results": [
                {
                    "id": item_id,
                    "image": str(root / images[item_id]),
                    "category": result.result_categories[i],
                    "attribute": result.result_attributes[i],
                    "category_ok": result.category_ok[i],
                    "attribute_ok": result.attribute_ok[i],
                    "points": {m: result.points[m][i] for m in result.points},
                }
                for i, item_id in enumerate(result.result_ids)
            ],
        }
    return cases


def _suite_entry(state: GateState, runner: SuiteRunner) -> dict:
    suite = runner.suite
    models = {"baseline": runner.baseline, **state.candidates}
    figures = {}
    for label, spec in models.items():
        if spec in runner._figures:  # only models whose figures were computed
            computed = runner._figures[spec]
            figures[label] = {
                "classification": _classification(computed.classification),
                "retrieval": _retrieval(runner, spec),
                "benchmarks": computed.benchmarks,
            }
    return {
        "name": suite.name,
        "path": str(suite.path),
        "catalog": {
            "name": suite.catalog.name,
            "sha256": suite.catalog.sha256,
            "items": len(suite.catalog),
        },
        "figures": figures,
    }


def build_results(state: GateState, root: Path) -> dict:
    """Collect everything the session computed into one JSON-ready document."""
    verdicts = state.verdicts
    selection = select_models(verdicts, list(state.candidates))
    models = [_model_entry(state, state.baseline, "baseline", "baseline")]
    models += [
        _model_entry(state, spec, "candidate", label)
        for label, spec in state.candidates.items()
    ]
    return {
        "format": RESULTS_FORMAT,
        "format_version": RESULTS_VERSION,
        "environment": environment(root),
        "models": models,
        "suites": [_suite_entry(state, runner) for runner in state.runners.values()],
        "verdicts": [
            {
                "check": v.check,
                "phase": v.phase,
                "candidate": v.candidate,
                "observed": v.observed,
                "baseline": v.baseline,
                "delta": v.delta,
                "rule": asdict(v.rule) | {"text": v.rule.describe()},
                "passed": v.passed,
                "details": v.details,
            }
            for v in verdicts
        ],
        "selection": asdict(selection),
    }
