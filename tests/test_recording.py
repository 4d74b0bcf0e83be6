"""Recorded baselines end to end: save one, gate against it, reject stale ones."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import write_tiny_checkpoint
from test_plugin import (  # noqa: F401
    CASES,
    CHECKS_BETTER,
    SUITE,
    catalogs,
    models,
    run_gate,
    suite_dir,
)

from pytest_modelqa.recording import (
    RECORDING_FORMAT,
    build_recording,
    write_recording,
)
from pytest_modelqa.results import environment
from pytest_modelqa.runner import EncodeOptions, ModelPool, SuiteRunner
from pytest_modelqa.suite import load_suite


def record(pytester, suite, checkpoints, path: Path, *args):
    return run_gate(
        pytester,
        suite,
        "--modelqa-baseline",
        str(checkpoints["base"]),
        "--modelqa-save-baseline",
        str(path),
        *args,
    )


def gate_recorded(pytester, suite, checkpoints, path: Path, *args):
    return run_gate(
        pytester,
        suite,
        "--model",
        str(checkpoints["other"]),
        "--modelqa-baseline-results",
        str(path),
        *args,
    )


@pytest.fixture(scope="module")
def shared_recording(tmp_path_factory, catalogs) -> Path:  # noqa: F811
    """Record the tiny baseline on the default suite once, through the runner.

    The suite lies at suite/ under the recording's root, as it does under each
    test's pytester folder, and the catalogs' contents are the same, so the one
    recording fits every test's copy of the suite.
    """
    root = tmp_path_factory.mktemp("recorded")
    suite = root / "suite"
    for name in ("catalog", "fmnist"):
        shutil.copytree(catalogs / name, suite / name)
    (suite / "modelqa-suite.yaml").write_text(
        SUITE.format(checks=CHECKS_BETTER, min_matches=2)
    )
    (suite / "cases").mkdir()
    (suite / "cases" / "text.yaml").write_text(CASES)
    baseline = write_tiny_checkpoint(root / "base.pt", seed=0)
    pool = ModelPool(EncodeOptions(progress=False))
    runner = SuiteRunner(
        load_suite(suite / "modelqa-suite.yaml", catalog_dirs=[]),
        pool,
        str(baseline),
        {},
    )
    document = build_recording(
        [runner], pool.model(str(baseline)), root, environment(root)
    )
    return write_recording(root / "baseline.json", document)


@pytest.fixture
def recorded(pytester, suite_dir, shared_recording):  # noqa: F811
    """Return the default suite and a copy of its recorded baseline."""
    path = pytester.path / "baseline.json"
    shutil.copyfile(shared_recording, path)
    return suite_dir(), path


def test_save_without_candidate_writes_file(pytester, suite_dir, models):  # noqa: F811
    suite = suite_dir()
    path = pytester.path / "records" / "baseline.json"
    result = record(pytester, suite, models, path)
    # Without --model every item is skipped, and the recording is still written.
    assert result.ret == pytest.ExitCode.OK
    result.stdout.fnmatch_lines([f"modelqa: baseline * recorded in {path}"])
    document = json.loads(path.read_text())
    assert document["format"] == RECORDING_FORMAT
    assert document["format_version"] == 1
    assert document["model"]["spec"] == str(models["base"])
    assert len(document["model"]["sha256"]) == 64
    assert {"torch", "open_clip", "pytest_modelqa"} <= set(document["environment"])
    entry = document["suites"]["suite/modelqa-suite.yaml"]
    assert entry["name"] == "mini"
    assert len(entry["settings_sha256"]) == 64
    assert set(entry["catalogs"]) == {"catalog", "benchmarks.fmnist.catalog"}
    classification = entry["figures"]["classification"]
    # The 60 test items of the sample, less those without laces.
    assert 0 < len(classification["ids"]) <= 60
    assert len(classification["ranks"]) == len(classification["ids"])
    assert len(entry["figures"]["benchmarks"]["fmnist"]["correct"]) == 30
    assert set(entry["figures"]["retrieval"]) == {
        "casual-white",
        "formal-black",
        "sports-black",
    }


def test_recording_gives_same_verdicts(pytester, suite_dir, models):  # noqa: F811
    suite = suite_dir()
    path = pytester.path / "baseline.json"
    from_weights = record(
        pytester,
        suite,
        models,
        path,
        "--model",
        str(models["other"]),
        "--modelqa-json",
        "weights.json",
    )
    # The baseline's weights are gone: a gate that loaded them would fail.
    models["base"].unlink()
    from_recording = gate_recorded(
        pytester, suite, models, path, "--modelqa-json", "recorded.json"
    )
    assert from_recording.ret == from_weights.ret
    assert from_recording.parseoutcomes() == from_weights.parseoutcomes()
    weights = json.loads((pytester.path / "weights.json").read_text())
    recorded = json.loads((pytester.path / "recorded.json").read_text())
    # 6 classification checks, 4 retrieval totals and a benchmark, some passed and
    # some failed.
    assert len(weights["verdicts"]) == 11
    assert {v["passed"] for v in weights["verdicts"]} == {True, False}
    assert recorded["verdicts"] == weights["verdicts"]
    assert recorded["selection"] == weights["selection"]
    assert recorded["suites"][0]["figures"] == weights["suites"][0]["figures"]
    baseline = recorded["models"][0]
    assert baseline["recorded_in"] == str(path)
    assert baseline["sha256"] == weights["models"][0]["sha256"]
    assert baseline["spec"] == str(models["base"])
    verdict_line = [
        line for line in from_weights.stdout.lines if line.startswith("other: ")
    ]
    assert len(verdict_line) == 1
    from_recording.stdout.fnmatch_lines([verdict_line[0]])
    from_recording.stdout.fnmatch_lines(
        [f"modelqa: baseline {models['base']} (sha256 *), recorded in {path}"]
    )


def test_rule_change_needs_no_new_recording(pytester, recorded, models):  # noqa: F811
    suite, path = recorded
    yaml = suite / "modelqa-suite.yaml"
    yaml.write_text(
        yaml.read_text().replace(
            "zero_shot_accuracy: {rule: better}",
            "zero_shot_accuracy: {rule: non_inferior, tolerance: 1.0}",
        )
    )
    result = gate_recorded(pytester, suite, models, path, "-k", "zero_shot")
    assert result.ret == pytest.ExitCode.OK
    assert result.parseoutcomes()["passed"] == 1


def test_changed_prompt_names_setting(pytester, recorded, models):  # noqa: F811
    suite, path = recorded
    yaml = suite / "modelqa-suite.yaml"
    yaml.write_text(yaml.read_text().replace("{value} shoelace", "{value} laces"))
    result = gate_recorded(pytester, suite, models, path)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stdout.fnmatch_lines(
        [
            "*suite 'mini': the suite changed since the recording (attribute_prompt "
            'is "{category} with {value} laces", recorded "{category} with {value} '
            'shoelace"; settings sha256 *, recorded *), so the baseline recorded in '
            f"{path} does not apply. Record the baseline again *"
        ]
    )


def test_changed_case_names_case(pytester, recorded, models):  # noqa: F811
    suite, path = recorded
    cases = suite / "cases" / "text.yaml"
    cases.write_text(cases.read_text().replace("formal shoes with", "formal shoe with"))
    result = gate_recorded(pytester, suite, models, path)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stdout.fnmatch_lines(
        ["*the suite changed since the recording (cases changed formal-black;*"]
    )


def test_changed_catalog_names_catalog(pytester, recorded, models):  # noqa: F811
    suite, path = recorded
    manifest = suite / "catalog" / "manifest.csv"
    lines = manifest.read_text().splitlines(keepends=True)
    manifest.write_text("".join(lines[:-1]))  # one item fewer
    result = gate_recorded(pytester, suite, models, path)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stdout.fnmatch_lines(
        [
            "*suite 'mini': catalog 'catalog' (catalog) changed since the recording: "
            "its manifest sha256 is *, recorded *"
        ]
    )


def test_changed_image_names_benchmark_catalog(pytester, recorded, models):  # noqa: F811
    suite, path = recorded
    images = sorted((suite / "fmnist").rglob("*.png"))
    images[0].write_bytes(images[1].read_bytes())
    result = gate_recorded(pytester, suite, models, path)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stdout.fnmatch_lines(
        [
            "*suite 'mini': catalog 'fmnist' (benchmarks.fmnist.catalog) changed since "
            "the recording: its images sha256 is *, recorded *"
        ]
    )


def test_unrecorded_suite_is_named(pytester, recorded, models):  # noqa: F811
    suite, path = recorded
    moved = suite.parent / "moved"
    suite.rename(moved)
    result = gate_recorded(pytester, moved, models, path)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stdout.fnmatch_lines(
        [
            "*suite 'mini' (moved/modelqa-suite.yaml) is not in the recorded baseline "
            f"{path}, which contains: suite/modelqa-suite.yaml. Record *"
        ]
    )


def test_pin_checked_against_recording(pytester, recorded, models):  # noqa: F811
    suite, path = recorded
    yaml = suite / "modelqa-suite.yaml"
    recorded_sha = json.loads(path.read_text())["model"]["sha256"]
    yaml.write_text(yaml.read_text() + f'baseline_sha256: "{recorded_sha}"\n')
    result = gate_recorded(pytester, suite, models, path, "-k", "zero_shot")
    outcomes = result.parseoutcomes()
    assert outcomes.get("passed", 0) + outcomes.get("failed", 0) == 1
    yaml.write_text(yaml.read_text().replace(recorded_sha, "ab" * 32))
    result = gate_recorded(pytester, suite, models, path, "-k", "zero_shot")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stdout.fnmatch_lines(
        [
            f"*baseline * (recorded in {path}) has sha256 {recorded_sha}, but * pins "
            "baseline_sha256 abab*: "
            "*Record the pinned model with --modelqa-save-baseline*"
        ]
    )


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not valid JSON (Expecting property name*"),
        ("[1, 2]", "contains a list, expected an object"),
        (
            '{"format": "pytest-modelqa-results", "format_version": 1}',
            "not a recorded baseline (format 'pytest-modelqa-results', expected "
            "'pytest-modelqa-baseline'): it is a results file written by "
            "--modelqa-json. Write one with --modelqa-save-baseline PATH",
        ),
        (
            '{"format": "pytest-modelqa-baseline", "format_version": 2}',
            "format_version 2 is newer than this pytest-modelqa reads (1); upgrade*",
        ),
        (
            '{"format": "pytest-modelqa-baseline", "format_version": 1, '
            '"model": {"spec": "a.pt", "sha256": "00"}}',
            "the file lacks 'suites'",
        ),
    ],
    ids=["not-json", "list", "results-file", "newer", "no-suites"],
)
def test_malformed_file_is_usage_error(pytester, suite_dir, models, content, message):  # noqa: F811
    suite = suite_dir()
    path = pytester.path / "baseline.json"
    path.write_text(content)
    result = gate_recorded(pytester, suite, models, path)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [f"ERROR: --modelqa-baseline-results {path}: {message}"]
    )


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda entry: entry["figures"]["classification"].pop("ranks"),
            "suites['suite/modelqa-suite.yaml'].figures.classification lacks 'ranks'",
        ),
        (
            lambda entry: entry["figures"]["classification"]["ranks"].append(1),
            "*.figures.classification.ranks has * entries but ids has *",
        ),
        (
            lambda entry: entry["figures"]["benchmarks"]["fmnist"][
                "correct"
            ].__setitem__(0, "yes"),
            "*.correct[[]0[]] is text, expected true or false",
        ),
    ],
    ids=["missing-ranks", "ranks-length", "correct-type"],
)
def test_damaged_recording_is_usage_error(pytester, recorded, models, edit, message):  # noqa: F811
    suite, path = recorded
    document = json.loads(path.read_text())
    edit(document["suites"]["suite/modelqa-suite.yaml"])
    path.write_text(json.dumps(document))
    result = gate_recorded(pytester, suite, models, path)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [f"ERROR: --modelqa-baseline-results {path}: {message}"]
    )


def test_missing_recording_is_usage_error(pytester, suite_dir, models):  # noqa: F811
    suite = suite_dir()
    path = pytester.path / "absent.json"
    result = gate_recorded(pytester, suite, models, path)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [f"ERROR: --modelqa-baseline-results {path}: file not found"]
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            [
                "--modelqa-save-baseline",
                "a.json",
                "--modelqa-baseline-results",
                "b.json",
            ],
            "--modelqa-save-baseline and --modelqa-baseline-results exclude each "
            "other*",
        ),
        (
            ["--modelqa-baseline", "x.pt", "--modelqa-baseline-results", "b.json"],
            "--modelqa-baseline and --modelqa-baseline-results exclude each other*",
        ),
        (
            ["--modelqa-save-baseline", "a.json", "--collect-only"],
            "--modelqa-save-baseline computes the baseline's figures, which "
            "--collect-only skips*",
        ),
    ],
    ids=["save-and-gate", "spec-and-recording", "collect-only"],
)
def test_conflicting_options(pytester, suite_dir, args, message):  # noqa: F811
    result = run_gate(pytester, suite_dir(), *args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"ERROR: {message}"])


def test_save_without_suite_is_usage_error(pytester):
    path = pytester.path / "baseline.json"
    result = pytester.runpytest(
        "-p", "no:cacheprovider", "--modelqa-save-baseline", str(path)
    )
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [f"ERROR: --modelqa-save-baseline {path}: no suite file (modelqa-suite.yaml)*"]
    )
    assert not path.exists()


def test_broken_baseline_is_not_recorded(pytester, suite_dir, models):  # noqa: F811
    suite = suite_dir()
    path = pytester.path / "baseline.json"
    result = pytester.runpytest(
        "-p",
        "no:cacheprovider",
        str(suite),
        "--modelqa-baseline",
        str(models["base"]),
        "--modelqa-save-baseline",
        str(path),
    )
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [f"ERROR: --modelqa-save-baseline {path}: baseline looks broken: *"]
    )
    assert not path.exists()


def test_help_lists_recording_options(pytester):
    result = pytester.runpytest("--help")
    text = "\n".join(result.stdout.lines)
    assert "--modelqa-save-baseline=PATH" in text
    assert "--modelqa-baseline-results=PATH" in text
