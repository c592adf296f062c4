"""config/grafana-dashboard.json queries only metrics that mailbridge exports.

The metric names are read out of each panel's PromQL (strings, label matchers, grouping
clauses, ranges and function calls removed) and compared with the names the Metrics registry
exposes, suffixes included (`_total` for counters, `_bucket`/`_sum`/`_count` for histograms).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from mailbridge.metrics import Metrics
from mailbridge.storage import open_store
from tests.env import REPO

DASHBOARD = REPO / "config" / "grafana-dashboard.json"
KEYWORDS = frozenset(
    {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset"}
    | {"and", "or", "unless", "le", "inf", "nan"}
)
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}


def metric_names(expr: str) -> set[str]:
    """The metric selectors of one PromQL expression."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\b(?:by|without|on|ignoring)\s*\([^)]*\)", "", expr)  # grouping labels
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # range selectors
    expr = re.sub(r"\boffset\s+-?[0-9a-z]+", "", expr)  # offset durations
    names = set()
    for match in re.finditer(r"(?<![\w.])[A-Za-z_:][A-Za-z0-9_:]*", expr):
        name = match.group()
        called = expr[match.end() :].lstrip().startswith("(")
        if not called and name.lower() not in KEYWORDS:
            names.add(name)
    return names


def queried() -> dict[str, set[str]]:
    board = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return {
        f"{panel['title']} / {target['refId']}": metric_names(target["expr"])
        for panel in board["panels"]
        for target in panel["targets"]
    }


@pytest.fixture
def exported(tmp_path: Path) -> set[str]:
    store = open_store(f"sqlite:///{tmp_path}/m.db")
    try:
        families = Metrics(store).registry.collect()
        return {f.name + suffix for f in families for suffix in SUFFIXES[f.type]}
    finally:
        store.close()


def test_the_parser_finds_metric_names_and_nothing_else() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (le, mailbox) (rate(a_bucket{x="b_c"}[5m])))'
        " / on (mailbox) group_left b_total offset 1h"
    )
    assert metric_names(expr) == {"a_bucket", "b_total"}


def test_every_metric_the_dashboard_queries_is_exported(exported: set[str]) -> None:
    panels = queried()
    assert len(panels) >= 10
    for where, names in panels.items():
        assert names, f"{where}: no metric in the query"
        missing = names - exported
        assert not missing, f"{where}: {sorted(missing)} not exported by mailbridge/metrics.py"


def test_the_dashboard_covers_webhooks_and_the_outbox() -> None:
    names = set().union(*queried().values())
    assert {"mailbridge_webhook_deliveries_total", "mailbridge_outbox"} <= names
