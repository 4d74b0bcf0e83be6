"""The session's results document, merged from pytest-xdist workers when they ran it.

Under pytest-xdist each worker computes the figures and verdicts of the items it ran,
and the controller, which writes the HTML report and the JSON file, computes none.
Each worker therefore sends its own results document to the controller in
``workeroutput``, and the controller merges them into one.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import pytest

from pytest_modelqa.gate import Rule, Verdict, select_models
from pytest_modelqa.results import build_results, results_key
from pytest_modelqa.state import state_key

WORKER_OUTPUT_KEY = "modelqa_results"

# The results documents that the controller received from its workers, as JSON text.
worker_documents_key = pytest.StashKey[list[str]]()


def is_worker(config: pytest.Config) -> bool:
    return hasattr(config, "workerinput")


def to_json(document: dict) -> str:
    return json.dumps(document, indent=2, default=_json_default)


def _json_default(value):
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot store {type(value).__name__} in the results JSON")


class WorkerResults:
    """pytest-xdist hooks, registered only when pytest-xdist is active."""

    def __init__(self, config: pytest.Config):
        self.config = config

    @pytest.hookimpl
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        # xdist's own wrapper sends workeroutput after every sessionfinish has run.
        if not is_worker(self.config):
            return
        state = self.config.stash.get(state_key, None)
        if state is None or not state.verdicts:
            return
        document = build_results(state, Path(self.config.rootpath))
        self.config.workeroutput[WORKER_OUTPUT_KEY] = to_json(document)

    @pytest.hookimpl
    def pytest_testnodedown(self, node, error) -> None:
        text = getattr(node, "workeroutput", {}).get(WORKER_OUTPUT_KEY)
        if text is not None:
            self.config.stash.setdefault(worker_documents_key, []).append(text)


def _verdict(entry: dict) -> Verdict:
    rule = Rule(**{key: value for key, value in entry["rule"].items() if key != "text"})
    return Verdict(
        entry["check"],
        entry["phase"],
        entry["candidate"],
        entry["observed"],
        entry["baseline"],
        rule,
        entry["passed"],
        entry["details"],
    )


def merge_results(documents: list[dict], candidates: list[str]) -> dict:
    """Merge the results documents of several workers into one.

    Each document contains the verdicts of the items its worker ran and the figures of
    the models it computed. Verdicts are concatenated, figures joined per suite and
    model, and the selection is made again over every verdict. A model's entry is
    taken from the first document that loaded it without an error.
    """
    merged = dict(documents[0])
    models: dict[str, dict] = {}
    for document in documents:
        for model in document["models"]:
            known = models.get(model["label"])
            if known is None or ("error" in known and "error" not in model):
                models[model["label"]] = model
    suites: dict[str, dict] = {}
    for document in documents:
        for suite in document["suites"]:
            entry = suites.setdefault(suite["path"], {**suite, "figures": {}})
            entry["figures"].update(suite["figures"])
    verdicts = [verdict for document in documents for verdict in document["verdicts"]]
    selection = select_models([_verdict(entry) for entry in verdicts], candidates)
    merged.update(
        models=list(models.values()),
        suites=list(suites.values()),
        verdicts=verdicts,
        selection=asdict(selection),
    )
    return merged


def session_results(config: pytest.Config) -> dict | None:
    """Return the session's results document, building and storing it on first use.

    The controller of a pytest-xdist run merges its workers' documents. Returns None
    when the session produced no verdict.
    """
    document = config.stash.get(results_key, None)
    if document is not None:
        return document
    state = config.stash.get(state_key, None)
    received = config.stash.get(worker_documents_key, [])
    if received and state is not None:
        documents = [json.loads(text) for text in received]
        document = merge_results(documents, list(state.candidates))
    elif state is not None and state.verdicts:
        document = build_results(state, Path(config.rootpath))
    else:
        return None
    config.stash[results_key] = document
    return document
