"""The model comparison in pytest-html's report, rendered from the results document.

Every figure shown comes from `build_results`, the document that ``--modelqa-json``
writes, so the HTML report and the JSON file carry the same values. The comparison
goes into the report's summary through pytest-html's hooks, the run's identity into
pytest-metadata's environment table, and each retrieval case's gallery into its row
as an HTML extra. Every string taken from a suite, a catalog or a path is escaped.
"""

from __future__ import annotations

import re
from html import escape

import pytest

from pytest_modelqa import plots
from pytest_modelqa.state import state_key
from pytest_modelqa.workers import is_worker, session_results

RETRIEVAL_METHODS = (1, 2, 3, 4)
METHOD_TITLES = {
    1: "category and attribute: 3 both, 2 category, 1 attribute",
    2: "attribute only: 1 per correct attribute",
    3: "position, both correct: 6 - position",
    4: "position, attribute correct: 6 - position",
}
# Figures read from sklearn's classification_report(output_dict=True).
AVERAGE_FIGURES = {
    "macro_f1": ("macro avg", "f1-score"),
    "weighted_f1": ("weighted avg", "f1-score"),
    "macro_precision": ("macro avg", "precision"),
    "macro_recall": ("macro avg", "recall"),
}
FIGURE_TITLES = {
    "zero_shot_accuracy": "zero-shot accuracy",
    "rank_score": "rank score",
    "macro_f1": "macro F1",
    "weighted_f1": "weighted F1",
    "macro_precision": "macro precision",
    "macro_recall": "macro recall",
}
CLASS_METRICS = ("precision", "recall", "f1-score", "support")
AVERAGE_ROWS = ("macro avg", "weighted avg")
TOP_K = re.compile(r"top_(\d+)_accuracy")
METHOD = re.compile(r"method_(\d+)")

STYLE = """
.modelqa-report{font-size:12px;margin:1em 0;max-width:100%;color:#222}
.modelqa-report h2{margin-top:1.4em}
.modelqa-report h3{font-size:14px;margin:1.2em 0 .4em}
.modelqa-report table.modelqa{border-collapse:collapse;margin:.5em 0}
.modelqa-report table.modelqa td,.modelqa-report table.modelqa th{
border:1px solid #ccc;padding:3px 6px;vertical-align:top;text-align:right}
.modelqa-report table.modelqa th{background:#f3f3f3}
.modelqa-report table.modelqa .modelqa-name{text-align:left}
.modelqa-report .modelqa-pass{background:#e3f5e1}
.modelqa-report .modelqa-fail{background:#fbe3e3}
.modelqa-report .modelqa-ungated{background:#fafafa}
.modelqa-report .modelqa-delta,.modelqa-report .modelqa-stats{
display:block;color:#555;font-size:11px}
.modelqa-report .modelqa-delta{white-space:nowrap}
.modelqa-report .modelqa-scroll{overflow-x:auto;max-width:100%}
.modelqa-report table.modelqa-overview td{white-space:nowrap}
.modelqa-report .modelqa-outcome{font-weight:bold}
.modelqa-report .modelqa-decision{font-size:15px;padding:.6em .8em;
border-left:5px solid #888;background:#f6f6f6}
.modelqa-report .modelqa-decision.modelqa-ship{border-color:#2e7d32;background:#e3f5e1}
.modelqa-report .modelqa-decision.modelqa-tie{border-color:#e6a100;background:#fff5d6}
.modelqa-report .modelqa-decision.modelqa-none{border-color:#c62828;background:#fbe3e3}
.modelqa-report .modelqa-winner{font-weight:bold;color:#2e7d32}
.modelqa-report code{word-break:break-all}
.modelqa-report .modelqa-plots img{margin:0 1em 1em 0;border:1px solid #ddd}
.modelqa-gallery-row{display:flex;flex-wrap:wrap;gap:12px}
.modelqa-gallery-model{border:1px solid #ddd;padding:4px 6px}
.modelqa-thumbs{display:flex;gap:4px}
.modelqa-result{margin:0;width:100px;font-size:10px;text-align:center}
.modelqa-result img{width:96px;height:96px;object-fit:contain;background:#fff}
.modelqa-result .modelqa-ok{color:#2e7d32}
.modelqa-result .modelqa-wrong{color:#c62828}
.modelqa-query img{vertical-align:middle;margin-right:6px}
"""


def _text(value) -> str:
    return escape(str(value))


def _number(value) -> str:
    """Write a number for a data attribute so that float() reads it back exactly."""
    return repr(float(value))


# -- figures ---------------------------------------------------------------------------


def _by_method(mapping: dict, method: int):
    """Read a per-method entry: int keys in memory, string keys once through JSON."""
    return mapping.get(method, mapping.get(str(method)))


def figure_value(figures: dict, name: str) -> float | None:
    """Return a model's named figure from its entry of a suite's figures.

    Names are the gate's check names: ``zero_shot_accuracy``, ``top_K_accuracy``,
    ``rank_score``, ``macro_f1`` and the other averages, ``method_M`` (the retrieval
    total over automated cases) and ``benchmark_NAME``. Returns None when the figure
    was not computed.
    """
    classification = figures.get("classification") or {}
    if name in ("zero_shot_accuracy", "rank_score"):
        return classification.get(name)
    if name in AVERAGE_FIGURES:
        row, column = AVERAGE_FIGURES[name]
        return classification.get("report", {}).get(row, {}).get(column)
    if match := TOP_K.fullmatch(name):
        curve = classification.get("top_k") or []
        k = int(match.group(1))
        return curve[k - 1] if 1 <= k <= len(curve) else None
    if match := METHOD.fullmatch(name):
        method = int(match.group(1))
        cases = (figures.get("retrieval") or {}).values()
        automated = [case for case in cases if case["automated"]]
        return float(sum(_by_method(case["scores"], method) or 0 for case in automated))
    if name.startswith("benchmark_"):
        benchmarks = figures.get("benchmarks") or {}
        entry = benchmarks.get(name.removeprefix("benchmark_"))
        return None if entry is None else entry["accuracy"]
    return None


def figure_phase(name: str) -> str:
    if METHOD.fullmatch(name):
        return "retrieval"
    if name.startswith("benchmark_"):
        return "benchmark"
    return "classification"


def figure_names(suite: dict, verdicts: list[dict]) -> list[str]:
    """Return the figures of a suite's analytics table, in phase order.

    The table always shows zero-shot accuracy, rank score, macro and weighted F1, the
    four retrieval totals and every benchmark. It adds the top-K accuracies and other
    averages that the suite gates.
    """
    checked = list(dict.fromkeys(verdict["check"] for verdict in verdicts))
    top_k = sorted(
        (check for check in checked if TOP_K.fullmatch(check)),
        key=lambda check: int(TOP_K.fullmatch(check).group(1)),
    )
    names = ["zero_shot_accuracy", *top_k, "rank_score", "macro_f1", "weighted_f1"]
    names += [check for check in checked if check in AVERAGE_FIGURES]
    names += [f"method_{method}" for method in RETRIEVAL_METHODS]
    benchmarks: dict[str, None] = {}
    for figures in suite["figures"].values():
        benchmarks.update(dict.fromkeys(figures.get("benchmarks") or {}))
    names += [f"benchmark_{name}" for name in benchmarks]
    names += checked  # any check the names above miss
    return list(dict.fromkeys(names))


def _is_count(name: str) -> bool:
    return name == "rank_score" or bool(METHOD.fullmatch(name))


def format_figure(name: str, value: float | None) -> str:
    """Format a figure: counts as whole numbers, fractions as percentages."""
    if value is None:
        return "not computed"
    return f"{value:.0f}" if _is_count(name) else f"{100 * value:.2f} %"


def format_delta(name: str, delta: float) -> str:
    """Format a difference from the baseline: points for counts, else percent points."""
    if _is_count(name):
        return f"{delta:+.0f}" if float(delta).is_integer() else f"{delta:+.1f}"
    return f"{100 * delta:+.2f} pp"


def figure_title(name: str) -> str:
    if match := TOP_K.fullmatch(name):
        return f"top-{match.group(1)} accuracy"
    if match := METHOD.fullmatch(name):
        return f"method {match.group(1)}"
    if name.startswith("benchmark_"):
        return name.removeprefix("benchmark_")
    return FIGURE_TITLES.get(name, name)


# -- outcome and selection -------------------------------------------------------------


def model_outcome(label: str, document: dict) -> str:
    """Return a candidate's outcome: winner, tied winner, acceptable, rejected or
    not evaluated (no verdict, for example because the model failed to load)."""
    selection = document["selection"]
    if label in selection["winners"]:
        return "winner" if len(selection["winners"]) == 1 else "tied winner"
    if label in selection["acceptable"]:
        return "acceptable"
    if label in selection["rejected"]:
        return "rejected"
    return "not evaluated"


def _candidates(document: dict) -> list[dict]:
    return [model for model in document["models"] if model["role"] == "candidate"]


def _tie_breaker(document: dict) -> dict[str, float]:
    """Return each candidate's zero-shot accuracy summed over suites, the
    selection's tie-breaker."""
    return document["selection"].get("tie_breaker", {})


def _decision(document: dict) -> str:
    selection = document["selection"]
    totals = selection["retrieval_totals"]
    winners = selection["winners"]
    if len(winners) == 1:
        winner = winners[0]
        total = totals.get(winner, 0)
        others = [name for name in selection["acceptable"] if name != winner]
        level = [name for name in others if totals.get(name, 0) == total]
        reason = "it passed every check"
        if level:
            reason += (
                f", its retrieval total ({total:.0f}) equals that of "
                f"{_text(', '.join(level))}, and its zero-shot accuracy is higher"
            )
        elif others:
            reason += (
                f" and has the highest retrieval total ({total:.0f}) of the "
                f"{len(selection['acceptable'])} acceptable candidates"
            )
        return (
            '<p class="modelqa-decision modelqa-ship" id="modelqa-decision">'
            f"Ship <b>{_text(winner)}</b>: {reason}.</p>"
        )
    if winners:
        names = ", ".join(f"<b>{_text(name)}</b>" for name in winners)
        return (
            '<p class="modelqa-decision modelqa-tie" id="modelqa-decision">'
            f"Tie between {names}: each passed every check, with the same retrieval "
            f"total ({totals.get(winners[0], 0):.0f}) and the same zero-shot "
            "accuracy. Choose between them on other grounds, such as the galleries "
            "below.</p>"
        )
    if not _candidates(document):
        reason = "no candidate was given"
    elif selection["rejected"]:
        reason = "every evaluated candidate failed at least one check"
    else:
        reason = "no candidate was evaluated"
    return (
        '<p class="modelqa-decision modelqa-none" id="modelqa-decision">'
        f"Ship none: {reason}.</p>"
    )


def selection_section(document: dict) -> str:
    """Render the decision and a row per candidate with what it rests on."""
    selection = document["selection"]
    tie_breaker = _tie_breaker(document)
    rows = []
    for model in _candidates(document):
        label = model["label"]
        mine = [v for v in document["verdicts"] if v["candidate"] == label]
        passed = sum(1 for v in mine if v["passed"])
        failed = selection["rejected"].get(label, [])
        outcome = model_outcome(label, document)
        note = _text(model["error"]) if "error" in model else ""
        total = selection["retrieval_totals"].get(label, 0)
        accuracy = tie_breaker.get(label, 0.0)
        rows.append(
            f'<tr data-model="{_text(label)}" data-outcome="{outcome}" '
            f'data-retrieval-total="{_number(total)}" '
            f'data-zero-shot-accuracy="{_number(accuracy)}">'
            f'<th class="modelqa-name">{_text(label)}</th>'
            f'<td class="modelqa-name modelqa-outcome">{outcome}</td>'
            f"<td>{passed} / {len(mine)}</td>"
            f'<td class="modelqa-name">{_text(", ".join(failed)) or note}</td>'
            f"<td>{total:.0f}</td>"
            f"<td>{format_figure('zero_shot_accuracy', accuracy)}</td></tr>"
        )
    accuracy_title = "zero-shot accuracy"
    if len(document["suites"]) > 1:
        accuracy_title += ", summed over suites"
    return (
        "<h2>Which checkpoint to ship</h2>"
        + _decision(document)
        + '<table class="modelqa" id="modelqa-selection"><thead><tr>'
        '<th class="modelqa-name">candidate</th><th class="modelqa-name">outcome</th>'
        '<th>checks passed</th><th class="modelqa-name">failed checks</th>'
        '<th title="methods 1 to 4 summed over every suite">retrieval total</th>'
        f'<th title="the tie-breaker">{accuracy_title}</th></tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table>"
        "<p>A candidate is acceptable when it passes every check: each phase 1 and "
        "phase 2 figure meets its rule (by default, better than the baseline) and "
        "each benchmark stays within its tolerance. Among acceptable candidates the "
        "highest retrieval total wins, then the higher zero-shot accuracy. "
        "Candidates still equal are reported as a tie.</p>"
    )


# -- terminal summary ------------------------------------------------------------------

# Checks whose deltas the terminal summary shows, besides the retrieval total.
SUMMARY_CHECKS = ("zero_shot_accuracy", "rank_score")


def summary_lines(document: dict) -> list[str]:
    """Return one terminal line per candidate: outcome, checks passed, key deltas.

    The deltas are zero-shot accuracy and rank score per suite and the retrieval
    total over every suite, the figure that decides among acceptable candidates.
    A second, indented line lists a rejected candidate's failed checks.
    """
    single_suite = len(document["suites"]) == 1
    lines = []
    for model in _candidates(document):
        label = model["label"]
        mine = [v for v in document["verdicts"] if v["candidate"] == label]
        outcome = model_outcome(label, document)
        if not mine:
            reason = model.get("error", "no check ran")
            lines.append(f"{label}: NOT EVALUATED, {reason}")
            continue
        verdict = "REJECTED" if outcome == "rejected" else "ACCEPTABLE"
        if outcome in ("winner", "tied winner"):
            verdict += f" ({outcome})"
        passed = sum(1 for v in mine if v["passed"])
        deltas = []
        for check in SUMMARY_CHECKS:
            for v in mine:
                if v["check"] != check:
                    continue
                prefix = "" if single_suite else f"{v['details'].get('suite')} "
                delta = format_delta(check, v["delta"])
                deltas.append(f"{prefix}{figure_title(check)} {delta}")
        retrieval = [v for v in mine if METHOD.fullmatch(v["check"])]
        if retrieval:
            total = sum(v["delta"] for v in retrieval)
            deltas.append(f"retrieval total {format_delta('method_1', total)}")
        line = f"{label}: {verdict}, {passed}/{len(mine)} checks passed"
        lines.append(f"{line}; {', '.join(deltas)}" if deltas else line)
        failed = document["selection"]["rejected"].get(label)
        if failed:
            lines.append(f"  failed: {', '.join(failed)}")
    return lines


def junit_properties(document: dict) -> list[tuple[str, str]]:
    """Return the selection as JUnit XML testsuite properties.

    ``modelqa_winner`` names the winner, several names for a tie, or ``none``.
    ``modelqa_outcome_LABEL`` gives each candidate's outcome and
    ``modelqa_retrieval_total_LABEL`` the retrieval total the selection compared.
    """
    selection = document["selection"]
    properties = [("modelqa_winner", ", ".join(selection["winners"]) or "none")]
    for model in _candidates(document):
        label = model["label"]
        total = selection["retrieval_totals"].get(label, 0)
        properties.append((f"modelqa_outcome_{label}", model_outcome(label, document)))
        properties.append((f"modelqa_retrieval_total_{label}", f"{total:g}"))
    return properties


# -- header ----------------------------------------------------------------------------


def header_section(document: dict) -> str:
    """Render versions, machine, date, commit, models and suites with their hashes."""
    environment = document["environment"]
    run = [
        ("pytest-modelqa", environment.get("pytest_modelqa")),
        ("torch", environment.get("torch")),
        ("open_clip", environment.get("open_clip")),
        ("Python", environment.get("python")),
        ("machine", environment.get("machine")),
        ("date", environment.get("date")),
        ("commit", environment.get("commit") or "unknown"),
    ]
    run_rows = "".join(
        f'<tr><th class="modelqa-name">{name}</th>'
        f'<td class="modelqa-name" data-key="{name}">{_text(value)}</td></tr>'
        for name, value in run
    )
    model_rows = "".join(
        f'<tr data-model="{_text(model["label"])}">'
        f'<td class="modelqa-name">{_text(model["role"])}</td>'
        f'<th class="modelqa-name">{_text(model["label"])}</th>'
        f'<td class="modelqa-name"><code>{_text(model["spec"])}</code></td>'
        f'<td class="modelqa-name"><code>{_text(model.get("sha256", ""))}</code></td>'
        f"<td>{_text(model.get('epoch', ''))}</td></tr>"
        for model in document["models"]
    )
    suite_rows = "".join(
        f'<tr><th class="modelqa-name">{_text(suite["name"])}</th>'
        f'<td class="modelqa-name"><code>{_text(suite["path"])}</code></td>'
        f'<td class="modelqa-name">{_text(suite["catalog"]["name"])}</td>'
        f"<td>{suite['catalog']['items']}</td>"
        f'<td class="modelqa-name"><code>{_text(suite["catalog"]["sha256"])}</code>'
        "</td></tr>"
        for suite in document["suites"]
    )
    return (
        "<h2>Run</h2>"
        f'<table class="modelqa" id="modelqa-run"><tbody>{run_rows}</tbody></table>'
        '<table class="modelqa" id="modelqa-models"><thead><tr>'
        '<th class="modelqa-name">role</th><th class="modelqa-name">model</th>'
        '<th class="modelqa-name">spec</th><th class="modelqa-name">sha256</th>'
        f"<th>epoch</th></tr></thead><tbody>{model_rows}</tbody></table>"
        '<table class="modelqa" id="modelqa-suites"><thead><tr>'
        '<th class="modelqa-name">suite</th><th class="modelqa-name">path</th>'
        '<th class="modelqa-name">catalog</th><th>items</th>'
        '<th class="modelqa-name">catalog sha256</th></tr></thead>'
        f"<tbody>{suite_rows}</tbody></table>"
    )


def environment_rows(document: dict) -> dict:
    """Return pytest-metadata environment entries, values already escaped as HTML.

    pytest-html 4 inserts environment values into the page as HTML, so every value,
    and every key of a nested mapping, is escaped here.
    """
    environment = document["environment"]
    rows: dict = {
        "modelqa versions": {
            "pytest-modelqa": _text(environment.get("pytest_modelqa")),
            "torch": _text(environment.get("torch")),
            "open_clip": _text(environment.get("open_clip")),
        },
        "modelqa machine": _text(environment.get("machine")),
        "modelqa date": _text(environment.get("date")),
        "modelqa commit": _text(environment.get("commit") or "unknown"),
    }
    for model in document["models"]:
        if model["role"] == "baseline":
            key = "modelqa baseline"
        else:
            key = f"modelqa candidate {model['label']}"
        rows[key] = _text(f"{model['spec']} (sha256 {model.get('sha256', 'unknown')})")
    for suite in document["suites"]:
        catalog = suite["catalog"]
        rows[f"modelqa suite {suite['name']}"] = _text(
            f"{suite['path']}; catalog {catalog['name']}, {catalog['items']} items, "
            f"sha256 {catalog['sha256']}"
        )
    return rows


# -- analytics table -------------------------------------------------------------------


def _suite_verdicts(document: dict, suite: dict) -> list[dict]:
    # NOTE: verdicts name their suite by name alone, so two suites of one name share
    # their verdicts here.
    return [
        verdict
        for verdict in document["verdicts"]
        if verdict["details"].get("suite") == suite["name"]
    ]


def verdict_statistics(details: dict) -> dict:
    """Return a verdict's significance figures: its ``statistics`` entry if any.

    Keys read: ``interval`` ([low, high] of candidate minus baseline), ``confidence``,
    ``p_value``, ``p_value_two_sided`` and ``test``. Figures placed directly in
    `details` are read too.
    """
    return details.get("statistics") or details


def format_interval(name: str, low: float, high: float) -> str:
    if _is_count(name):
        return f"[{format_delta(name, low)}, {format_delta(name, high)}]"
    return f"[{100 * low:+.2f}, {100 * high:+.2f}] pp"


def _statistics(name: str, details: dict) -> tuple[list[str], str, str]:
    """Return a verdict's interval and p-value as text, data attributes and tooltip."""
    stats = verdict_statistics(details)
    parts: list[str] = []
    attributes = ""
    interval = stats.get("interval")
    if interval is not None:
        low, high = interval
        level = stats.get("confidence")
        prefix = f"{100 * level:g} %" if level else "interval"
        parts.append(f"{prefix} {format_interval(name, low, high)}")
        attributes += (
            f' data-interval-low="{_number(low)}" data-interval-high="{_number(high)}"'
        )
    p_value = stats.get("p_value")
    if p_value is not None:
        # The gate's tests report a one-sided p-value beside the two-sided one.
        sided = "one-sided p" if "p_value_two_sided" in stats else "p"
        shown = "< 0.001" if p_value < 0.001 else f"= {p_value:.3g}"
        parts.append(f"{sided} {shown}")
        attributes += f' data-p-value="{_number(p_value)}"'
    tooltip = str(stats.get("test", "")) if parts else ""
    return parts, attributes, tooltip


def _figure_cell(label: str, name: str, value, verdict: dict | None, base) -> str:
    attributes = f'data-model="{_text(label)}" data-figure="{_text(name)}"'
    if value is not None:
        attributes += f' data-value="{_number(value)}"'
    content = f'<span class="modelqa-value">{format_figure(name, value)}</span>'
    if label == "baseline":
        return f'<td class="modelqa-baseline" {attributes}>{content}</td>'
    if verdict is None:
        if value is not None and base is not None:
            content += (
                f'<span class="modelqa-delta">{format_delta(name, value - base)}</span>'
            )
        content += '<span class="modelqa-stats">not gated</span>'
        return f'<td class="modelqa-ungated" {attributes}>{content}</td>'
    outcome = "pass" if verdict["passed"] else "fail"
    attributes += (
        f' data-check="{_text(name)}" data-candidate="{_text(label)}"'
        f' data-observed="{_number(verdict["observed"])}"'
        f' data-baseline="{_number(verdict["baseline"])}"'
        f' data-delta="{_number(verdict["delta"])}" data-outcome="{outcome}"'
    )
    content += (
        f'<span class="modelqa-delta">{format_delta(name, verdict["delta"])} '
        f'<span class="modelqa-outcome">{outcome}</span></span>'
    )
    stats, stats_attributes, tooltip = _statistics(name, verdict["details"])
    for line in stats:
        title = f'title="{_text(tooltip)}"'
        content += f'<span class="modelqa-stats" {title}>{_text(line)}</span>'
    return (
        f'<td class="modelqa-{outcome}" {attributes}{stats_attributes}>{content}</td>'
    )


def _phase_titles(suite: dict) -> dict[str, str]:
    baseline = suite["figures"].get("baseline", {})
    reference = baseline or next(iter(suite["figures"].values()), {})
    n = (reference.get("classification") or {}).get("n")
    cases = (reference.get("retrieval") or {}).values()
    automated = sum(1 for case in cases if case["automated"])
    classification = "phase 1: classification"
    if n is not None:
        classification += f" ({n} test items)"
    return {
        "classification": classification,
        "retrieval": f"phase 2: retrieval totals ({automated} automated cases)",
        "benchmark": "phase 3: benchmarks",
    }


def _analytics_head(names: list[str], suite: dict, verdicts: list[dict]) -> str:
    phases: dict[str, list[str]] = {
        "classification": [],
        "retrieval": [],
        "benchmark": [],
    }
    for name in names:
        phases[figure_phase(name)].append(name)
    titles = _phase_titles(suite)
    groups = "".join(
        f'<th colspan="{len(members)}">{_text(titles[phase])}</th>'
        for phase, members in phases.items()
        if members
    )

    baseline = suite["figures"].get("baseline", {})
    rules = {verdict["check"]: verdict for verdict in verdicts}
    figure_cells, rule_cells = [], []
    for name in names:
        maximum = _figure_maximum(name, baseline, rules.get(name))
        suffix = f"<br><small>max {maximum:.0f}</small>" if maximum else ""
        tooltip = ""
        if match := METHOD.fullmatch(name):
            tooltip = METHOD_TITLES.get(int(match.group(1)), "")
        figure_cells.append(
            f'<th title="{_text(tooltip)}" data-figure="{_text(name)}">'
            f"{_text(figure_title(name))}{suffix}</th>"
        )
        rule = rules[name]["rule"]["text"] if name in rules else "not gated"
        rule_cells.append(f"<td><small>{_text(rule)}</small></td>")

    return (
        f'<thead><tr><th rowspan="2" class="modelqa-name">model</th>{groups}'
        '<th rowspan="2">checks passed</th><th rowspan="2" class="modelqa-name">'
        "outcome</th></tr>"
        f"<tr>{''.join(figure_cells)}</tr>"
        f'<tr class="modelqa-rules"><th class="modelqa-name">rule</th>'
        f"{''.join(rule_cells)}<td></td><td></td></tr></thead>"
    )


def _figure_maximum(name: str, baseline: dict, verdict: dict | None) -> float | None:
    if name == "rank_score":
        return (baseline.get("classification") or {}).get("rank_score_max")
    if verdict is not None:
        return verdict["details"].get("maximum")
    return None


def analytics_table(document: dict, suite: dict) -> str:
    """Render a suite's figures, a row per model and a column per figure."""
    verdicts = _suite_verdicts(document, suite)
    names = figure_names(suite, verdicts)
    by_key = {(v["candidate"], v["check"]): v for v in verdicts}
    baseline = suite["figures"].get("baseline", {})
    rows = []
    for model in document["models"]:
        label = model["label"]
        figures = suite["figures"].get(label)
        cells = []
        for name in names:
            value = None if figures is None else figure_value(figures, name)
            base = figure_value(baseline, name) if baseline else None
            cells.append(
                _figure_cell(label, name, value, by_key.get((label, name)), base)
            )
        if model["role"] == "baseline":
            passed_cell, outcome = "<td></td>", "baseline"
        else:
            mine = [v for v in verdicts if v["candidate"] == label]
            passed = sum(1 for v in mine if v["passed"])
            passed_cell = f"<td>{passed} / {len(mine)}</td>"
            outcome = model_outcome(label, document)
        marked = outcome in ("winner", "tied winner")
        name_class = "modelqa-name modelqa-winner" if marked else "modelqa-name"
        rows.append(
            f'<tr data-model="{_text(label)}" data-outcome="{outcome}">'
            f'<th class="{name_class}">{_text(label)}</th>{"".join(cells)}'
            f'{passed_cell}<td class="modelqa-name modelqa-outcome">{outcome}</td></tr>'
        )
    return (
        f'<table class="modelqa modelqa-analytics" data-suite="{_text(suite["name"])}">'
        f"{_analytics_head(names, suite, verdicts)}<tbody>{''.join(rows)}</tbody>"
        "</table>"
    )


# -- per-class table -------------------------------------------------------------------


def _class_rows(suite: dict) -> list[str]:
    """Return the classes in the baseline's order, then any others, then averages."""
    rows: list[str] = []
    for figures in suite["figures"].values():
        classification = figures.get("classification") or {}
        rows += [name for name in classification.get("classes", []) if name not in rows]
    return rows + list(AVERAGE_ROWS)


def class_table(document: dict, suite: dict) -> str:
    """Render precision, recall, F1 and support per class and model, and F1 deltas."""
    labels = [m["label"] for m in document["models"] if m["label"] in suite["figures"]]
    if not labels:
        return "<p>No model's figures were computed.</p>"
    reports = {
        label: (suite["figures"][label].get("classification") or {}).get("report", {})
        for label in labels
    }
    candidates = [label for label in labels if label != "baseline"]
    base_report = reports.get("baseline", {})

    head_models = "".join(
        f'<th colspan="{len(CLASS_METRICS)}">{_text(label)}</th>' for label in labels
    )
    head_metrics = "".join(
        "<th>precision</th><th>recall</th><th>F1</th><th>support</th>" for _ in labels
    )
    head_deltas = "".join(f"<th>{_text(label)}</th>" for label in candidates)
    delta_group = f'<th colspan="{len(candidates)}">F1 delta</th>' if candidates else ""

    rows = []
    for row in _class_rows(suite):
        cells = []
        for label in labels:
            entry = reports[label].get(row, {})
            for metric in CLASS_METRICS:
                cells.append(_class_cell(label, row, metric, entry.get(metric)))
        for label in candidates:
            f1 = reports[label].get(row, {}).get("f1-score")
            base = base_report.get(row, {}).get("f1-score")
            cells.append(_f1_delta_cell(label, row, f1, base))
        row_class = "modelqa-average" if row in AVERAGE_ROWS else "modelqa-class"
        rows.append(
            f'<tr class="{row_class}"><th class="modelqa-name">{_text(row)}</th>'
            f"{''.join(cells)}</tr>"
        )

    return (
        f'<table class="modelqa modelqa-classes" data-suite="{_text(suite["name"])}">'
        f'<thead><tr><th rowspan="2" class="modelqa-name">class</th>{head_models}'
        f"{delta_group}</tr><tr>{head_metrics}{head_deltas}</tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>" + _class_warnings(suite)
    )


def _class_cell(label: str, row: str, metric: str, value) -> str:
    attributes = (
        f'data-model="{_text(label)}" data-class="{_text(row)}" data-metric="{metric}"'
    )
    if value is None:
        return f"<td {attributes}></td>"
    formatted = f"{value:.0f}" if metric == "support" else f"{value:.3f}"
    return f'<td {attributes} data-value="{_number(value)}">{formatted}</td>'


def _f1_delta_cell(label: str, row: str, f1, base) -> str:
    attributes = f'data-model="{_text(label)}" data-class="{_text(row)}"'
    if f1 is None or base is None:
        return f'<td {attributes} data-metric="f1-delta"></td>'
    delta = f1 - base
    tone = ""
    if delta > 0:
        tone = "modelqa-pass"
    elif delta < 0:
        tone = "modelqa-fail"
    return (
        f'<td class="{tone}" {attributes} data-metric="f1-delta" '
        f'data-value="{_number(delta)}">{delta:+.3f}</td>'
    )


def _class_warnings(suite: dict) -> str:
    items = []
    for label, figures in suite["figures"].items():
        for warning in (figures.get("classification") or {}).get("warnings", []):
            items.append(f"<li>{_text(label)}: {_text(warning)}</li>")
    return f'<ul class="modelqa-warnings">{"".join(items)}</ul>' if items else ""


# -- plots -----------------------------------------------------------------------------


def _image(uri: str, alt: str, key: str) -> str:
    return f'<img src="{uri}" alt="{_text(alt)}" data-plot="{key}">'


def suite_plots(suite: dict) -> str:
    """Render a suite's top-K curves and benchmark bars as embedded PNGs."""
    curves = {}
    benchmarks: dict[str, dict[str, float]] = {}
    for label, figures in suite["figures"].items():
        curve = (figures.get("classification") or {}).get("top_k")
        if curve:
            curves[label] = curve
        for name, entry in (figures.get("benchmarks") or {}).items():
            benchmarks.setdefault(name, {})[label] = entry["accuracy"]
    images = []
    if curves:
        images.append(_image(plots.top_k_plot(curves), "top-K accuracy", "top-k"))
    if benchmarks:
        images.append(
            _image(plots.benchmark_plot(benchmarks), "benchmark accuracy", "benchmarks")
        )
    return f'<div class="modelqa-plots">{"".join(images)}</div>' if images else ""


def _history_groups(document: dict) -> list[tuple[list[dict], dict[str, float]]]:
    """Group models by training run: a history that is a prefix of another joins it.

    Each checkpoint of one run carries the history up to its own epoch, so the run is
    drawn once with every candidate's epoch marked.
    """
    models = [m for m in document["models"] if m.get("history")]
    models.sort(key=lambda m: len(m["history"]), reverse=True)
    groups: list[tuple[list[dict], dict[str, float]]] = []
    for model in models:
        history = model["history"]
        epoch = model.get("epoch")
        if not isinstance(epoch, int | float):
            epoch = history[-1].get("epoch") or len(history)
        for full, marks in groups:
            if full[: len(history)] == history:
                marks[model["label"]] = epoch
                break
        else:
            groups.append((history, {model["label"]: epoch}))
    return groups


def training_section(document: dict) -> str:
    """Render the training curves of every model whose entry carries a history."""
    images = []
    for history, marks in _history_groups(document):
        uri = plots.history_plot(history, marks=marks)
        if uri is not None:
            names = ", ".join(marks)
            images.append(
                f"<figure>{_image(uri, f'training curves of {names}', 'history')}"
                f"<figcaption>Training run of {_text(names)}; a dashed line marks "
                "the epoch each checkpoint was saved at.</figcaption></figure>"
            )
    if not images:
        return ""
    return f'<h2>Training curves</h2><div class="modelqa-plots">{"".join(images)}</div>'


# -- retrieval galleries ---------------------------------------------------------------


class Thumbnails:
    """Thumbnail data URIs by image path, each image read and downscaled once."""

    def __init__(self):
        self._uris: dict[str, str | None] = {}

    def html(self, path: str | None, alt: str) -> str:
        if path is None:
            return ""
        if path not in self._uris:
            self._uris[path] = plots.thumbnail(path)
        uri = self._uris[path]
        if uri is None:
            missing = f"image not readable: {_text(path)}"
            return f'<span class="modelqa-missing">{missing}</span>'
        return f'<img src="{uri}" alt="{_text(alt)}" title="{_text(path)}">'


def _judgement(ok: bool, aspect: str) -> str:
    tone, word = ("modelqa-ok", "ok") if ok else ("modelqa-wrong", "wrong")
    return f'<span class="{tone}">{aspect} {word}</span>'


def _result_figure(position: int, result: dict, thumbnails: Thumbnails) -> str:
    points = " ".join(
        str(_by_method(result["points"], method)) for method in RETRIEVAL_METHODS
    )
    return (
        f'<figure class="modelqa-result" data-id="{_text(result["id"])}" '
        f'data-category-ok="{str(result["category_ok"]).lower()}" '
        f'data-attribute-ok="{str(result["attribute_ok"]).lower()}">'
        f"{thumbnails.html(result['image'], result['id'])}"
        f"<figcaption>{position}. {_text(result['id'])}<br>"
        f"{_text(result['category'])} / {_text(result['attribute'])}<br>"
        f"{_judgement(result['category_ok'], 'category')}<br>"
        f"{_judgement(result['attribute_ok'], 'attribute')}<br>"
        f"points {points}</figcaption></figure>"
    )


def case_anchor(suite_name: str, case_id: str) -> str:
    """Return an element id for a case's gallery, unique within the page."""
    return escape(f"modelqa-case-{suite_name}-{case_id}".replace(" ", "_"))


def case_gallery(
    case_id: str,
    cases: dict[str, dict],
    thumbnails: Thumbnails,
    *,
    suite_name: str = "",
) -> str:
    """Render one case: the query, then each model's top results side by side.

    `cases` maps a model label to that model's entry for the case in the results
    document, the baseline first. With `suite_name`, the gallery gets the id that
    the case overview links to.
    """
    first = next(iter(cases.values()))
    if first["image"] is not None:
        query = thumbnails.html(first["image"], "query image") + _text(first["query"])
    else:
        query = f"<q>{_text(first['text'])}</q>"
    blocks = []
    for label, case in cases.items():
        totals = " · ".join(
            f"m{method} {_by_method(case['scores'], method)}"
            for method in RETRIEVAL_METHODS
        )
        results = "".join(
            _result_figure(position, result, thumbnails)
            for position, result in enumerate(case["results"], start=1)
        )
        blocks.append(
            f'<div class="modelqa-gallery-model" data-model="{_text(label)}">'
            f"<b>{_text(label)}</b>: {totals}"
            f'<div class="modelqa-thumbs">{results}</div></div>'
        )
    # Only the summary's galleries get an id: a row's gallery repeats the case.
    anchor = f' id="{case_anchor(suite_name, case_id)}"' if suite_name else ""
    return (
        f'<div class="modelqa-case" data-case="{_text(case_id)}"{anchor}>'
        f"<h4>case {_text(case_id)}</h4>"
        f'<p class="modelqa-query">{query}; expected {_text(first["category"])} / '
        f"{_text(first['attribute'])}; {first['matches']} matching products</p>"
        f'<div class="modelqa-gallery-row">{"".join(blocks)}</div></div>'
    )


def _cases_by_id(suite: dict, labels: list[str]) -> dict[str, dict[str, dict]]:
    cases: dict[str, dict[str, dict]] = {}
    for label in labels:
        figures = suite["figures"].get(label)
        for case_id, case in ((figures or {}).get("retrieval") or {}).items():
            cases.setdefault(case_id, {})[label] = case
    return cases


def _points_cell(label: str, case: dict, base: dict | None) -> str:
    scores = [_by_method(case["scores"], method) or 0 for method in RETRIEVAL_METHODS]
    text = " · ".join(str(score) for score in scores)
    tone = ""
    if base is not None and case is not base:
        delta = scores[0] - (_by_method(base["scores"], 1) or 0)
        if delta > 0:
            tone = "modelqa-pass"
        elif delta < 0:
            tone = "modelqa-fail"
    return (
        f'<td class="{tone}" data-model="{_text(label)}" '
        f'data-method-1="{scores[0]}">{text}</td>'
    )


def case_overview(suite: dict, labels: list[str]) -> str:
    """Render one row per automated case with each model's points for methods 1 to 4.

    A candidate's cell is green when its method 1 points beat the baseline's on that
    case and red when they fall short. Each case id links to its gallery.
    """
    shown = [label for label in labels if label in suite["figures"]]
    rows = []
    for case_id, cases in _cases_by_id(suite, shown).items():
        first = next(iter(cases.values()))
        if not first["automated"]:
            continue
        base = cases.get("baseline")
        cells = "".join(
            _points_cell(label, cases[label], base) if label in cases else "<td></td>"
            for label in shown
        )
        anchor = case_anchor(suite["name"], case_id)
        rows.append(
            f'<tr data-case="{_text(case_id)}"><th class="modelqa-name">'
            f'<a href="#{anchor}">{_text(case_id)}</a></th>'
            f'<td class="modelqa-name">{_text(first["query"])}</td>{cells}</tr>'
        )
    if not rows:
        return ""
    heads = "".join(f"<th>{_text(label)}</th>" for label in shown)
    return (
        "<p>Points per case for methods 1 to 4, in that order. A candidate's cell is "
        "green where its method 1 points beat the baseline's, red where they fall "
        "short. Each case links to its gallery below.</p>"
        '<table class="modelqa modelqa-overview"><thead><tr>'
        f'<th class="modelqa-name">case</th><th class="modelqa-name">query</th>{heads}'
        f"</tr></thead><tbody>{''.join(rows)}</tbody></table>"
    )


def galleries(document: dict, suite: dict, thumbnails: Thumbnails) -> str:
    """Render every automated case's gallery and list the cases left for review."""
    labels = [m["label"] for m in document["models"]]
    automated, manual = [], []
    for case_id, cases in _cases_by_id(suite, labels).items():
        first = next(iter(cases.values()))
        if first["automated"]:
            automated.append(
                case_gallery(case_id, cases, thumbnails, suite_name=suite["name"])
            )
        else:
            manual.append(
                f'<tr data-case="{_text(case_id)}"><th class="modelqa-name">'
                f"{_text(case_id)}</th>"
                f'<td class="modelqa-name">{_text(first["query"])}</td>'
                f'<td class="modelqa-name">{_text(first["category"])} / '
                f"{_text(first['attribute'])}</td><td>{first['matches']}</td></tr>"
            )
    html = case_overview(suite, labels) + "".join(automated)
    if manual:
        html += (
            "<h4>Cases for manual review</h4><p>Too few matching products in the "
            "gallery to score automatically; judge their results by eye.</p>"
            '<table class="modelqa modelqa-manual"><thead><tr>'
            '<th class="modelqa-name">case</th><th class="modelqa-name">query</th>'
            '<th class="modelqa-name">expected</th><th>matches</th></tr></thead>'
            f"<tbody>{''.join(manual)}</tbody></table>"
        )
    return html


# -- the page --------------------------------------------------------------------------


def render_report(document: dict) -> str:
    """Render the whole model comparison from a results document, as one HTML block."""
    thumbnails = Thumbnails()
    parts = [
        f"<style>{STYLE}</style>",
        selection_section(document),
        header_section(document),
        # Before the suites, whose galleries make the page long.
        training_section(document),
    ]
    for suite in document["suites"]:
        name = _text(suite["name"])
        parts += [
            f'<section class="modelqa-suite" data-suite="{name}">',
            f"<h2>Suite {name}: model analytics</h2>",
            "<p>Each candidate cell shows the figure, its difference from the "
            "baseline with the check's outcome and, where the gate computed them, "
            "the interval of that difference at the stated confidence and its "
            "p-value. Hover an interval for the test behind it.</p>",
            f'<div class="modelqa-scroll">{analytics_table(document, suite)}</div>',
            f"<h3>Per-class figures, {name}</h3>",
            "<details open><summary>precision, recall, F1 and support</summary>",
            f'<div class="modelqa-scroll">{class_table(document, suite)}</div>',
            "</details>",
            f"<h3>Plots, {name}</h3>",
            suite_plots(suite),
            f"<h3>Retrieval galleries, {name}</h3>",
            "<details open><summary>top results per case and model</summary>",
            "<p>Each result shows its position, product id, category / attribute, "
            "the judgement of each, and its points for methods 1 to 4.</p>",
            galleries(document, suite, thumbnails),
            "</details></section>",
        ]
    return f'<div class="modelqa-report" id="modelqa-comparison">{"".join(parts)}</div>'


class HtmlReport:
    """pytest-html hooks, registered only when pytest-html is active."""

    def __init__(self, config: pytest.Config):
        self.config = config
        # (suite path, case id, candidate label, extra) for every case item's gallery,
        # filled in once the results document exists.
        self._case_extras: list[tuple[str, str, str, dict]] = []

    @pytest.hookimpl
    def pytest_html_report_title(self, report):
        state = self.config.stash.get(state_key, None)
        if state is not None and state.candidates:
            report.title = f"Model acceptance: {', '.join(state.candidates)}"

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(self, item, call):
        report = yield
        case = getattr(item, "case", None)
        label = getattr(item, "label", None)
        # Only the process that writes the report fills galleries in: not an xdist
        # worker, and not a session without --html.
        # NOTE: under pytest-xdist the rows therefore carry no gallery, because the
        # controller never runs this hook. The summary's galleries are complete.
        writes = self.config.getoption("htmlpath", None) and not is_worker(self.config)
        if writes and call.when == "call" and case is not None and label is not None:
            from pytest_html import extras

            # NOTE: pytest-html 4.2 keeps this same dict until it writes the report at
            # session end, so its content is filled in then. A pytest-html that
            # copied extras earlier would show an empty gallery.
            extra = extras.html("")
            report.extras = [*getattr(report, "extras", []), extra]
            self._case_extras.append((str(item.path), str(case.id), label, extra))
        return report

    @pytest.hookimpl
    def pytest_html_results_table_row(self, report, cells):
        # pytest-html 4.2 inserts the test id as HTML, and ids carry candidate labels
        # taken from file names, so escape them.
        test_id = report.nodeid
        if report.when != "call":
            test_id += f"::{report.when}"
        raw = f'<td class="col-testId">{test_id}</td>'
        for index, cell in enumerate(cells):
            if cell == raw:
                cells[index] = f'<td class="col-testId">{escape(test_id)}</td>'

    @pytest.hookimpl
    def pytest_html_results_summary(self, prefix, summary, postfix, session):
        document = session_results(self.config)
        if document is None:
            return
        self._add_environment(document)
        self._fill_case_extras(document)
        prefix.append(render_report(document))

    def _add_environment(self, document: dict) -> None:
        try:
            from pytest_metadata.plugin import metadata_key
        except ImportError:  # pytest-metadata < 3 keeps no stash entry
            return
        metadata = self.config.stash.get(metadata_key, None)
        if metadata is None:
            return
        # pytest-html redacts matching keys at session start, before these exist.
        redact = self.config.getini("environment_table_redact_list")
        for key, value in environment_rows(document).items():
            if any(re.match(pattern, key) for pattern in redact):
                value = "\u2593" * len(str(value))
            metadata[key] = value

    def _fill_case_extras(self, document: dict) -> None:
        suites = {suite["path"]: suite for suite in document["suites"]}
        thumbnails = Thumbnails()
        for path, case_id, label, extra in self._case_extras:
            suite = suites.get(path)
            if suite is None:
                continue
            cases = _cases_by_id(suite, ["baseline", label]).get(case_id, {})
            if cases:
                extra["content"] = case_gallery(case_id, cases, thumbnails)
