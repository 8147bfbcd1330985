"""The Grafana dashboard's queries, parsed as PromQL, checked against what ``/metrics`` exports.

``dashboard_queries`` gives every panel target's expression and every template variable's
``label_values(selector, label)`` (Grafana's own variables substituted, so each parses as
PromQL); ``check_queries`` parses each with ``promql_parser`` (the Rust parser Prometheus-
compatible databases use) and checks every metric it selects, every label it matches on and
every label it aggregates by against the samples of a real exposition.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import promql_parser
from prometheus_client.parser import text_string_to_metric_families

GRAFANA_DASHBOARD = Path(__file__).resolve().parents[2] / "cluster" / "grafana" / "ttdist.json"
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h"}
LABEL_VALUES = re.compile(r"^label_values\((?P<expr>.+),\s*(?P<label>\w+)\)$")


def dashboard_queries(path: Path = GRAFANA_DASHBOARD) -> list[tuple[str, str, str | None]]:
    """(where, PromQL, the label a ``label_values`` variable reads, else None) for every query."""
    dashboard = json.loads(path.read_text())
    out = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            out.append((f"panel {panel['title']!r} {target['refId']}", _substituted(target["expr"]), None))
    for var in dashboard["templating"]["list"]:
        if var["type"] == "query":
            match = LABEL_VALUES.match(var["query"]["query"])
            assert match, f"variable {var['name']}: not label_values(selector, label): {var['query']['query']}"
            out.append((f"variable {var['name']}", _substituted(match["expr"]), match["label"]))
    return out


def _substituted(expr: str) -> str:
    for name, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(name, value)
    return expr


def exported_labels(metrics_text: str) -> dict[str, set[str]]:
    """{sample name: every label name its samples carry} of a Prometheus text exposition."""
    out: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            out.setdefault(sample.name, set()).update(sample.labels)
    return out


def _walk(node, selectors: list, groupings: list) -> None:
    """Every vector selector below ``node``, and every aggregation's ``by`` labels with the
    selectors it aggregates."""
    if isinstance(node, promql_parser.VectorSelector):
        selectors.append(node)
    elif isinstance(node, promql_parser.MatrixSelector):
        selectors.append(node.vector_selector)
    elif isinstance(node, promql_parser.AggregateExpr):
        inner: list = []
        _walk(node.expr, inner, groupings)
        if node.modifier is not None and node.modifier.type == promql_parser.AggModifierType.By:
            groupings.append((list(node.modifier.labels), inner))
        selectors.extend(inner)
    elif isinstance(node, promql_parser.Call):
        for arg in node.args:
            _walk(arg, selectors, groupings)
    elif isinstance(node, promql_parser.BinaryExpr):
        _walk(node.lhs, selectors, groupings)
        _walk(node.rhs, selectors, groupings)
    elif isinstance(node, (promql_parser.ParenExpr, promql_parser.UnaryExpr, promql_parser.SubqueryExpr)):
        _walk(node.expr, selectors, groupings)


def check_queries(queries: list[tuple[str, str, str | None]], exported: dict[str, set[str]]) -> set[str]:
    """The metric names the queries use; fails naming the query whose metric, matcher label or
    grouping label the exposition does not have."""
    used: set[str] = set()
    for where, expr, label in queries:
        selectors: list = []
        groupings: list = []
        _walk(promql_parser.parse(expr), selectors, groupings)
        assert selectors, f"{where}: selects no metric: {expr}"
        for selector in selectors:
            name = selector.name
            assert name in exported, f"{where}: {name} is not exported by /metrics (it has {sorted(exported)})"
            used.add(name)
            for matcher in selector.matchers.matchers:
                assert matcher.name in exported[name], f"{where}: {name} has no label {matcher.name!r}"
        for labels, inner in groupings:
            have = set().union(*(exported[s.name] for s in inner))
            missing = set(labels) - have
            assert not missing, f"{where}: aggregates by {sorted(missing)}, which {[s.name for s in inner]} lack"
        if label is not None:
            assert all(label in exported[s.name] for s in selectors), f"{where}: no label {label!r}"
    return used
