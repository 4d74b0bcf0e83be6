"""The model comparison in pytest-html's report: built from gate verdicts alone."""

from __future__ import annotations

from html import escape

import pytest

from pytest_modelqa.gate import Verdict, select_models
from pytest_modelqa.state import state_key


def _format(value: float, check: str) -> str:
    if check.startswith(("method_", "rank_score")):
        return f"{value:.0f}"
    return f"{value:.4f}"


def comparison_table(verdicts: list[Verdict], candidates: list[str]) -> str:
    """Render the baseline and every candidate as one table, a row per check."""
    checks: list[str] = []
    for verdict in verdicts:
        if verdict.check not in checks:
            checks.append(verdict.check)
    by_key = {(v.check, v.candidate): v for v in verdicts}
    shown = [name for name in candidates if any(v.candidate == name for v in verdicts)]
    selection = select_models(verdicts, shown)
    header = "".join(f"<th>{escape(name)}</th>" for name in shown)
    rows = []
    for check in checks:
        first = next(v for v in verdicts if v.check == check)
        cells = [
            f"<td>{escape(check)}</td>",
            f"<td>{escape(first.phase)}</td>",
            f"<td>{escape(first.rule.describe())}</td>",
            f'<td class="modelqa-baseline">{_format(first.baseline, check)}</td>',
        ]
        for name in shown:
            verdict = by_key.get((check, name))
            if verdict is None:
                cells.append("<td>not run</td>")
                continue
            outcome = "pass" if verdict.passed else "fail"
            cells.append(
                f'<td class="modelqa-{outcome}" data-check="{escape(check)}" '
                f'data-candidate="{escape(name)}" data-observed="{verdict.observed!r}">'
                f"{_format(verdict.observed, check)} "
                f"({_format(verdict.delta, check) if verdict.delta < 0 else '+' + _format(verdict.delta, check)}, "
                f"{outcome})</td>"
            )
        rows.append(f"<tr>{''.join(cells)}</tr>")
    verdict_cells = []
    for name in shown:
        if name in selection.winners:
            label = "winner" if len(selection.winners) == 1 else "tied winner"
        elif name in selection.acceptable:
            label = "acceptable"
        else:
            label = "rejected"
        verdict_cells.append(f'<td class="modelqa-verdict">{label}</td>')
    rows.append(
        '<tr><td colspan="4"><b>verdict</b></td>' + "".join(verdict_cells) + "</tr>"
    )
    return (
        '<h2>Model comparison</h2><table id="modelqa-comparison" class="modelqa">'
        "<thead><tr><th>check</th><th>phase</th><th>rule</th><th>baseline</th>"
        f"{header}</tr></thead><tbody>{''.join(rows)}</tbody></table>"
        "<style>table.modelqa{border-collapse:collapse;margin:1em 0}"
        "table.modelqa td,table.modelqa th{border:1px solid #ccc;padding:2px 6px}"
        ".modelqa-pass{background:#e3f5e1}.modelqa-fail{background:#fbe3e3}</style>"
    )


class HtmlReport:
    """pytest-html hooks, registered only when pytest-html is active."""

    def __init__(self, config: pytest.Config):
        self.config = config

    @pytest.hookimpl
    def pytest_html_results_summary(self, prefix, summary, postfix, session):
        state = self.config.stash.get(state_key, None)
        if state is None or not state.verdicts:
            return
        prefix.append(comparison_table(state.verdicts, list(state.candidates)))
