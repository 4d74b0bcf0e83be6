"""Session state of the plugin, kept in one object under a pytest StashKey."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from pytest_modelqa.gate import Verdict
from pytest_modelqa.runner import ModelPool, SuiteRunner
from pytest_modelqa.suite import Suite

if TYPE_CHECKING:
    from pytest_modelqa.recording import BaselineRecording


class ModelQAWarning(pytest.PytestWarning):
    """A gate result that is computed but may mislead, such as an empty class."""


@dataclass
class GateState:
    """Everything the plugin keeps for one session, stored in the config stash."""

    baseline: str
    candidates: dict[str, str]  # display label -> spec
    pool: ModelPool
    catalog_dirs: list[Path]
    cache_note: str = ""  # where embeddings are cached, or why they are not
    runners: dict[Path, SuiteRunner] = field(default_factory=dict)
    # Set by --modelqa-baseline-results; `baseline` is then the recording's spec.
    recording: BaselineRecording | None = None
    # Where --modelqa-save-baseline wrote the recording, once written.
    saved_recording: Path | None = None

    @property
    def verdicts(self) -> list[Verdict]:
        return [
            verdict for runner in self.runners.values() for verdict in runner.verdicts
        ]


state_key = pytest.StashKey[GateState]()


def runner_for(config: pytest.Config, suite: Suite) -> SuiteRunner:
    """Return the session's runner for a suite, creating it on first use."""
    state = config.stash[state_key]
    if suite.path not in state.runners:
        state.runners[suite.path] = SuiteRunner(
            suite,
            state.pool,
            state.baseline,
            state.candidates,
            recording=state.recording,
        )
    return state.runners[suite.path]
