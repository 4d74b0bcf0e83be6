"""Suite and case YAML: every validation error, with file and line, and fuzzing."""

from __future__ import annotations

import shutil
import textwrap
from pathlib import Path

import pytest
import yaml
from conftest import copy_catalog_sample
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pytest_modelqa.catalog import CatalogError
from pytest_modelqa.suite import load_suite
from pytest_modelqa.yamlsource import SuiteError

SUITE = """\
name: mini
catalog: catalog
columns:
  category: category
  attribute: shoelace_colour
attribute:
  prompt: "{category} with {value} shoelace"
  synonyms: {navy blue: navy}
retrieval:
  cases: cases/*.yaml
"""

CASE = """\
cases:
  - id: casual-white
    text: casual shoes with white shoelace
    category: Casual Shoes
    attribute: white
"""


@pytest.fixture(scope="module")
def catalog_copy(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("catalog")
    return copy_catalog_sample("footwear", root, per_split={"train": 10, "test": 40})


@pytest.fixture
def suite_root(tmp_path: Path, catalog_copy: Path) -> Path:
    root = tmp_path / "suite"
    shutil.copytree(catalog_copy, root / "catalog")
    (root / "cases").mkdir()
    (root / "modelqa-suite.yaml").write_text(SUITE)
    (root / "cases" / "text.yaml").write_text(CASE)
    return root


def load(root: Path):
    return load_suite(root / "modelqa-suite.yaml", catalog_dirs=[])


def write_case(root: Path, body: str, name: str = "text.yaml") -> Path:
    path = root / "cases" / name
    path.write_text(textwrap.dedent(body))
    return path


def test_valid_suite_loads(suite_root):
    suite = load(suite_root)
    assert suite.name == "mini"
    assert [case.id for case in suite.cases] == ["casual-white"]
    assert suite.cases[0].category == "casual shoes"
    assert suite.cases[0].line == 2


def test_suite_split_across_files(suite_root):
    write_case(
        suite_root,
        """\
        cases:
          - id: sports-black
            text: sports shoes with black shoelace
            category: Sports Shoes
            attribute: black
        """,
        name="more.yaml",
    )
    suite = load(suite_root)
    assert sorted(case.id for case in suite.cases) == ["casual-white", "sports-black"]


def test_benchmark_scores_its_split(suite_root):
    path = suite_root / "modelqa-suite.yaml"
    path.write_text(
        SUITE
        + "benchmarks:\n"
        + "  held-out: {catalog: catalog, split: test}\n"
        + "  whole: {catalog: catalog}\n"
    )
    held_out, whole = load(suite_root).benchmarks
    assert len(held_out.catalog) == 40
    assert set(held_out.catalog.frame["split"]) == {"test"}
    assert len(whole.catalog) == 50


def test_synonym_maps_attribute_value(suite_root):
    write_case(
        suite_root,
        """\
        cases:
          - id: casual-navy
            text: casual shoes with navy laces
            category: casual shoes
            attribute: Navy Blue
        """,
    )
    assert load(suite_root).cases[0].attribute == "navy"


ERRORS = [
    (
        "unknown key",
        """\
        cases:
          - id: a
            text: casual shoes
            categroy: Casual Shoes
            attribute: white
        """,
        r"text\.yaml:4: unknown key 'categroy' in case 'a'; did you mean 'category'\?",
    ),
    (
        "wrong type",
        """\
        cases:
          - id: a
            text: casual shoes
            category: Casual Shoes
            attribute: white
            k: five
        """,
        r"text\.yaml:6: case 'a'\.k: expected a whole number, got 'five'",
    ),
    (
        "unknown category",
        """\
        cases:
          - id: a
            text: casual shoes
            category: Casual Shoe
            attribute: white
        """,
        r"text\.yaml:4: case 'a'\.category: unknown category 'casual shoe'; did you mean "
        r"'casual shoes'\? \(valid: .*casual shoes",
    ),
    (
        "unknown attribute",
        """\
        cases:
          - id: a
            text: casual shoes
            category: Casual Shoes
            attribute: whit
        """,
        r"text\.yaml:5: case 'a'\.attribute: unknown shoelace_colour value 'whit'; "
        r"did you mean 'white'\? \(valid: .*black",
    ),
    (
        "missing key",
        """\
        cases:
          - id: a
            text: casual shoes
            attribute: white
        """,
        r"text\.yaml:2: case 'a': missing key 'category'; add a line 'category: \.\.\.'$",
    ),
    (
        "text and image",
        """\
        cases:
          - id: a
            category: Casual Shoes
            attribute: white
        """,
        r"text\.yaml:2: case 'a': give exactly one of 'text' or 'image'",
    ),
    (
        "missing image",
        """\
        cases:
          - id: a
            image: images/none.jpg
            category: Casual Shoes
            attribute: white
        """,
        r"text\.yaml:3: case 'a'\.image: image file not found: .*images/none\.jpg",
    ),
    (
        "image outside suite",
        """\
        cases:
          - id: a
            image: ../../secret.jpg
            category: Casual Shoes
            attribute: white
        """,
        r"text\.yaml:3: image '\.\./\.\./secret\.jpg' is outside the suite folder",
    ),
    (
        "syntax error",
        """\
        cases:
          - id: a
            text: [unclosed
        """,
        r"text\.yaml:4: YAML syntax error: .*; check the indentation, brackets and "
        r"quotes at this line$",
    ),
    (
        "tab indentation",
        "cases:\n  - id: a\n\ttext: casual shoes\n",
        r"text\.yaml:3: YAML syntax error: found character '\\t' that cannot start any "
        r"token; indent with spaces, not tabs$",
    ),
    (
        "empty file",
        "   \n",
        r"text\.yaml: file is empty; a case file needs a 'cases:' list",
    ),
    (
        "not a mapping",
        "- just\n- a list\n",
        r"text\.yaml:1: case file must be a mapping of keys to values",
    ),
    (
        "bad k",
        """\
        cases:
          - id: a
            text: casual shoes
            category: Casual Shoes
            attribute: white
            k: 0
        """,
        r"text\.yaml:6: case 'a'\.k: must be at least 1; got 0",
    ),
    (
        "bad expectation",
        """\
        cases:
          - id: a
            text: casual shoes
            category: Casual Shoes
            attribute: white
            expect: {min_score: {7: 3}}
        """,
        r"text\.yaml:6: case 'a'\.expect\.min_score: keys are methods 1 to 4",
    ),
    (
        "duplicate key",
        """\
        cases:
          - id: a
            id: b
        """,
        r"text\.yaml:3: YAML syntax error: duplicate key 'id'; keep one of the two "
        r"entries$",
    ),
]


@pytest.mark.parametrize(
    ("body", "message"), [e[1:] for e in ERRORS], ids=[e[0] for e in ERRORS]
)
def test_case_errors_name_file_line_and_fix(suite_root, body, message):
    write_case(suite_root, body)
    with pytest.raises(SuiteError, match=message):
        load(suite_root)


def test_duplicate_ids_across_files(suite_root):
    write_case(suite_root, CASE, name="zz.yaml")
    with pytest.raises(
        SuiteError,
        match=r"zz\.yaml:2: duplicate case id 'casual-white'; first defined at "
        r".*text\.yaml:2\. Give each case a unique id\.",
    ):
        load(suite_root)


def test_image_query_inside_suite_loads(suite_root, catalog_copy):
    (suite_root / "images").mkdir()
    shutil.copy2(
        next((catalog_copy / "images").iterdir()), suite_root / "images" / "q.jpg"
    )
    write_case(
        suite_root,
        """\
        cases:
          - id: img
            image: images/q.jpg
            category: Casual Shoes
            attribute: white
        """,
    )
    case = load(suite_root).cases[0]
    assert case.image == (suite_root / "images" / "q.jpg").resolve()
    assert case.query == "image q.jpg"


def test_symlink_out_of_suite_is_rejected(suite_root, tmp_path):
    outside = tmp_path / "outside.jpg"
    outside.write_bytes(b"x")
    (suite_root / "images").mkdir()
    (suite_root / "images" / "link.jpg").symlink_to(outside)
    write_case(
        suite_root,
        """\
        cases:
          - id: img
            image: images/link.jpg
            category: Casual Shoes
            attribute: white
        """,
    )
    with pytest.raises(SuiteError, match="is outside the suite folder"):
        load(suite_root)


SUITE_ERRORS = [
    (
        "catalog: catalog",
        "catalog: nowhere",
        r"modelqa-suite\.yaml:2: catalog 'nowhere' not found",
    ),
    (
        "  attribute: shoelace_colour",
        "  attribute: lace",
        r":5: columns\.attribute: catalog 'catalog' has no column 'lace'",
    ),
    (
        '  prompt: "{category} with {value} shoelace"',
        '  prompt: "{colour} laces"',
        r":7: attribute\.prompt: unknown field \{colour\} in '\{colour\} laces'; "
        r"use \{value\}, \{category\}",
    ),
    (
        '  prompt: "{category} with {value} shoelace"',
        '  prompt: "{value"',
        r":7: attribute\.prompt: invalid template",
    ),
    (
        "  cases: cases/*.yaml",
        "  cases: ../*.yaml",
        r"cases '\.\./' is outside the suite folder",
    ),
    (
        "  cases: cases/*.yaml",
        "  cases: nothing/*.yaml",
        r"retrieval\.cases: no file matches 'nothing/\*\.yaml'",
    ),
    (
        "retrieval:",
        "retreival:",
        r":9: unknown key 'retreival' in suite; did you mean 'retrieval'\?",
    ),
    (
        "  cases: cases/*.yaml",
        "  cases: cases/*.yaml\n  gallery_split: everything",
        r"retrieval\.gallery_split: must be train, val, test or all; got 'everything'",
    ),
    (
        "  cases: cases/*.yaml",
        "  cases: cases/*.yaml\nbenchmarks:\n  own: {catalog: catalog, split: every}",
        r":12: benchmarks\.own\.split: must be train, val, test or all; got 'every'",
    ),
    (
        "  cases: cases/*.yaml",
        "  cases: cases/*.yaml\nbenchmarks:\n  own: {catalog: catalog, split: val}",
        r":12: benchmarks\.own\.split: catalog 'catalog' has no 'val' items",
    ),
    (
        "  cases: cases/*.yaml",
        "  cases: cases/*.yaml\n  checks: {method_1: {rule: best}}",
        r"retrieval\.checks\.method_1\.rule: unknown rule 'best'; use one of better, margin",
    ),
]


@pytest.mark.parametrize(
    ("old", "new", "message"),
    SUITE_ERRORS,
    ids=[e[1].strip()[:30] for e in SUITE_ERRORS],
)
def test_suite_errors_name_file_line_and_fix(suite_root, old, new, message):
    path = suite_root / "modelqa-suite.yaml"
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))
    with pytest.raises(SuiteError, match=message):
        load(suite_root)


yaml_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 30),
    st.floats(allow_nan=False, width=32),
    st.text(max_size=12),
    st.sampled_from(["casual shoes", "white", "images/x.jpg", "../x", "{value}", "*"]),
)
keys = st.sampled_from(
    [
        "id",
        "text",
        "image",
        "category",
        "attribute",
        "k",
        "tags",
        "expect",
        "cases",
        "min_score",
        "beat_baseline",
        "other",
    ]
)
documents = st.recursive(
    yaml_scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(keys, children, max_size=5)
    ),
    max_leaves=20,
)


@settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(document=documents)
def test_fuzzed_case_files_give_clean_errors(suite_root, document):
    (suite_root / "cases" / "text.yaml").write_text(yaml.safe_dump({"cases": document}))
    try:
        load(suite_root)
    except SuiteError as error:
        assert str(error).startswith(str(suite_root))


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(text=st.text(max_size=80))
def test_fuzzed_raw_text_gives_clean_errors(suite_root, text):
    (suite_root / "cases" / "text.yaml").write_text(text)
    try:
        load(suite_root)
    except SuiteError:
        pass


def test_catalog_error_is_reported_as_suite_error(suite_root):
    manifest = suite_root / "catalog" / "manifest.csv"
    manifest.write_text("id,image\n1,a.jpg\n")
    with pytest.raises(SuiteError, match="missing column category, split"):
        load(suite_root)
    assert issubclass(CatalogError, ValueError)


def test_per_class_f1_runs_only_when_listed(suite_root):
    assert "per_class_f1" not in load(suite_root).classification_rules
    path = suite_root / "modelqa-suite.yaml"
    path.write_text(
        path.read_text()
        + "classification:\n  checks:\n    macro_f1:\n    per_class_f1: {tolerance: 0.1}\n"
    )
    rules = load(suite_root).classification_rules
    assert list(rules) == ["macro_f1", "per_class_f1"]
    assert rules["macro_f1"].kind == "better"
    assert rules["per_class_f1"].kind == "non_inferior"
    assert rules["per_class_f1"].tolerance == 0.1
