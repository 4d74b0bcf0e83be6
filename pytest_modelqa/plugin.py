"""pytest hooks: options, suite collection, session state and the terminal summary."""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

import pytest

from pytest_modelqa import __version__, distributed
from pytest_modelqa.cache import PRECISIONS, EmbeddingCache
from pytest_modelqa.catalog import FIXTURES_DIR
from pytest_modelqa.embeddings import ImageLoadError
from pytest_modelqa.items import SuiteFile
from pytest_modelqa.models import ModelLoadError, check_spec
from pytest_modelqa.recording import (
    BaselineRecording,
    RecordingError,
    build_recording,
    read_recording,
    write_recording,
)
from pytest_modelqa.results import environment
from pytest_modelqa.runner import BaselineError, EncodeOptions, ModelPool
from pytest_modelqa.state import GateState, state_key
from pytest_modelqa.suite import SUITE_FILE_NAME

logger = logging.getLogger(__name__)
DEFAULT_BASELINE = FIXTURES_DIR / "baseline" / "standin.pt"
# The embedding cache's folder inside pytest's cache folder (config.cache.mkdir).
CACHE_FOLDER_NAME = "modelqa-embeddings"

# NOTE: the JUnit XML writer's stash key is private to pytest (checked on 9.2), and
# its record_testsuite_property fixture reads it the same way. Should it move, the
# selection is left out of the JUnit XML file and nothing else changes.
try:
    from _pytest.junitxml import xml_key
except ImportError:
    xml_key = pytest.StashKey()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("modelqa", "model acceptance testing (pytest-modelqa)")
    group.addoption(
        "--model",
        action="append",
        default=[],
        metavar="CKPT",
        dest="modelqa_models",
        help="Candidate model to gate: a trainer checkpoint or any spec that "
        "--modelqa-baseline takes. "
        "Repeat for several candidates. Default: none (suite items are skipped).",
    )
    group.addoption(
        "--modelqa-baseline",
        metavar="SPEC",
        dest="modelqa_baseline",
        default=None,
        help="Baseline every candidate must beat: a trainer checkpoint, "
        "local-dir:PATH, hf-hub:ORG/NAME, hf:PATH (a transformers CLIP folder) or "
        "ARCH:WEIGHTS. "
        "Default: the modelqa_baseline ini value, else the bundled stand-in baseline.",
    )
    group.addoption(
        "--modelqa-arch",
        metavar="ARCH",
        dest="modelqa_arch",
        default=None,
        help="open_clip architecture for checkpoints that hold weights alone "
        "(open_clip_train epoch_N.pt, bare state_dicts, .safetensors): a model name "
        "such as ViT-B-32 or a JSON model config file. Default: none.",
    )
    group.addoption(
        "--modelqa-device",
        metavar="DEVICE",
        dest="modelqa_device",
        default="cpu",
        help="Torch device for encoding, for example cpu, cuda or cuda:1. Default: cpu.",
    )
    group.addoption(
        "--modelqa-batch-size",
        metavar="N",
        dest="modelqa_batch_size",
        type=int,
        default=64,
        help="Images per encoding batch. Default: 64.",
    )
    group.addoption(
        "--modelqa-workers",
        metavar="N",
        dest="modelqa_workers",
        type=int,
        default=0,
        help="Data-loader worker processes for image decoding. Default: 0 (in process).",
    )
    group.addoption(
        "--modelqa-precision",
        metavar="PRECISION",
        dest="modelqa_precision",
        choices=PRECISIONS,
        default="fp32",
        help="Precision of the forward pass on CUDA: fp32, bf16 or fp16 (autocast); "
        "other devices always run fp32. Default: fp32.",
    )
    group.addoption(
        "--modelqa-cache-dir",
        metavar="DIR",
        dest="modelqa_cache_dir",
        default=None,
        help="Folder of the embedding cache, which --cache-clear leaves alone. "
        f"Default: {CACHE_FOLDER_NAME} in pytest's cache folder "
        "(.pytest_cache/d/), which --cache-clear empties.",
    )
    group.addoption(
        "--modelqa-no-cache",
        action="store_true",
        dest="modelqa_no_cache",
        default=False,
        help="Encode every image and prompt without reading or writing the embedding "
        "cache. Default: the cache is used.",
    )
    group.addoption(
        "--modelqa-json",
        metavar="PATH",
        dest="modelqa_json",
        default=None,
        help="Write every figure, verdict and the model selection as JSON to PATH. "
        "Default: no JSON file.",
    )
    group.addoption(
        "--modelqa-save-baseline",
        metavar="PATH",
        dest="modelqa_save_baseline",
        default=None,
        help="Compute the baseline's figures on every collected suite and write them, "
        "with per-item results and hashes, as a recorded baseline (JSON) to PATH. "
        "Default: no recording.",
    )
    group.addoption(
        "--modelqa-baseline-results",
        metavar="PATH",
        dest="modelqa_baseline_results",
        default=None,
        help="Gate against the baseline recorded in PATH by --modelqa-save-baseline, "
        "without loading the baseline's weights. Default: none (the baseline is "
        "loaded).",
    )
    parser.addini(
        "modelqa_baseline",
        "Default baseline spec when --modelqa-baseline is not given.",
        default="",
    )
    parser.addini(
        "modelqa_check_baseline",
        "Stop the session when the baseline's zero-shot accuracy is at chance level. "
        "Default: true.",
        type="bool",
        default=True,
    )
    parser.addini(
        "modelqa_catalog_dirs",
        "Folders searched for the catalogs that suites name, relative to the rootdir. "
        "Default: fixtures.",
        type="paths",
        default=[],
    )


def _candidate_labels(specs: list[str]) -> dict[str, str]:
    """Give each candidate a short, unique label: its file stem, else parent/stem."""
    labels: dict[str, str] = {}
    stems = [Path(spec).stem for spec in specs]
    for spec, stem in zip(specs, stems, strict=True):
        label = stem if stems.count(stem) == 1 else f"{Path(spec).parent.name}/{stem}"
        while label in labels:
            label += "'"
        labels[label] = spec
    return labels


def _check_spec(option: str, spec: str) -> None:
    """Validate a model spec without reading weights or going online."""
    try:
        check_spec(spec)
    except ModelLoadError as error:
        raise pytest.UsageError(f"{option}: {error}") from error


@pytest.hookimpl(tryfirst=True)
def pytest_cmdline_main(config: pytest.Config) -> None:
    # Under torchrun each rank sets up its part before plugins read their options.
    distributed.configure(config)


def _check_json_path(target: Path) -> None:
    """Create the folder of the results file now, so a bad path fails before the run."""
    if target.is_dir():
        raise pytest.UsageError(
            f"--modelqa-json: {target} is a folder; give a file path such as "
            f"{target / 'results.json'}"
        )
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise pytest.UsageError(
            f"--modelqa-json: cannot create the folder of {target} ({error}); give "
            "a path in a writable folder"
        ) from error


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "modelqa(phase, check, candidate): an acceptance check of pytest-modelqa",
    )
    specs = config.getoption("modelqa_models")
    for spec in specs:
        _check_spec("--model", spec)
    recording = _read_recording(config)
    if recording is not None:
        baseline = recording.spec
    else:
        baseline = (
            config.getoption("modelqa_baseline")
            or config.getini("modelqa_baseline")
            or str(DEFAULT_BASELINE)
        )
    if specs and recording is None:
        _check_spec("--modelqa-baseline", baseline)
    if config.getoption("modelqa_batch_size") < 1:
        raise pytest.UsageError("--modelqa-batch-size must be at least 1")
    if config.getoption("modelqa_json"):
        _check_json_path(Path(config.getoption("modelqa_json")))
    catalog_dirs = list(config.getini("modelqa_catalog_dirs")) or [
        Path(config.rootpath) / "fixtures"
    ]
    if FIXTURES_DIR not in catalog_dirs:
        catalog_dirs.append(FIXTURES_DIR)
    cache, cache_note = _embedding_cache(config) if specs else (None, "")
    options = EncodeOptions(
        device=config.getoption("modelqa_device"),
        batch_size=config.getoption("modelqa_batch_size"),
        workers=config.getoption("modelqa_workers"),
        progress=_show_progress(config),
        precision=config.getoption("modelqa_precision"),
        cache=cache,
        progress_output=_progress_output(config),
    )
    config.stash[state_key] = GateState(
        baseline=baseline,
        candidates=_candidate_labels(specs),
        pool=ModelPool(options, arch=config.getoption("modelqa_arch")),
        catalog_dirs=catalog_dirs,
        recording=recording,
        cache_note=cache_note,
    )
    if config.pluginmanager.hasplugin("xdist"):
        from pytest_modelqa.workers import WorkerResults

        config.pluginmanager.register(WorkerResults(config), "modelqa-xdist")
    if config.pluginmanager.hasplugin("html"):
        from pytest_modelqa.report import HtmlReport

        config.pluginmanager.register(HtmlReport(config), "modelqa-html")


def _read_recording(config: pytest.Config) -> BaselineRecording | None:
    """Check the recorded-baseline options; read --modelqa-baseline-results."""
    save = config.getoption("modelqa_save_baseline")
    results = config.getoption("modelqa_baseline_results")
    if save and results:
        raise pytest.UsageError(
            "--modelqa-save-baseline and --modelqa-baseline-results exclude each "
            "other: record a baseline from its weights, then gate against the "
            "recording in another run"
        )
    if save and config.option.collectonly:
        raise pytest.UsageError(
            "--modelqa-save-baseline computes the baseline's figures, which "
            "--collect-only skips; run without --collect-only"
        )
    if save and config.getoption("numprocesses", None):
        # The figures are computed where the items run, in pytest-xdist's workers,
        # and only the controller may write files.
        raise pytest.UsageError(
            "--modelqa-save-baseline does not work under pytest-xdist; record the "
            "baseline without -n"
        )
    if not results:
        return None
    if config.getoption("modelqa_baseline"):
        raise pytest.UsageError(
            "--modelqa-baseline and --modelqa-baseline-results exclude each other: "
            "the recording names its own baseline. Pass one of them"
        )
    try:
        return read_recording(results, root=Path(config.rootpath))
    except RecordingError as error:
        raise pytest.UsageError(
            f"--modelqa-baseline-results {results}: {error}"
        ) from error


def _embedding_cache(config: pytest.Config) -> tuple[EmbeddingCache | None, str]:
    """Open the session's embedding cache; return it and a line that describes it."""
    if config.getoption("modelqa_no_cache"):
        return None, "embedding cache off (--modelqa-no-cache)"
    folder = config.getoption("modelqa_cache_dir")
    if folder is not None:
        path = Path(config.invocation_params.dir, folder)
        return EmbeddingCache(path), f"embedding cache {path}"
    pytest_cache = getattr(config, "cache", None)
    if pytest_cache is None:
        return None, (
            "embedding cache off because the cacheprovider plugin is disabled "
            "(-p no:cacheprovider), so every image and prompt was encoded; enable "
            "it or pass --modelqa-cache-dir DIR to reuse embeddings across sessions"
        )
    # NOTE: under pytest-xdist every worker repeats the controller's --cache-clear
    # when it starts. Workers encode only in their test phase, after all of them
    # have collected, so no worker empties the cache while another writes to it.
    path = pytest_cache.mkdir(CACHE_FOLDER_NAME)
    return EmbeddingCache(path), f"embedding cache {path}"


def _show_progress(config: pytest.Config) -> bool:
    """Draw progress bars, except under -q, in CI logs and in xdist workers."""
    in_ci = os.environ.get("CI", "").lower() not in ("", "0", "false")
    worker = hasattr(config, "workerinput")
    return config.get_verbosity() >= 0 and not in_ci and not worker


def _progress_output(config: pytest.Config):
    """Return a context that lets progress bars past pytest's output capture."""
    capture = config.pluginmanager.getplugin("capturemanager")
    if capture is None:
        return contextlib.nullcontext
    # The same switch that capsys.disabled() and live logging use.
    return capture.global_and_fixture_disabled


def pytest_collect_file(parent: pytest.Collector, file_path: Path):
    if file_path.name == SUITE_FILE_NAME:
        return SuiteFile.from_parent(parent, path=file_path)
    return None


def pytest_report_header(config: pytest.Config) -> list[str]:
    state = config.stash.get(state_key, None)
    if state is None or not state.candidates:
        return []
    import open_clip
    import torch

    baseline = state.baseline
    if state.recording is not None:
        recorded = state.recording.model
        baseline = (
            f"{recorded['spec']} (sha256 {recorded['sha256'][:12]}), recorded in "
            f"{state.recording.path}"
        )
    return [
        f"modelqa: pytest-modelqa {__version__}, torch {torch.__version__}, "
        f"open_clip {open_clip.__version__}",
        f"modelqa: baseline {baseline}",
        f"modelqa: candidates {', '.join(state.candidates)}",
    ]


def pytest_report_collectionfinish(config: pytest.Config, items) -> list[str]:
    state = config.stash.get(state_key, None)
    if state is None or not state.runners:
        return []
    lines = []
    for runner in state.runners.values():
        suite = runner.suite
        automated = 0
        for case in suite.cases:
            matches, _ = runner.match_count(case)
            if matches >= suite.min_matches:
                automated += 1
            if config.option.collectonly:
                mode = "automated" if matches >= suite.min_matches else "manual review"
                lines.append(f"  case {case.id}: {matches} matching products, {mode}")
        lines.insert(
            0,
            f"modelqa: suite {suite.name}: {len(suite.cases)} retrieval cases, "
            f"{automated} automated (>= {suite.min_matches} matches), "
            f"{len(suite.cases) - automated} for manual review",
        )
    return lines


@pytest.hookimpl(tryfirst=True)
def pytest_runtestloop(session: pytest.Session) -> None:
    """Write the recorded baseline before the items run, when one is requested."""
    config = session.config
    path = config.getoption("modelqa_save_baseline")
    # Failed collection: pytest's own loop stops the session with the errors.
    if not path or session.testsfailed:
        return
    state = config.stash[state_key]
    runners = list(state.runners.values())
    if not runners:
        raise pytest.UsageError(
            f"--modelqa-save-baseline {path}: no suite file ({SUITE_FILE_NAME}) was "
            "collected, so there is nothing to record. Pass the suite's folder"
        )
    try:
        for runner in runners:
            runner.check_baseline_loads()
            if config.getini("modelqa_check_baseline"):
                runner.check_baseline_sane()
        document = build_recording(
            runners,
            state.pool.model(state.baseline),
            Path(config.rootpath),
            environment(Path(config.rootpath)),
        )
    except (BaselineError, ModelLoadError, ImageLoadError) as error:
        raise pytest.UsageError(f"--modelqa-save-baseline {path}: {error}") from error
    state.saved_recording = write_recording(path, document)


@pytest.hookimpl(wrapper=True)
def pytest_terminal_summary(terminalreporter, exitstatus, config: pytest.Config):
    # A wrapper writes after every plain hook, pytest-html's "Generated html report"
    # line included, so that the summary ends with the candidates and file paths.
    yield
    from pytest_modelqa.workers import is_worker, session_results

    state = config.stash.get(state_key, None)
    if state is not None and state.saved_recording is not None:
        terminalreporter.write_line(
            f"modelqa: baseline {state.baseline} recorded in {state.saved_recording}"
        )
    if is_worker(config):
        return
    document = session_results(config)
    if document is None:
        return
    from pytest_modelqa.report import summary_lines

    terminalreporter.write_sep("=", "modelqa verdicts")
    for line in summary_lines(document):
        terminalreporter.write_line(line)
    if state is not None:
        terminalreporter.write_line(_cache_summary(state))
    html_path = config.getoption("htmlpath", None)
    if html_path:
        terminalreporter.write_line(f"report: {Path(html_path).resolve()}")
    json_path = config.getoption("modelqa_json")
    if json_path:
        terminalreporter.write_line(f"results JSON: {Path(json_path).resolve()}")


def _cache_summary(state: GateState) -> str:
    """Describe the embedding cache and this process's reads and writes of it."""
    cache = state.pool.options.cache
    if cache is None:
        return state.cache_note
    line = f"{state.cache_note}: {cache.hits} embeddings read, {cache.misses} computed"
    if cache.corrupt:
        line += f" ({cache.corrupt} of them replaced damaged entries)"
    return line


# First, so that the selection reaches the JUnit XML file before pytest writes it.
@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus) -> None:
    config = session.config
    path = config.getoption("modelqa_json")
    junit = config.stash.get(xml_key, None)
    from pytest_modelqa.workers import is_worker, session_results, to_json

    # Only the controller writes files. Under pytest-xdist it merges the documents
    # that its workers sent.
    if not (path or junit) or is_worker(config):
        return
    # The HTML report, written after this hook, renders this same document.
    document = session_results(config)
    if document is None:
        return
    if junit is not None:
        from pytest_modelqa.report import junit_properties

        for name, value in junit_properties(document):
            junit.add_global_property(name, value)
    if not path:
        return
    target = Path(path)
    partial = target.with_name(f".{target.name}.partial")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        partial.write_text(to_json(document))
        os.replace(partial, target)
    except OSError as error:
        if partial.is_file():
            partial.unlink()
        message = (
            f"--modelqa-json: could not write {target} ({error}); the test outcomes "
            "stand, but no results file was written"
        )
        reporter = config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line(f"ERROR: {message}", red=True)
        else:
            logger.error(message)
        # A gate whose results file is missing must not exit 0, even if every
        # check passed.
        session.exitstatus = pytest.ExitCode.INTERNAL_ERROR


def pytest_unconfigure(config: pytest.Config) -> None:
    state = config.stash.get(state_key, None)
    if state is not None and state.pool.options.cache is not None:
        state.pool.options.cache.close()
