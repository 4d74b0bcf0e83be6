"""The plugin end to end through pytester: collection, verdicts, errors and report."""

from __future__ import annotations

import re
import shutil
import textwrap
from html.parser import HTMLParser
from pathlib import Path

import pytest
from conftest import copy_catalog_sample, write_tiny_checkpoint

SUITE = """\
name: mini
catalog: catalog
columns: {{category: category, attribute: shoelace_colour}}
attribute:
  prompt: "{{category}} with {{value}} shoelace"
  none_policy: exclude
classification:
  split: test
  top_k: 3
  checks:
{checks}
retrieval:
  gallery_split: all
  min_matches: {min_matches}
  cases: cases/*.yaml
benchmarks:
  fmnist:
    catalog: fmnist
    prompt: "a photo of a {{value}}"
"""

CHECKS_BETTER = """\
    zero_shot_accuracy: {rule: better}
    top_k_accuracy: {rule: better}
    rank_score: {rule: better}
    macro_f1: {rule: better}
"""

CASES = """\
cases:
  - id: casual-white
    text: casual shoes with white shoelace
    category: Casual Shoes
    attribute: white
  - id: formal-black
    text: formal shoes with black shoelace
    category: Formal Shoes
    attribute: black
  - id: sports-black
    text: sports shoes with black shoelace
    category: Sports Shoes
    attribute: black
"""


@pytest.fixture(scope="session")
def catalogs(tmp_path_factory) -> Path:
    """Real photos: 60 footwear items over three splits and 30 Fashion-MNIST images."""
    root = tmp_path_factory.mktemp("catalogs")
    copy_catalog_sample(
        "footwear", root / "catalog", per_split={"train": 20, "val": 5, "test": 60}
    )
    copy_catalog_sample("fashion-mnist", root / "fmnist", per_split={"test": 30})
    return root


@pytest.fixture
def suite_dir(pytester: pytest.Pytester, catalogs: Path):
    """Write a suite into the pytester folder; return a function that sets it up."""

    def make(checks: str = CHECKS_BETTER, min_matches: int = 2, cases: str = CASES):
        suite = pytester.path / "suite"
        suite.mkdir(exist_ok=True)
        for name in ("catalog", "fmnist"):
            if not (suite / name).exists():
                shutil.copytree(catalogs / name, suite / name)
        (suite / "modelqa-suite.yaml").write_text(
            SUITE.format(checks=checks, min_matches=min_matches)
        )
        (suite / "cases").mkdir(exist_ok=True)
        (suite / "cases" / "text.yaml").write_text(cases)
        return suite

    return make


@pytest.fixture
def models(pytester: pytest.Pytester) -> dict[str, Path]:
    return {
        "base": write_tiny_checkpoint(pytester.path / "base.pt", seed=0),
        "other": write_tiny_checkpoint(pytester.path / "other.pt", seed=1),
    }


def run_gate(pytester, suite, *args):
    # The tiny random models are at chance level by design, so the sanity check on
    # the baseline is switched off except where a test turns it on.
    return pytester.runpytest(
        "-p",
        "no:cacheprovider",
        "-o",
        "modelqa_check_baseline=false",
        str(suite),
        *args,
    )


def test_identical_candidate_fails_every_better_check(pytester, suite_dir, models):
    suite = suite_dir()
    result = run_gate(
        pytester,
        suite,
        "--model",
        str(models["base"]),
        "--modelqa-baseline",
        str(models["base"]),
    )
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    outcomes = result.parseoutcomes()
    # 3 top-K items, zero-shot, rank score, macro F1 and 4 retrieval totals fail;
    # the benchmark (5 % tolerance) passes, as do the two automated cases.
    assert outcomes["failed"] == 10
    assert outcomes["passed"] == 3
    result.stdout.fnmatch_lines(
        [
            "*zero_shot_accuracy FAILED for base: observed *, baseline *, delta +0;*",
            "*base: REJECTED, 1/11 checks passed*",
        ]
    )


def test_non_inferior_rules_pass_identical_candidate(pytester, suite_dir, models):
    checks = "    zero_shot_accuracy: {rule: non_inferior, tolerance: 0.01}\n"
    suite = suite_dir(checks=checks)
    (suite / "modelqa-suite.yaml").write_text(
        (suite / "modelqa-suite.yaml")
        .read_text()
        .replace(
            "  cases: cases/*.yaml",
            "  cases: cases/*.yaml\n  checks:\n"
            + "".join(
                f"    method_{m}: {{rule: non_inferior}}\n" for m in (1, 2, 3, 4)
            ),
        )
    )
    result = run_gate(
        pytester,
        suite,
        "--model",
        str(models["base"]),
        "--modelqa-baseline",
        str(models["base"]),
    )
    assert result.ret == pytest.ExitCode.OK
    result.assert_outcomes(passed=8, skipped=1)
    result.stdout.fnmatch_lines(["*base: ACCEPTABLE (winner), 6/6 checks passed*"])


def test_items_are_parametrised_per_candidate(pytester, suite_dir, models):
    suite = suite_dir()
    result = run_gate(
        pytester,
        suite,
        "--collect-only",
        "-q",
        "--model",
        str(models["base"]),
        "--model",
        str(models["other"]),
        "--modelqa-baseline",
        str(models["base"]),
    )
    assert result.ret == pytest.ExitCode.OK
    names = [line for line in result.stdout.lines if "::" in line]
    assert len(names) == 2 * 14
    assert "suite/modelqa-suite.yaml::zero_shot_accuracy[other]" in names
    assert "suite/modelqa-suite.yaml::case_casual-white[base]" in names
    assert "suite/modelqa-suite.yaml::benchmark_fmnist[other]" in names


def test_collect_only_reports_manual_review_cases(pytester, suite_dir, models):
    suite = suite_dir()
    result = run_gate(
        pytester,
        suite,
        "--collect-only",
        "--model",
        str(models["other"]),
        "--modelqa-baseline",
        str(models["base"]),
    )
    result.stdout.fnmatch_lines(
        [
            "modelqa: suite mini: 3 retrieval cases, 2 automated (>= 2 matches), "
            "1 for manual review",
            "  case sports-black: 1 matching products, manual review",
        ]
    )


def test_case_ids_select_with_k(pytester, suite_dir, models):
    suite = suite_dir()
    result = run_gate(
        pytester,
        suite,
        "-k",
        "casual-white",
        "--model",
        str(models["other"]),
        "--modelqa-baseline",
        str(models["base"]),
    )
    result.assert_outcomes(passed=1)


def test_manual_review_case_is_skipped(pytester, suite_dir, models):
    suite = suite_dir()
    result = run_gate(
        pytester,
        suite,
        "-k",
        "sports-black",
        "-rs",
        "--model",
        str(models["other"]),
        "--modelqa-baseline",
        str(models["base"]),
    )
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(
        ["*manual review: 1 matching products in the gallery, fewer than 2*"]
    )


def test_case_output_shows_results_and_points(pytester, suite_dir, models):
    suite = suite_dir()
    result = run_gate(
        pytester,
        suite,
        "-k",
        "casual-white",
        "-rP",
        "--model",
        str(models["other"]),
        "--modelqa-baseline",
        str(models["base"]),
    )
    result.stdout.fnmatch_lines(
        [
            "*query: casual shoes with white shoelace  (expect casual shoes / white)",
            "candidate: m1 *, m2 *, m3 *, m4 *",
            "  1. *: * / * (category *, attribute *; m1 *, m2 *, m3 *, m4 *)",
            "baseline: m1 *",
        ]
    )


def test_without_model_items_are_skipped(pytester, suite_dir):
    suite = suite_dir()
    result = run_gate(pytester, suite, "-rs")
    assert result.ret == pytest.ExitCode.OK
    result.stdout.fnmatch_lines(["*no candidate given: pass --model CKPT*"])


def test_missing_checkpoint_is_a_usage_error(pytester, suite_dir):
    suite = suite_dir()
    result = run_gate(pytester, suite, "--model", "nowhere/epoch_9.pt")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--model: checkpoint not found: nowhere/epoch_9.pt*"])


def test_unknown_baseline_spec_is_a_usage_error(pytester, suite_dir, models):
    suite = suite_dir()
    result = run_gate(
        pytester,
        suite,
        "--model",
        str(models["other"]),
        "--modelqa-baseline",
        "NoSuchArch:weights.bin",
    )
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            "*--modelqa-baseline: unknown model spec 'NoSuchArch:weights.bin': 'NoSuchArch' "
            "is not a built-in or registered open_clip architecture*"
        ]
    )


def test_broken_candidate_fails_alone(pytester, suite_dir, models):
    suite = suite_dir()
    broken = pytester.path / "broken.pt"
    broken.write_bytes(b"not a checkpoint")
    result = run_gate(
        pytester,
        suite,
        "--model",
        str(broken),
        "--model",
        str(models["other"]),
        "--modelqa-baseline",
        str(models["base"]),
        "-k",
        "zero_shot",
    )
    result.assert_outcomes(failed=1, passed=1)
    result.stdout.fnmatch_lines(
        [
            "*model could not be loaded: *broken.pt: *",
            "other: ACCEPTABLE (winner), 1/1 checks passed*",
        ]
    )


def test_each_model_encodes_each_catalog_once(pytester, suite_dir, models, monkeypatch):
    from pytest_modelqa import runner

    calls: list[tuple[str, int]] = []
    real = runner.encode_images

    def counting(model, paths, **kwargs):
        calls.append((model.sha256, len(paths)))
        return real(model, paths, **kwargs)

    monkeypatch.setattr(runner, "encode_images", counting)
    suite = suite_dir()
    pytester.runpytest_inprocess(
        "-p",
        "no:cacheprovider",
        "-o",
        "modelqa_check_baseline=false",
        str(suite),
        "--model",
        str(models["other"]),
        "--modelqa-baseline",
        str(models["base"]),
    )
    # Two models, each over the footwear catalog and the benchmark catalog.
    assert len(calls) == 4
    assert len(set(calls)) == 4


class _TableParser(HTMLParser):
    def __init__(self):
        super().__init__()
        self.cells: list[dict] = []

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        if tag == "td" and "data-check" in attributes:
            self.cells.append(attributes)


def test_html_report_holds_comparison_table(pytester, suite_dir, models):
    suite = suite_dir()
    report = pytester.path / "report.html"
    result = run_gate(
        pytester,
        suite,
        "--model",
        str(models["other"]),
        "--modelqa-baseline",
        str(models["base"]),
        f"--html={report}",
        "--junitxml=junit.xml",
    )
    html = report.read_text()
    assert 'id="modelqa-comparison"' in html
    parser = _TableParser()
    parser.feed(html)
    observed = {
        cell["data-check"]: float(cell["data-observed"]) for cell in parser.cells
    }
    assert "zero_shot_accuracy" in observed
    assert "method_1" in observed
    junit = (pytester.path / "junit.xml").read_text()
    match = re.search(
        r'zero_shot_accuracy\[other\]".*?name="modelqa_observed" value="([^"]+)"',
        junit,
        re.S,
    )
    assert match is not None
    assert float(match.group(1)) == pytest.approx(observed["zero_shot_accuracy"])
    assert (
        result.ret == pytest.ExitCode.TESTS_FAILED or result.ret == pytest.ExitCode.OK
    )


def test_report_escapes_names_from_files(pytester, suite_dir, models):
    suite = suite_dir()
    hostile = pytester.path / "<script>x.pt"
    shutil.copy2(models["other"], hostile)
    report = pytester.path / "report.html"
    run_gate(
        pytester,
        suite,
        "--model",
        str(hostile),
        "--modelqa-baseline",
        str(models["base"]),
        f"--html={report}",
        "-k",
        "zero_shot",
    )
    html = report.read_text()
    table = html[html.index('id="modelqa-comparison"') :]
    assert "<script>x" not in table
    assert "&lt;script&gt;x" in table


def test_help_lists_options(pytester):
    result = pytester.runpytest("--help")
    text = "\n".join(result.stdout.lines)
    for option in (
        "--model=CKPT",
        "--modelqa-baseline=SPEC",
        "--modelqa-device=DEVICE",
        "--modelqa-batch-size=N",
        "--modelqa-workers=N",
        "--modelqa-precision=PRECISION",
        "--modelqa-cache-dir=DIR",
        "--modelqa-no-cache",
    ):
        assert option in text
    assert "modelqa_baseline" in text


def test_random_baseline_looks_broken(pytester, suite_dir, models):
    suite = suite_dir()
    result = pytester.runpytest(
        "-p",
        "no:cacheprovider",
        str(suite),
        "--model",
        str(models["other"]),
        "--modelqa-baseline",
        str(models["base"]),
    )
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stdout.fnmatch_lines(["*baseline looks broken: its zero-shot accuracy *"])


def test_unloadable_baseline_stops_the_session(pytester, suite_dir, models):
    suite = suite_dir()
    empty = pytester.path / "empty.pt"
    empty.write_bytes(b"")
    result = run_gate(
        pytester,
        suite,
        "--model",
        str(models["other"]),
        "--modelqa-baseline",
        str(empty),
    )
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stdout.fnmatch_lines(["*baseline could not be loaded: *empty.pt*"])


def test_pinned_baseline_hash_mismatch_stops(pytester, suite_dir, models):
    suite = suite_dir()
    path = suite / "modelqa-suite.yaml"
    path.write_text(path.read_text() + 'baseline_sha256: "' + "ab" * 32 + '"\n')
    result = run_gate(
        pytester,
        suite,
        "--model",
        str(models["other"]),
        "--modelqa-baseline",
        str(models["base"]),
    )
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stdout.fnmatch_lines(
        ["*but * pins baseline_sha256 abab*: the baseline's weights changed*"]
    )


@pytest.mark.parametrize(
    ("policy", "outcome"), [("warn", "passed"), ("fail", "failed")]
)
def test_unresolved_rule_warns_or_fails(pytester, suite_dir, models, policy, outcome):
    # Two random tiny models differ by 6 rank points on 60 items, with a paired
    # interval about 55 points wide: far too wide to resolve a 10-point tolerance.
    checks = f"    rank_score: {{rule: non_inferior, tolerance: 10, unresolved: {policy}}}\n"
    suite = suite_dir(checks=checks)
    result = run_gate(
        pytester,
        suite,
        "-k",
        "rank_score",
        "--model",
        str(models["other"]),
        "--modelqa-baseline",
        str(models["base"]),
    )
    result.assert_outcomes(**{outcome: 1})
    result.stdout.fnmatch_lines(
        [
            "*rank_score * for other: observed 82, baseline 88, delta -6; rule "
            "non_inferior: candidate >= baseline - 10 (needs >= 78); paired bootstrap:"
            " 95% interval of the difference [[]*, *[]], one-sided p-value *; test set "
            "too small to resolve the rule: interval half-width * exceeds the "
            "allowance 10"
        ]
    )
    if policy == "warn":
        result.stdout.fnmatch_lines(["*ModelQAWarning: rank_score passed for other*"])


def test_bad_case_file_is_one_line_collection_error(pytester, suite_dir, models):
    suite = suite_dir(
        cases=CASES.replace("    category: Formal Shoes", "    categroy: Formal Shoes")
    )
    result = run_gate(pytester, suite, "--collect-only", "--model", str(models["base"]))
    assert result.ret == pytest.ExitCode.INTERRUPTED
    result.stdout.fnmatch_lines(
        [
            "*ERROR collecting suite/modelqa-suite.yaml*",
            "*cases/text.yaml:8: unknown key 'categroy' in case 'formal-black'; did "
            "you mean 'category'? (valid keys: *)",
        ]
    )
    assert "Traceback" not in result.stdout.str()
    assert "suite.py" not in result.stdout.str()
