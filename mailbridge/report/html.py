"""`mailbridge report --html FILE`: the report as one self-contained page.

Everything the page needs is inside it: plotly.js (shipped by the `plotly` package, inlined once),
the styles, and the report's JSON itself (`<script id="report-data">`), from which every chart
and figure on the page is drawn. It opens offline, from a mail attachment or a file share.
Plotly, not Vega-Lite: its one pure-Python wheel carries the JS it needs (Vega's runtime comes
to Python only inside vl-convert's native binary) and it draws the status flow as a Sankey
diagram, which Vega-Lite cannot; the price is a page of about 5 MB.
"""

from __future__ import annotations

import html
import json
from typing import Any

from mailbridge.report.stats import HISTOGRAM_BUCKETS
from mailbridge.report.text import human_duration

HOUR = 3600.0
_PALETTE = ("#4c78a8", "#f58518", "#54a24b", "#e45756", "#72b7b2", "#b279a2", "#ff9da6")
_LAYOUT: dict[str, Any] = {
    "margin": {"l": 60, "r": 20, "t": 10, "b": 50},
    "height": 300,
    "paper_bgcolor": "white",
    "plot_bgcolor": "white",
    "font": {"family": "system-ui, sans-serif", "size": 12},
    "legend": {"orientation": "h", "y": -0.25},
}
_CONFIG = {"displaylogo": False, "responsive": True, "modeBarButtonsToRemove": ["toImage"]}


def render_html(report: dict[str, Any]) -> str:
    """The page for `report` (the dict `build_report` returns)."""
    from plotly.offline import get_plotlyjs

    charts = [
        ("created", "Tickets created per day, by queue", _created(report)),
        ("status", "Tickets per status now", _status(report)),
        ("first-response", "First response time, by queue", _delays(report, "first_response")),
        ("resolution", "Resolution time, by queue", _delays(report, "resolution")),
        ("time-in-status", "Mean time in each status per ticket (hours)", _time(report)),
        ("flow", "Flow between statuses", _flow(report)),
    ]
    sections = [_section(cid, title, fig) for cid, title, fig in charts]
    sections.append(_sla(report))
    data = json.dumps(report, ensure_ascii=False).replace("</", "<\\/")
    figures = json.dumps({cid: fig for cid, _, fig in charts if fig}).replace("</", "<\\/")
    return _PAGE.format(
        title=html.escape(_period(report)),
        summary=_summary(report),
        sections="\n".join(sections),
        plotly=get_plotlyjs(),
        data=data,
        figures=figures,
        config=json.dumps(_CONFIG),
    )


# --- figures (plain plotly JSON: data + layout) ----------------------------------------------


def _figure(data: list[dict[str, Any]], **layout: Any) -> dict[str, Any]:
    return {"data": data, "layout": _LAYOUT | layout}


def _created(report: dict[str, Any]) -> dict[str, Any] | None:
    days = report["created_per_day"]
    if not days:
        return None
    queues = sorted({q for counts in days.values() for q in counts})
    traces = [
        {
            "type": "bar",
            "name": q,
            "x": list(days),
            "y": [counts.get(q, 0) for counts in days.values()],
            "marker": {"color": _PALETTE[i % len(_PALETTE)]},
        }
        for i, q in enumerate(queues)
    ]
    return _figure(
        traces,
        barmode="stack",
        showlegend=True,  # the queue's name, also while there is only one
        xaxis={"type": "date"},
        yaxis={"title": "tickets"},
    )


def _status(report: dict[str, Any]) -> dict[str, Any]:
    by_status = report["tickets"]["by_status"]
    return _figure(
        [
            {
                "type": "bar",
                "x": list(by_status),
                "y": list(by_status.values()),
                "text": list(by_status.values()),
                "textposition": "auto",
                "marker": {"color": _PALETTE[0]},
            }
        ],
        yaxis={"title": "tickets"},
    )


def _delays(report: dict[str, Any], key: str) -> dict[str, Any] | None:
    queues = report["queues"]
    if not any(q[key]["count"] for q in queues.values()):
        return None
    traces = [
        {
            "type": "bar",
            "name": f"{name} (p50 {human_duration(q[key]['p50'])}, p90 {human_duration(q[key]['p90'])})",
            "x": [b["bucket"] for b in q[key]["histogram"]],
            "y": [b["count"] for b in q[key]["histogram"]],
            "marker": {"color": _PALETTE[i % len(_PALETTE)]},
        }
        for i, (name, q) in enumerate(queues.items())
    ]
    buckets = [label for _, label in HISTOGRAM_BUCKETS]
    return _figure(
        traces,
        barmode="group",
        showlegend=True,
        xaxis={"categoryorder": "array", "categoryarray": buckets},
        yaxis={"title": "tickets"},
    )


def _time(report: dict[str, Any]) -> dict[str, Any] | None:
    spent = {s: d for s, d in report["time_in_status"].items() if d["tickets"]}
    if not spent:
        return None
    return _figure(
        [
            {
                "type": "bar",
                "orientation": "h",
                "y": list(spent),
                "x": [round((d["mean_seconds"] or 0) / HOUR, 2) for d in spent.values()],
                "text": [human_duration(d["mean_seconds"]) for d in spent.values()],
                "textposition": "auto",
                "customdata": [d["tickets"] for d in spent.values()],
                "hovertemplate": "%{y}: %{text} per ticket, %{customdata} tickets<extra></extra>",
                "marker": {"color": _PALETTE[2]},
            }
        ],
        xaxis={"title": "hours"},
        yaxis={"autorange": "reversed"},
    )


def _flow(report: dict[str, Any]) -> dict[str, Any] | None:
    """A Sankey diagram from each status (left) to the status it changed to (right): status
    changes run in cycles (open -> answered -> open), which one column per status cannot show."""
    moves = report["transitions"]
    if not moves:
        return None
    sources = sorted({m["from"] or "(created)" for m in moves})
    targets = sorted({m["to"] for m in moves})
    labels = [*sources, *(f"→ {t}" for t in targets)]
    return _figure(
        [
            {
                "type": "sankey",
                "arrangement": "snap",
                "node": {"label": labels, "pad": 14, "color": _PALETTE[0]},
                "link": {
                    "source": [sources.index(m["from"] or "(created)") for m in moves],
                    "target": [len(sources) + targets.index(m["to"]) for m in moves],
                    "value": [m["count"] for m in moves],
                },
            }
        ],
        height=360,
    )


# --- HTML ----------------------------------------------------------------------------------


def _period(report: dict[str, Any]) -> str:
    since, until = report["period"]["since"], report["period"]["until"]
    if since or until:
        return f"mailbridge report, {since or 'the start'} to {until or report['generated_at']}"
    return f"mailbridge report as of {report['generated_at']}"


def _summary(report: dict[str, Any]) -> str:
    reopen = report["reopen"]
    rate = "-" if reopen["rate"] is None else f"{reopen['rate']:.1%}"
    cards = [
        ("total-tickets", "tickets", str(report["tickets"]["total"])),
        (
            "first-response-p50",
            "first response, median",
            human_duration(report["first_response"]["p50"]),
        ),
        ("resolution-p50", "resolution, median", human_duration(report["resolution"]["p50"])),
        ("reopen-rate", "reopen rate", rate),
    ]
    return "\n".join(
        f'<div class="card"><div class="figure" id="{cid}">{html.escape(value)}</div>'
        f'<div class="label">{html.escape(label)}</div></div>'
        for cid, label, value in cards
    )


def _section(cid: str, title: str, figure: dict[str, Any] | None) -> str:
    body = (
        f'<div class="chart" id="chart-{cid}"></div>'
        if figure
        else '<p class="empty">No data in this period.</p>'
    )
    return f"<section><h2>{html.escape(title)}</h2>{body}</section>"


def _sla(report: dict[str, Any]) -> str:
    sla = report["sla"]
    if not sla["configured"]:
        body = (
            '<p class="empty" id="sla-empty">No SLA configured: met and breached tickets '
            "appear here once <code>[[sla]]</code> targets exist.</p>"
        )
    else:
        rows = "".join(
            f"<tr><td>{html.escape(q)}</td><td>{v['met']}</td><td>{v['breached']}</td>"
            f"<td>{'-' if v['rate'] is None else format(v['rate'], '.1%')}</td></tr>"
            for q, v in sla["queues"].items()
        )
        body = (
            f'<p id="sla-total">met {sla["met"]}, breached {sla["breached"]}</p>'
            '<table id="sla-queues"><tr><th>queue</th><th>met</th><th>breached</th>'
            f"<th>rate</th></tr>{rows}</table>"
        )
    return f"<section><h2>SLA met / breached</h2>{body}</section>"


_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 0 auto; max-width: 1100px; padding: 1em 2em;
       color: #222; background: #f6f7f9; }}
h1 {{ font-size: 1.4em; font-weight: 600; }}
h2 {{ font-size: 1.05em; font-weight: 600; margin: 0 0 .5em; }}
.cards {{ display: flex; gap: 1em; flex-wrap: wrap; }}
.card {{ background: white; border-radius: 6px; padding: .8em 1.2em; min-width: 10em;
        box-shadow: 0 1px 2px rgba(0,0,0,.08); }}
.figure {{ font-size: 1.8em; font-weight: 600; }}
.label {{ color: #666; font-size: .9em; }}
.grid {{ display: grid; grid-template-columns: 1fr 1fr; gap: 1em; margin-top: 1em; }}
section {{ background: white; border-radius: 6px; padding: 1em; box-shadow: 0 1px 2px rgba(0,0,0,.08); }}
.empty {{ color: #777; font-style: italic; }}
@media (max-width: 800px) {{ .grid {{ grid-template-columns: 1fr; }} }}
</style>
</head>
<body>
<h1>{title}</h1>
<div class="cards">
{summary}
</div>
<div class="grid">
{sections}
</div>
<script>{plotly}</script>
<script type="application/json" id="report-data">{data}</script>
<script type="application/json" id="report-figures">{figures}</script>
<script>
const figures = JSON.parse(document.getElementById("report-figures").textContent);
for (const [id, figure] of Object.entries(figures)) {{
  Plotly.newPlot("chart-" + id, figure.data, figure.layout, {config});
}}
</script>
</body>
</html>
"""
