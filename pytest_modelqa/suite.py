"""The suite YAML schema: validation with file and line, and the case objects."""

from __future__ import annotations

import difflib
import string
from dataclasses import dataclass, field
from pathlib import Path

from pytest_modelqa.catalog import Catalog, CatalogError, load_catalog, normalise_label
from pytest_modelqa.gate import Rule
from pytest_modelqa.yamlsource import LineDict, LineList, SuiteError, load_yaml

SUITE_FILE_NAME = "modelqa-suite.yaml"
CLASSIFICATION_CHECKS = (
    "macro_f1",
    "weighted_f1",
    "macro_precision",
    "macro_recall",
    "zero_shot_accuracy",
    "top_k_accuracy",
    "rank_score",
    "per_class_f1",
)
# Checks that run only when a suite lists them, with the rule they take by default:
# per_class_f1 applies its rule to every class's F1, so by default no class may drop.
OPTIONAL_CHECKS = {"per_class_f1": Rule("non_inferior")}
RETRIEVAL_CHECKS = ("method_1", "method_2", "method_3", "method_4")
NONE_POLICIES = ("exclude", "class")


@dataclass(frozen=True)
class Case:
    """One retrieval case: a text or image query with its expected labels."""

    id: str
    category: str
    attribute: str
    source: Path
    line: int
    text: str | None = None
    image: Path | None = None
    k: int = 5
    tags: tuple[str, ...] = ()
    min_scores: dict[int, int] = field(default_factory=dict)
    beat_baseline: bool = False

    @property
    def query(self) -> str:
        return self.text if self.text is not None else f"image {self.image.name}"


@dataclass(frozen=True)
class Benchmark:
    """A general-category benchmark: accuracy of category prompts on a catalog."""

    name: str
    catalog: Catalog
    prompt: str
    rule: Rule
    column: str = "category"


@dataclass
class Suite:
    """A parsed and validated suite: catalogs, prompts, rules and cases."""

    name: str
    path: Path
    catalog: Catalog
    category_column: str
    attribute_column: str
    attribute_prompt: str
    none_value: str
    none_policy: str
    synonyms: dict[str, str]
    classification_split: str
    top_k: int
    classification_rules: dict[str, Rule]
    gallery_split: str
    min_matches: int
    retrieval_rules: dict[str, Rule]
    cases: list[Case]
    benchmarks: list[Benchmark]
    statistics: StatisticsConfig
    baseline_sha256: str | None

    @property
    def root(self) -> Path:
        return self.path.parent

    def canonical(self, column: str, value: object) -> str:
        """Return the normalised form of a label, with the suite's synonyms applied."""
        label = normalise_label(value)
        return self.synonyms.get(label, label)


_TYPE_NAMES = {
    LineDict: "a mapping",
    LineList: "a list",
    str: "text",
    int: "a whole number",
    float: "a number",
    bool: "true or false",
}
PROMPT_FIELDS = ("value", "category")


def _suggest(word: str, choices) -> str:
    close = difflib.get_close_matches(str(word), list(choices), n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


class _Reader:
    """Typed access to a YAML mapping that raises SuiteError with file and line."""

    def __init__(self, path: Path, node: object, where: str, allowed: tuple[str, ...]):
        self.path = path
        self.where = where
        if not isinstance(node, LineDict):
            line = getattr(node, "line", None)
            raise SuiteError(path, line, f"{where} must be a mapping of keys to values")
        self.node = node
        for key in node:
            if key not in allowed:
                raise SuiteError(
                    path,
                    node.line_of(key),
                    f"unknown key {key!r} in {where}{_suggest(key, allowed)} "
                    f"(valid keys: {', '.join(allowed)})",
                )

    def line(self, key: str) -> int:
        return self.node.line_of(key)

    def fail(self, key: str, message: str) -> SuiteError:
        return SuiteError(self.path, self.line(key), f"{self.where}.{key}: {message}")

    def get(self, key: str, kind, default=None, *, required: bool = False):
        if key not in self.node:
            if required:
                raise SuiteError(
                    self.path,
                    self.node.line,
                    f"{self.where}: missing key {key!r}; add a line '{key}: ...'",
                )
            return default
        value = self.node[key]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if isinstance(value, bool) and bool not in kinds:
            value = object()  # a YAML true/false where a number or text belongs
        if not isinstance(value, kinds):
            names = " or ".join(_TYPE_NAMES.get(k, k.__name__) for k in kinds)
            raise self.fail(key, f"expected {names}, got {self.node[key]!r}")
        return value


RULE_KEYS = ("rule", "amount", "tolerance", "relative", "alpha", "unresolved")


def parse_rule(path: Path, node: object, where: str, default: Rule) -> Rule:
    """Parse a gate rule mapping such as {rule: non_inferior, tolerance: 0.05}.

    Keys left out take the default rule's values when the kind is the default's,
    else the plain defaults of that kind.
    """
    if node is None:
        return default
    reader = _Reader(path, node, where, RULE_KEYS)
    kind = reader.get("rule", str, default.kind)
    base = default if kind == default.kind else Rule()
    alpha = reader.get("alpha", (int, float), base.alpha)
    try:
        return Rule(
            kind=kind,
            amount=float(reader.get("amount", (int, float), base.amount)),
            tolerance=float(reader.get("tolerance", (int, float), base.tolerance)),
            relative=reader.get("relative", bool, base.relative),
            alpha=None if alpha is None else float(alpha),
            unresolved=reader.get("unresolved", str, base.unresolved),
        )
    except ValueError as error:
        key = next((k for k in RULE_KEYS[1:] if k in str(error).split()[0:1]), "rule")
        raise reader.fail(key, str(error)) from error


@dataclass(frozen=True)
class StatisticsConfig:
    """Paired statistics settings: bootstrap resamples, seed and confidence level."""

    resamples: int = 1000
    seed: int = 0
    confidence: float = 0.95


def _parse_statistics(path: Path, node: object) -> StatisticsConfig:
    if node is None:
        return StatisticsConfig()
    reader = _Reader(path, node, "statistics", ("resamples", "seed", "confidence"))
    config = StatisticsConfig(
        resamples=reader.get("resamples", int, 1000),
        seed=reader.get("seed", int, 0),
        confidence=float(reader.get("confidence", (int, float), 0.95)),
    )
    if config.resamples < 1000:
        raise reader.fail("resamples", f"must be at least 1000; got {config.resamples}")
    if not 0 < config.confidence < 1:
        raise reader.fail(
            "confidence", f"must lie between 0 and 1; got {config.confidence}"
        )
    return config


def _resolve_inside(
    root: Path, relative: str, path: Path, line: int, what: str
) -> Path:
    candidate = (root / relative).resolve()
    if not candidate.is_relative_to(root.resolve()):
        raise SuiteError(
            path,
            line,
            f"{what} {relative!r} is outside the suite folder {root}; "
            "keep suite files and images inside it",
        )
    return candidate


def resolve_catalog(
    name: str, suite_root: Path, catalog_dirs: list[Path], path: Path, line: int
) -> Catalog:
    """Find a catalog by name in the configured catalog folders or inside the suite."""
    candidates = [folder / name for folder in catalog_dirs]
    candidates.append(_resolve_inside(suite_root, name, path, line, "catalog"))
    for candidate in candidates:
        if (candidate / "manifest.csv").is_file() or candidate.suffix == ".csv":
            try:
                return load_catalog(candidate, name=Path(name).name)
            except CatalogError as error:
                raise SuiteError(path, line, str(error)) from error
    searched = ", ".join(str(folder) for folder in [*catalog_dirs, suite_root])
    raise SuiteError(path, line, f"catalog {name!r} not found in {searched}")


def load_suite(path: Path, *, catalog_dirs: list[Path]) -> Suite:
    """Read and validate a suite file and every case file it names."""
    from pytest_modelqa.gate import DEFAULT_BENCHMARK_RULE, DEFAULT_RULE

    top = _Reader(
        path,
        load_yaml(path),
        "suite",
        (
            "name",
            "catalog",
            "columns",
            "attribute",
            "classification",
            "retrieval",
            "benchmarks",
            "statistics",
            "baseline_sha256",
        ),
    )
    root = path.parent
    catalog = resolve_catalog(
        top.get("catalog", str, required=True),
        root,
        catalog_dirs,
        path,
        top.line("catalog"),
    )
    columns = _Reader(
        path,
        top.get("columns", LineDict, LineDict()),
        "columns",
        ("category", "attribute"),
    )
    category_column = columns.get("category", str, "category")
    attribute_column = columns.get("attribute", str, required=True)
    for key, column in (("category", category_column), ("attribute", attribute_column)):
        if column not in catalog.frame.columns:
            raise columns.fail(
                key,
                f"catalog {catalog.name!r} has no column {column!r}"
                f"{_suggest(column, catalog.frame.columns)}",
            )

    attribute = _Reader(
        path,
        top.get("attribute", LineDict, LineDict()),
        "attribute",
        ("prompt", "none_value", "none_policy", "synonyms"),
    )
    prompt = _check_prompt(attribute, "prompt", attribute.get("prompt", str, "{value}"))
    none_policy = attribute.get("none_policy", str, "exclude")
    if none_policy not in NONE_POLICIES:
        raise attribute.fail(
            "none_policy",
            f"must be one of {', '.join(NONE_POLICIES)}; got {none_policy!r}",
        )
    synonyms_node = attribute.get("synonyms", LineDict, LineDict())
    synonyms = {
        normalise_label(k): normalise_label(v) for k, v in synonyms_node.items()
    }

    classification = _Reader(
        path,
        top.get("classification", LineDict, LineDict()),
        "classification",
        ("split", "top_k", "checks"),
    )
    top_k = classification.get("top_k", int, 5)
    if top_k < 1:
        raise classification.fail("top_k", f"must be at least 1; got {top_k}")
    classification_rules = _parse_checks(
        path,
        classification.get("checks", LineDict, None),
        "classification.checks",
        CLASSIFICATION_CHECKS,
        DEFAULT_RULE,
    )

    retrieval = _Reader(
        path,
        top.get("retrieval", LineDict, LineDict()),
        "retrieval",
        ("gallery_split", "min_matches", "cases", "checks"),
    )
    retrieval_rules = _parse_checks(
        path,
        retrieval.get("checks", LineDict, None),
        "retrieval.checks",
        RETRIEVAL_CHECKS,
        DEFAULT_RULE,
    )
    patterns = retrieval.get("cases", (LineList, str), "cases/*.yaml")
    patterns = [patterns] if isinstance(patterns, str) else list(patterns)
    for pattern in patterns:
        if not isinstance(pattern, str):
            raise retrieval.fail(
                "cases", f"expected glob patterns as text, got {pattern!r}"
            )
    min_matches = retrieval.get("min_matches", int, 5)
    if min_matches < 1:
        raise retrieval.fail("min_matches", f"must be at least 1; got {min_matches}")

    suite = Suite(
        name=top.get("name", str, root.name),
        path=path,
        catalog=catalog,
        category_column=category_column,
        attribute_column=attribute_column,
        attribute_prompt=prompt,
        none_value=normalise_label(attribute.get("none_value", str, "none")),
        none_policy=none_policy,
        synonyms=synonyms,
        classification_split=classification.get("split", str, "test"),
        top_k=top_k,
        classification_rules=classification_rules,
        gallery_split=retrieval.get("gallery_split", str, "all"),
        min_matches=min_matches,
        retrieval_rules=retrieval_rules,
        cases=[],
        benchmarks=[],
        statistics=_parse_statistics(path, top.node.get("statistics")),
        baseline_sha256=top.get("baseline_sha256", str, None),
    )
    _check_split(classification, "split", suite.classification_split)
    _check_split(retrieval, "gallery_split", suite.gallery_split)
    _check_classification_items(classification, suite)
    suite.benchmarks = _parse_benchmarks(
        path,
        top.get("benchmarks", LineDict, LineDict()),
        root,
        catalog_dirs,
        DEFAULT_BENCHMARK_RULE,
    )
    suite.cases = _load_cases(suite, patterns, path, retrieval.line("cases"))
    return suite


def _check_prompt(reader: _Reader, key: str, prompt: str, fields=PROMPT_FIELDS) -> str:
    """Reject a prompt template that lacks {value} or names an unknown field."""
    try:
        names = {
            name
            for _, name, _, _ in string.Formatter().parse(prompt)
            if name is not None
        }
    except ValueError as error:
        raise reader.fail(
            key, f"invalid template {prompt!r} ({error}); write fields as {{value}}"
        ) from error
    unknown = sorted(names - set(fields))
    if unknown:
        allowed = ", ".join("{" + name + "}" for name in fields)
        raise reader.fail(
            key, f"unknown field {{{unknown[0]}}} in {prompt!r}; use {allowed}"
        )
    if "value" not in names:
        raise reader.fail(key, f"must contain {{value}}; got {prompt!r}")
    return prompt


def _check_split(reader: _Reader, key: str, split: str) -> None:
    if split not in ("train", "val", "test", "all"):
        raise reader.fail(key, f"must be train, val, test or all; got {split!r}")


def _check_classification_items(reader: _Reader, suite: Suite) -> None:
    """Reject a suite whose classification split leaves no item to classify."""
    items = suite.catalog.subset(suite.classification_split)
    where = f"catalog {suite.catalog.name!r} has no items in split "
    where += repr(suite.classification_split)
    if not len(items):
        raise reader.fail("split", f"{where}; use a split that has items, or all")
    if suite.none_policy != "exclude":
        return
    values = {suite.canonical("", v) for v in items.labels(suite.attribute_column)}
    if values <= {suite.none_value}:
        raise reader.fail(
            "split",
            f"{where} with a {suite.attribute_column} other than "
            f"{suite.none_value!r}, and attribute.none_policy exclude leaves those "
            "out; use another split, or set none_policy: class",
        )


def _parse_checks(path, node, where, names, default) -> dict[str, Rule]:
    if node is None:
        return {name: default for name in names if name not in OPTIONAL_CHECKS}
    reader = _Reader(path, node, where, names)
    return {
        name: parse_rule(
            path,
            reader.node[name],
            f"{where}.{name}",
            OPTIONAL_CHECKS.get(name, default),
        )
        for name in names
        if name in reader.node
    }


def _parse_benchmarks(path, node, root, catalog_dirs, default) -> list[Benchmark]:
    benchmarks = []
    for name, body in node.items():
        where = f"benchmarks.{name}"
        reader = _Reader(
            path, body, where, ("catalog", "split", "prompt", "column", "rule")
        )
        catalog = resolve_catalog(
            reader.get("catalog", str, required=True),
            root,
            catalog_dirs,
            path,
            reader.line("catalog"),
        )
        split = reader.get("split", str, "all")
        _check_split(reader, "split", split)
        if not len(catalog):
            raise reader.fail(
                "catalog",
                f"catalog {catalog.name!r} has no items to benchmark on; add rows to "
                "its manifest",
            )
        scored = catalog.subset(split)
        if not len(scored):
            raise reader.fail(
                "split",
                f"catalog {catalog.name!r} has no {split!r} items; "
                "use a split its manifest assigns, or all",
            )
        catalog = scored
        prompt = _check_prompt(
            reader,
            "prompt",
            reader.get("prompt", str, "a photo of a {value}"),
            fields=("value",),
        )
        column = reader.get("column", str, "category")
        if column not in catalog.frame.columns:
            raise reader.fail(
                "column", f"catalog {catalog.name!r} has no column {column!r}"
            )
        rule = parse_rule(path, reader.node.get("rule"), f"{where}.rule", default)
        benchmarks.append(Benchmark(str(name), catalog, prompt, rule, column))
    return benchmarks


CASE_KEYS = ("id", "text", "image", "category", "attribute", "k", "tags", "expect")


def _load_cases(suite: Suite, patterns: list[str], path: Path, line: int) -> list[Case]:
    files: list[Path] = []
    for pattern in patterns:
        _resolve_inside(suite.root, pattern.split("*")[0] or ".", path, line, "cases")
        try:
            matched = sorted(p for p in suite.root.glob(pattern) if p.is_file())
        except (ValueError, NotImplementedError) as error:
            raise SuiteError(
                path, line, f"invalid cases pattern {pattern!r} ({error})"
            ) from error
        for case_file in matched:
            _resolve_inside(
                suite.root,
                str(case_file.relative_to(suite.root)),
                path,
                line,
                "case file",
            )
        if not matched:
            raise SuiteError(
                path,
                line,
                f"retrieval.cases: no file matches {pattern!r} in {suite.root}",
            )
        files += [case_file for case_file in matched if case_file not in files]
    categories = sorted(set(suite.catalog.labels(suite.category_column)))
    attributes = sorted(
        {suite.canonical("", v) for v in suite.catalog.labels(suite.attribute_column)}
    )
    seen: dict[str, tuple[Path, int]] = {}
    cases = []
    for case_file in files:
        document = load_yaml(case_file)
        top = _Reader(case_file, document, "case file", ("cases",))
        items = top.get("cases", LineList, required=True)
        for index, node in enumerate(items):
            case = _parse_case(
                case_file, node, items.item_lines[index], suite, categories, attributes
            )
            if case.id in seen:
                first_file, first_line = seen[case.id]
                raise SuiteError(
                    case_file,
                    case.line,
                    f"duplicate case id {case.id!r}; first defined at "
                    f"{first_file}:{first_line}. Give each case a unique id.",
                )
            seen[case.id] = (case_file, case.line)
            cases.append(case)
    return cases


def _parse_case(case_file, node, line, suite, categories, attributes) -> Case:
    raw_id = node.get("id") if isinstance(node, LineDict) else None
    where = f"case {str(raw_id)!r}" if isinstance(raw_id, str | int) else "case"
    reader = _Reader(case_file, node, where, CASE_KEYS)
    case_id = str(reader.get("id", (str, int), required=True))
    text = reader.get("text", str)
    image = reader.get("image", str)
    if (text is None) == (image is None):
        raise SuiteError(
            case_file, line, f"{where}: give exactly one of 'text' or 'image'"
        )
    image_path = None
    if image is not None:
        image_path = _resolve_inside(
            suite.root, image, case_file, reader.line("image"), "image"
        )
        if not image_path.is_file():
            raise reader.fail("image", f"image file not found: {image_path}")
    category = normalise_label(reader.get("category", str, required=True))
    if category not in categories:
        raise reader.fail(
            "category",
            f"unknown category {category!r}{_suggest(category, categories)} "
            f"(valid: {', '.join(categories)})",
        )
    attribute = suite.canonical("", reader.get("attribute", str, required=True))
    if attribute not in attributes:
        raise reader.fail(
            "attribute",
            f"unknown {suite.attribute_column} value {attribute!r}"
            f"{_suggest(attribute, attributes)} (valid: {', '.join(attributes)})",
        )
    k = reader.get("k", int, 5)
    if k < 1:
        raise reader.fail("k", f"must be at least 1; got {k}")
    tags = reader.get("tags", LineList, LineList())
    min_scores, beat_baseline = _parse_expect(
        case_file, reader.node.get("expect"), where
    )
    return Case(
        id=case_id,
        category=category,
        attribute=attribute,
        source=case_file,
        line=line,
        text=text,
        image=image_path,
        k=k,
        tags=tuple(str(tag) for tag in tags),
        min_scores=min_scores,
        beat_baseline=beat_baseline,
    )


def _parse_expect(case_file, node, where) -> tuple[dict[int, int], bool]:
    if node is None:
        return {}, False
    reader = _Reader(case_file, node, f"{where}.expect", ("min_score", "beat_baseline"))
    minimums = reader.get("min_score", LineDict, LineDict())
    parsed = {}
    for method, value in minimums.items():
        if (
            method not in (1, 2, 3, 4)
            or not isinstance(value, int)
            or isinstance(value, bool)
        ):
            raise SuiteError(
                case_file,
                minimums.line_of(method),
                f"{where}.expect.min_score: keys are methods 1 to 4 and values whole "
                f"points; got {method!r}: {value!r}",
            )
        parsed[method] = value
    return parsed, reader.get("beat_baseline", bool, False)
