"""The HTML report: its figures against the JSON document, images, escaping, rendering.

Gate runs go through pytester on a small real suite: 85 footwear photos, 30
Fashion-MNIST images and tiny random CLIP models. The HTML is parsed with the standard
library's html.parser and every figure it shows is compared with the --modelqa-json
file, value by value.
"""

from __future__ import annotations

import base64
import binascii
import copy
import io
import json
import shutil
import subprocess
import tempfile
from html.parser import HTMLParser
from importlib.util import find_spec
from pathlib import Path
from xml.etree import ElementTree

import pytest
from conftest import copy_catalog_sample, write_tiny_checkpoint
from PIL import Image

from pytest_modelqa import plots, report, workers

SUITE = """\
name: mini
catalog: catalog
columns: {category: category, attribute: shoelace_colour}
attribute:
  prompt: "{category} with {value} shoelace"
  none_policy: exclude
classification:
  split: test
  top_k: 3
  checks:
    zero_shot_accuracy: {rule: better}
    top_k_accuracy: {rule: better}
    rank_score: {rule: better}
    macro_f1: {rule: better}
retrieval:
  gallery_split: all
  min_matches: 2
  cases: cases/*.yaml
benchmarks:
  fmnist:
    catalog: fmnist
    prompt: "a photo of a {value}"
"""

# Two text cases and one image case have 2 or more matching products and are
# automated. sports-black has 1 matching product and is left for manual review.
CASES = """\
cases:
  - id: casual-white
    text: {casual_text}
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
  - id: image-3230
    image: catalog/images/3230.jpg
    category: Casual Shoes
    attribute: white
"""

HISTORY = [
    {
        "epoch": epoch,
        "train_loss": 2.0 / epoch,
        "val_loss": 2.2 / epoch + 0.05 * epoch,
        "val_shoelace_acc": 0.3 + 0.1 * epoch,
        "lr": None,
    }
    for epoch in (1, 2, 3)
]
HOSTILE = "<script>alert(1)</script>"
CHROMIUM = shutil.which("chromium")
XDIST = find_spec("xdist")


@pytest.fixture(scope="session")
def catalogs(tmp_path_factory) -> Path:
    """Real photos: 85 footwear items over three splits and 30 Fashion-MNIST images."""
    root = tmp_path_factory.mktemp("catalogs")
    copy_catalog_sample(
        "footwear", root / "catalog", per_split={"train": 20, "val": 5, "test": 60}
    )
    copy_catalog_sample("fashion-mnist", root / "fmnist", per_split={"test": 30})
    return root


@pytest.fixture
def suite_dir(pytester: pytest.Pytester, catalogs: Path):
    """Return a function that writes the suite into the pytester folder."""

    def make(casual_text: str = "casual shoes with white shoelace") -> Path:
        suite = pytester.path / "suite"
        suite.mkdir(exist_ok=True)
        for name in ("catalog", "fmnist"):
            if not (suite / name).exists():
                shutil.copytree(catalogs / name, suite / name)
        (suite / "modelqa-suite.yaml").write_text(SUITE)
        (suite / "cases").mkdir(exist_ok=True)
        (suite / "cases" / "text.yaml").write_text(
            CASES.format(casual_text=json.dumps(casual_text))
        )
        return suite

    return make


@pytest.fixture
def models(pytester: pytest.Pytester) -> dict[str, Path]:
    """A baseline, a plain candidate and a trained candidate carrying a history."""
    return {
        "base": write_tiny_checkpoint(pytester.path / "base.pt", seed=0),
        "other": write_tiny_checkpoint(pytester.path / "other.pt", seed=1),
        "trained": write_tiny_checkpoint(
            pytester.path / "trained.pt", seed=2, epoch=3, history=HISTORY
        ),
    }


def run_report(pytester, suite, candidates, *args) -> tuple[str, dict, object]:
    """Gate candidates with an HTML report and the JSON file, and return both."""
    html_path = pytester.path / "report.html"
    json_path = pytester.path / "results.json"
    model_args = [arg for path in candidates for arg in ("--model", str(path))]
    result = pytester.runpytest(
        "-p",
        "no:cacheprovider",
        # The tiny random models are at chance level by design.
        "-o",
        "modelqa_check_baseline=false",
        str(suite),
        *model_args,
        "--modelqa-baseline",
        str(pytester.path / "base.pt"),
        f"--html={html_path}",
        f"--modelqa-json={json_path}",
        *args,
    )
    return html_path.read_text(), json.loads(json_path.read_text()), result


class ReportParser(HTMLParser):
    """Collect the report's data-* cells, images, script tags and the data blob.

    Images inside <template> elements are pytest-html's empty placeholders and are
    left out.
    """

    def __init__(self):
        super().__init__()
        self.figure_cells: list[dict] = []
        self.class_cells: list[dict] = []
        self.selection_rows: list[dict] = []
        self.images: list[dict] = []
        self.scripts = 0
        self.blob: dict = {}
        self._table: list[str] = []
        self._templates = 0

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        classes = (attributes.get("class") or "").split()
        if tag == "table":
            self._table.append(attributes.get("id") or " ".join(classes))
        table = self._table[-1] if self._table else ""
        if tag == "td" and "data-figure" in attributes:
            self.figure_cells.append(attributes)
        elif tag == "td" and "data-metric" in attributes:
            self.class_cells.append(attributes)
        elif (
            tag == "tr" and table == "modelqa-selection" and "data-model" in attributes
        ):
            self.selection_rows.append(attributes)
        elif tag == "img" and not self._templates:
            self.images.append(attributes)
        elif tag == "template":
            self._templates += 1
        elif tag == "script":
            self.scripts += 1
        elif tag == "div" and attributes.get("id") == "data-container":
            self.blob = json.loads(attributes["data-jsonblob"])

    def handle_endtag(self, tag):
        if tag == "table" and self._table:
            self._table.pop()
        elif tag == "template":
            self._templates -= 1


def parse(html: str) -> ReportParser:
    parser = ReportParser()
    parser.feed(html)
    return parser


def json_figures(figures: dict) -> dict[str, float]:
    """Read every figure of one model straight from the JSON document's figures."""
    classification = figures["classification"]
    averages = classification["report"]
    values = {
        "zero_shot_accuracy": classification["zero_shot_accuracy"],
        "rank_score": classification["rank_score"],
        "macro_f1": averages["macro avg"]["f1-score"],
        "weighted_f1": averages["weighted avg"]["f1-score"],
    }
    for k, accuracy in enumerate(classification["top_k"], start=1):
        values[f"top_{k}_accuracy"] = accuracy
    automated = [case for case in figures["retrieval"].values() if case["automated"]]
    for method in ("1", "2", "3", "4"):
        values[f"method_{method}"] = sum(case["scores"][method] for case in automated)
    for name, benchmark in figures["benchmarks"].items():
        values[f"benchmark_{name}"] = benchmark["accuracy"]
    return values


def check_analytics(parser: ReportParser, document: dict) -> None:
    """Check the analytics cells against the document's figures and verdicts."""
    cells = parser.figure_cells
    figures = document["suites"][0]["figures"]
    labels = [model["label"] for model in document["models"]]
    expected_names = {
        "zero_shot_accuracy",
        "top_1_accuracy",
        "top_2_accuracy",
        "top_3_accuracy",
        "rank_score",
        "macro_f1",
        "weighted_f1",
        "method_1",
        "method_2",
        "method_3",
        "method_4",
        "benchmark_fmnist",
    }
    displayed = {(cell["data-model"], cell["data-figure"]) for cell in cells}
    assert displayed == {(label, name) for label in labels for name in expected_names}
    for cell in cells:
        expected = json_figures(figures[cell["data-model"]])[cell["data-figure"]]
        assert float(cell["data-value"]) == expected, cell
    by_key = {(c["data-model"], c["data-figure"]): c for c in cells}
    assert len(document["verdicts"]) == (len(labels) - 1) * 11
    for verdict in document["verdicts"]:
        cell = by_key[(verdict["candidate"], verdict["check"])]
        assert float(cell["data-observed"]) == verdict["observed"]
        assert float(cell["data-baseline"]) == verdict["baseline"]
        assert float(cell["data-delta"]) == verdict["delta"]
        assert cell["data-outcome"] == ("pass" if verdict["passed"] else "fail")
        baseline_cell = by_key[("baseline", verdict["check"])]
        assert float(baseline_cell["data-value"]) == verdict["baseline"]
        stats = verdict["details"].get("statistics", verdict["details"])
        if "interval" in stats:
            assert float(cell["data-interval-low"]) == stats["interval"][0]
            assert float(cell["data-interval-high"]) == stats["interval"][1]
        if "p_value" in stats:
            assert float(cell["data-p-value"]) == stats["p_value"]


def check_class_table(parser: ReportParser, document: dict) -> None:
    """Check every per-class cell against sklearn's report in the document."""
    figures = document["suites"][0]["figures"]
    labels = [model["label"] for model in document["models"]]
    candidates = labels[1:]
    classes = figures["baseline"]["classification"]["classes"]
    rows = [*classes, "macro avg", "weighted avg"]
    metrics = ("precision", "recall", "f1-score", "support")
    values = {
        (c["data-model"], c["data-class"], c["data-metric"]): c.get("data-value")
        for c in parser.class_cells
    }
    expected_keys = {
        (label, row, metric) for label in labels for row in rows for metric in metrics
    } | {(label, row, "f1-delta") for label in candidates for row in rows}
    assert set(values) == expected_keys
    for label in labels:
        class_report = figures[label]["classification"]["report"]
        for row in rows:
            for metric in metrics:
                assert float(values[(label, row, metric)]) == class_report[row][metric]
    base_report = figures["baseline"]["classification"]["report"]
    for label in candidates:
        class_report = figures[label]["classification"]["report"]
        for row in rows:
            delta = class_report[row]["f1-score"] - base_report[row]["f1-score"]
            assert float(values[(label, row, "f1-delta")]) == delta


def check_selection(parser: ReportParser, document: dict) -> None:
    """Check each candidate's outcome row against the document's selection."""
    rows = {row["data-model"]: row["data-outcome"] for row in parser.selection_rows}
    selection = document["selection"]
    assert set(rows) == {m["label"] for m in document["models"][1:]}
    for row in parser.selection_rows:
        label = row["data-model"]
        figures = document["suites"][0]["figures"][label]["classification"]
        assert float(row["data-zero-shot-accuracy"]) == figures["zero_shot_accuracy"]
        total = sum(
            v["observed"]
            for v in document["verdicts"]
            if v["candidate"] == label and v["check"].startswith("method_")
        )
        assert float(row["data-retrieval-total"]) == total
    for label, outcome in rows.items():
        if label in selection["winners"]:
            assert outcome in ("winner", "tied winner")
        elif label in selection["acceptable"]:
            assert outcome == "acceptable"
        else:
            assert outcome == "rejected"
            assert label in selection["rejected"]


def check_header(parser: ReportParser, html: str, document: dict) -> None:
    """Check versions, model and catalog hashes in the environment table and header."""
    environment = parser.blob["environment"]
    versions = environment["modelqa versions"]
    assert versions["torch"] == document["environment"]["torch"]
    assert versions["open_clip"] == document["environment"]["open_clip"]
    assert versions["pytest-modelqa"] == document["environment"]["pytest_modelqa"]
    for model in document["models"]:
        key = "modelqa baseline" if model["role"] == "baseline" else None
        key = key or f"modelqa candidate {model['label']}"
        assert model["sha256"] in environment[key]
        assert f"<code>{model['sha256']}</code>" in html
    suite = document["suites"][0]
    assert suite["catalog"]["sha256"] in environment["modelqa suite mini"]
    assert suite["path"] in environment["modelqa suite mini"]
    assert f"<code>{suite['catalog']['sha256']}</code>" in html


def test_report_equals_json(pytester, suite_dir, models):
    html, document, _ = run_report(
        pytester, suite_dir(), [models["other"], models["trained"]]
    )
    parser = parse(html)
    check_analytics(parser, document)
    check_class_table(parser, document)
    check_selection(parser, document)
    check_header(parser, html, document)
    # A plain report (assets beside it) embeds its plots all the same.
    plots_shown = {
        img["data-plot"]: img["src"] for img in parser.images if "data-plot" in img
    }
    assert set(plots_shown) == {"top-k", "benchmarks", "history"}
    assert all(src.startswith("data:image/png;base64,") for src in plots_shown.values())


def check_junit(junit: Path, document: dict) -> None:
    """Check each check's JUnit properties and the selection's testsuite properties."""
    root = ElementTree.parse(junit).getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    properties = {
        p.get("name"): p.get("value") for p in suite.findall("properties/property")
    }
    selection = document["selection"]
    winner = ", ".join(selection["winners"]) or "none"
    assert properties["modelqa_winner"] == winner
    for model in document["models"][1:]:
        label = model["label"]
        outcome = report.model_outcome(label, document)
        assert properties[f"modelqa_outcome_{label}"] == outcome
        total = selection["retrieval_totals"][label]
        assert float(properties[f"modelqa_retrieval_total_{label}"]) == total
    cases = {case.get("name"): case for case in suite.iter("testcase")}
    for verdict in document["verdicts"]:
        check = verdict["check"]
        if check.startswith("method_"):
            check = f"retrieval_{check}"
        case = cases[f"{check}[{verdict['candidate']}]"]
        recorded = {
            p.get("name"): p.get("value") for p in case.findall("properties/property")
        }
        assert float(recorded["modelqa_observed"]) == verdict["observed"]
        assert float(recorded["modelqa_baseline"]) == verdict["baseline"]
        assert float(recorded["modelqa_delta"]) == verdict["delta"]


def check_terminal_summary(result, html_path: Path, json_path: Path) -> None:
    """Check that the summary ends with a line per candidate and the file paths."""
    lines = result.stdout.lines
    start = next(i for i, line in enumerate(lines) if "modelqa verdicts" in line)
    summary = lines[start + 1 : start + 5]
    assert summary[0].startswith("other: ")
    assert "checks passed; zero-shot accuracy " in summary[0]
    assert " pp, rank score " in summary[0]
    assert ", retrieval total " in summary[0]
    candidate_lines = [line for line in summary if line.startswith("trained: ")]
    assert len(candidate_lines) == 1
    assert f"report: {html_path}" in lines[start + 1 :]
    assert f"results JSON: {json_path}" in lines[start + 1 :]


def test_junit_and_terminal_summary_carry_verdicts(pytester, suite_dir, models):
    _, document, result = run_report(
        pytester,
        suite_dir(),
        [models["other"], models["trained"]],
        "--junitxml=junit.xml",
    )
    check_junit(pytester.path / "junit.xml", document)
    check_terminal_summary(
        result, pytester.path / "report.html", pytester.path / "results.json"
    )


@pytest.mark.skipif(XDIST is None, reason="pytest-xdist not installed")
def test_xdist_controller_merges_worker_results(pytester, suite_dir, models):
    html, document, result = run_report(
        pytester,
        suite_dir(),
        [models["other"], models["trained"]],
        "-n",
        "2",
        "--junitxml=junit.xml",
    )
    # The checks below need every item's verdict, whichever worker ran it.
    assert "2 workers" in result.stdout.str()
    parser = parse(html)
    check_analytics(parser, document)
    check_class_table(parser, document)
    check_selection(parser, document)
    check_junit(pytester.path / "junit.xml", document)
    check_terminal_summary(
        result, pytester.path / "report.html", pytester.path / "results.json"
    )


def check_galleries(html: str, document: dict) -> None:
    """Check the case galleries and the manual review table of the summary."""
    section = html[html.index('id="modelqa-comparison"') :]
    assert section.count('class="modelqa-case"') == 3
    manual = section.split('<tr data-case="sports-black">')
    assert len(manual) == 2
    row = manual[1].split("</tr>")[0]
    assert row.endswith("<td>1</td>")
    case = document["suites"][0]["figures"]["other"]["retrieval"]["casual-white"]
    gallery = section.split('class="modelqa-case" data-case="casual-white"')[1].split(
        'class="modelqa-case"'
    )[0]
    assert 'href="#modelqa-case-mini-casual-white"' in section
    assert 'id="modelqa-case-mini-casual-white"' in section
    for result in case["results"]:
        assert f'data-id="{result["id"]}"' in gallery
    first = case["results"][0]
    verdict = "category ok" if first["category_ok"] else "category wrong"
    assert verdict in gallery


def check_case_extras(parser: ReportParser) -> None:
    """Check that a case item's row carries its own gallery as an HTML extra."""
    reports = parser.blob["tests"]["suite/modelqa-suite.yaml::case_casual-white[other]"]
    extras = [extra for entry in reports for extra in entry["extras"]]
    galleries = [e["content"] for e in extras if e["format_type"] == "html"]
    assert len(galleries) == 1
    assert 'data-case="casual-white"' in galleries[0]
    assert 'data-model="baseline"' in galleries[0]
    assert 'data-model="other"' in galleries[0]
    assert galleries[0].count("data:image/jpeg;base64,") == 2 * 5


def test_self_contained_report_embeds_images(pytester, suite_dir, models):
    html, document, result = run_report(
        pytester,
        suite_dir(),
        [models["other"], models["trained"]],
        "--self-contained-html",
    )
    # pytest-html warns when a self-contained report links an external file.
    assert "includes link to external resource" not in result.stdout.str()
    parser = parse(html)
    plots_shown = {img["data-plot"] for img in parser.images if "data-plot" in img}
    assert plots_shown == {"top-k", "benchmarks", "history"}
    sources = [img["src"] for img in parser.images]
    assert all(
        src.startswith(("data:image/png;base64,", "data:image/jpeg;base64,"))
        for src in sources
    )
    for src in sources:
        payload = base64.b64decode(src.split(",", 1)[1], validate=True)
        with Image.open(io.BytesIO(payload)) as image:
            if src.startswith("data:image/jpeg"):
                assert max(image.size) <= plots.THUMBNAIL_SIZE
    # 3 automated cases, 3 models, 5 results each, and the query image of one case.
    thumbnails = [src for src in sources if src.startswith("data:image/jpeg")]
    assert len(thumbnails) == 3 * 3 * 5 + 1
    assert 'href="assets/' not in html
    check_galleries(html, document)
    check_case_extras(parser)


def _strings(value, *, skip_keys: tuple[str, ...] = ()):
    """Yield the strings of a decoded JSON value, less dict keys and skipped fields."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            if key not in skip_keys:
                yield from _strings(item, skip_keys=skip_keys)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item, skip_keys=skip_keys)


def test_report_escapes_file_name_and_case_text(pytester, suite_dir, models):
    suite = suite_dir(casual_text=f"casual shoes with white shoelace {HOSTILE}")
    hostile = pytester.path / "<script>x.pt"
    shutil.copy2(models["other"], hostile)
    html, _, _ = run_report(pytester, suite, [hostile])
    parser = parse(html)
    # pytest-html's own app script is the only script element.
    assert parser.scripts == 1
    section = html[html.index('id="modelqa-comparison"') :]
    assert "<script>" not in section.split("<footer>")[0]
    assert "&lt;script&gt;x" in section
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in section
    # The data blob's strings are inserted into the page as HTML by pytest-html's
    # script: environment values, table cells, logs and extras must be escaped too.
    # The title is written by the template, which escapes it, and not by the script.
    inserted = list(_strings(parser.blob, skip_keys=("title",)))
    assert not [text for text in inserted if "<script>" in text]
    assert any("&lt;script&gt;x" in text for text in inserted)


def _chromium(*args: str) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory() as profile:
        return subprocess.run(
            [
                CHROMIUM,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                f"--user-data-dir={profile}",
                *args,
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )


@pytest.mark.skipif(
    CHROMIUM is None, reason="chromium not installed (apt-get install chromium)"
)
def test_report_renders_in_chromium(pytester, suite_dir, models):
    _, document, _ = run_report(
        pytester,
        suite_dir(),
        [models["other"], models["trained"]],
        "--self-contained-html",
    )
    page = (pytester.path / "report.html").as_uri()
    screenshot = pytester.path / "report.png"
    completed = _chromium(f"--screenshot={screenshot}", "--window-size=1400,2000", page)
    assert screenshot.is_file(), completed.stderr[-2000:]
    with Image.open(screenshot) as image:
        rgb = image.convert("RGB")
        colours = rgb.getcolors(maxcolors=1 << 20)
        assert colours is not None
        assert len(colours) > 50
        assert rgb.getextrema() != ((255, 255), (255, 255), (255, 255))
        # Text, table rules and plots darken more than 1 % of the window; a page
        # that failed to render or shows only its title does not.
        grey = rgb.convert("L")
        dark = sum(grey.histogram()[:200])
        assert dark > 0.01 * grey.width * grey.height
    # The environment table is filled in by pytest-html's script, so check the
    # rendered DOM: the rows are there and the models' hashes with them.
    dom = _chromium("--dump-dom", page).stdout
    assert "modelqa baseline" in dom
    assert document["models"][1]["sha256"] in dom


# -- the renderer on hand-made documents ----------------------------------------------


def _document(*, winners: list[str], details: dict | None = None) -> dict:
    """Build a minimal results document: a baseline and candidates a and b."""

    def figures(accuracy: float) -> dict:
        return {
            "classification": {
                "n": 4,
                "classes": ["black", "white"],
                "zero_shot_accuracy": accuracy,
                "top_k": [accuracy, 1.0],
                "rank_score": 18,
                "rank_score_max": 20,
                "report": {
                    name: {
                        "precision": 0.5,
                        "recall": 0.5,
                        "f1-score": 0.5,
                        "support": 2.0,
                    }
                    for name in ("black", "white", "macro avg", "weighted avg")
                },
                "warnings": [],
            },
            "retrieval": {},
            "benchmarks": {},
        }

    verdicts = [
        {
            "check": "zero_shot_accuracy",
            "phase": "classification",
            "candidate": label,
            "observed": 0.75,
            "baseline": 0.5,
            "delta": 0.25,
            "rule": {"text": "better: candidate > baseline"},
            "passed": True,
            "details": {"suite": "s", **(details or {})},
        }
        for label in ("a", "b")
    ]
    return {
        "environment": {"pytest_modelqa": "0", "torch": "0", "open_clip": "0"},
        "models": [
            {"label": "baseline", "role": "baseline", "spec": "base.pt"},
            {"label": "a", "role": "candidate", "spec": "a.pt"},
            {"label": "b", "role": "candidate", "spec": "b.pt"},
        ],
        "suites": [
            {
                "name": "s",
                "path": "s/modelqa-suite.yaml",
                "catalog": {"name": "c", "sha256": "0" * 64, "items": 4},
                "figures": {
                    "baseline": figures(0.5),
                    "a": figures(0.75),
                    "b": figures(0.75),
                },
            }
        ],
        "verdicts": verdicts,
        "selection": {
            "acceptable": ["a", "b"],
            "rejected": {},
            "winners": winners,
            "retrieval_totals": {"a": 0.0, "b": 0.0},
        },
    }


@pytest.mark.parametrize(
    ("details", "lines"),
    [
        (
            {"interval": [0.125, 0.375], "p_value": 0.0123},
            ("interval [+12.50, +37.50] pp", "p = 0.0123"),
        ),
        (
            {
                "statistics": {
                    "test": "McNemar exact",
                    "interval": [0.125, 0.375],
                    "confidence": 0.95,
                    "p_value": 0.0123,
                    "p_value_two_sided": 0.0246,
                }
            },
            ("95 % [+12.50, +37.50] pp", "one-sided p = 0.0123"),
        ),
    ],
    ids=["in-details", "in-statistics"],
)
def test_interval_and_p_value_are_shown(details, lines):
    html = report.render_report(_document(winners=["a"], details=details))
    cell = next(
        c
        for c in parse(html).figure_cells
        if c["data-model"] == "a" and c["data-figure"] == "zero_shot_accuracy"
    )
    assert float(cell["data-interval-low"]) == 0.125
    assert float(cell["data-interval-high"]) == 0.375
    assert float(cell["data-p-value"]) == 0.0123
    for line in lines:
        assert f">{line}</span>" in html


def test_tie_is_reported_as_tie():
    html = report.render_report(_document(winners=["a", "b"]))
    assert "Tie between <b>a</b>, <b>b</b>" in html
    rows = {
        row["data-model"]: row["data-outcome"] for row in parse(html).selection_rows
    }
    assert rows == {"a": "tied winner", "b": "tied winner"}


def test_single_winner_is_shipped():
    html = report.render_report(_document(winners=["b"]))
    assert "Ship <b>b</b>: it passed every check" in html


def test_winner_by_tie_breaker_says_so():
    html = report.render_report(_document(winners=["a"]))
    assert "its retrieval total (0) equals that of b" in html


def test_candidate_without_figures_is_not_evaluated():
    document = _document(winners=["a"])
    document["models"][2]["error"] = "b.pt: not a readable torch checkpoint"
    del document["suites"][0]["figures"]["b"]
    document["verdicts"] = [v for v in document["verdicts"] if v["candidate"] != "b"]
    document["selection"]["acceptable"] = ["a"]
    html = report.render_report(document)
    parser = parse(html)
    rows = {row["data-model"]: row["data-outcome"] for row in parser.selection_rows}
    assert rows == {"a": "winner", "b": "not evaluated"}
    assert "b.pt: not a readable torch checkpoint" in html
    cells = [c for c in parser.figure_cells if c["data-model"] == "b"]
    assert cells
    assert not [c for c in cells if "data-value" in c]


def test_merge_results_joins_workers():
    whole = _document(winners=["a", "b"])
    first, second = copy.deepcopy(whole), copy.deepcopy(whole)
    first["verdicts"] = [v for v in whole["verdicts"] if v["candidate"] == "a"]
    second["verdicts"] = [v for v in whole["verdicts"] if v["candidate"] == "b"]
    del first["suites"][0]["figures"]["b"]
    del second["suites"][0]["figures"]["a"]
    second["models"][1]["error"] = "a.pt: not loaded on this worker"
    merged = workers.merge_results([second, first], ["a", "b"])
    assert sorted(merged["verdicts"], key=lambda v: v["candidate"]) == whole["verdicts"]
    assert merged["suites"][0]["figures"] == whole["suites"][0]["figures"]
    assert merged["models"] == whole["models"]
    selection = merged["selection"]
    assert selection["acceptable"] == ["a", "b"]
    # Equal retrieval totals and equal zero-shot accuracy: a tie.
    assert selection["winners"] == ["a", "b"]
    assert selection["tie_breaker"] == {"a": 0.75, "b": 0.75}


def test_figure_value_reads_string_method_keys():
    figures = {
        "retrieval": {
            "a": {"automated": True, "scores": {"1": 4, "2": 1}},
            "b": {"automated": True, "scores": {1: 3, 2: 0}},
            "c": {"automated": False, "scores": {}},
        }
    }
    assert report.figure_value(figures, "method_1") == 7.0
    assert report.figure_value(figures, "method_2") == 1.0
    assert report.figure_value(figures, "top_4_accuracy") is None


def test_history_groups_join_runs():
    document = {
        "models": [
            {"label": "e2", "history": HISTORY[:2], "epoch": 2},
            {"label": "e3", "history": HISTORY, "epoch": 3},
            {"label": "other", "history": [{"epoch": 1, "val_loss": 9.0}]},
            {"label": "baseline", "history": []},
        ]
    }
    groups = report._history_groups(document)
    assert [marks for _, marks in groups] == [{"e3": 3, "e2": 2}, {"other": 1}]


def test_history_keys_skip_epoch_and_non_numbers():
    assert plots.history_keys(HISTORY) == ["train_loss", "val_loss", "val_shoelace_acc"]


def test_thumbnail_of_missing_file_is_none(tmp_path):
    assert plots.thumbnail(tmp_path / "missing.jpg") is None
    (tmp_path / "text.jpg").write_text("not an image")
    assert plots.thumbnail(tmp_path / "text.jpg") is None


def test_thumbnail_fits_size(tmp_path):
    Image.new("RGB", (400, 200), "red").save(tmp_path / "wide.png")
    uri = plots.thumbnail(tmp_path / "wide.png")
    assert uri.startswith("data:image/jpeg;base64,")
    try:
        payload = base64.b64decode(uri.split(",", 1)[1], validate=True)
    except binascii.Error:
        pytest.fail("thumbnail is not valid base64")
    with Image.open(io.BytesIO(payload)) as image:
        assert image.size == (96, 48)
