"""``follow-engine report --html FILE``: the report as one self-contained page.

The page holds everything it shows: inline CSS and an inline SVG picture, no script, no font,
no request to any network, so it opens anywhere and can be mailed. The picture has two charts
on one time axis, a slot per second: outcomes per second (each job's last line, by its
``finished_at``), and requests per key per second (every ``sent_at`` of each last line) under
the API's limit, drawn as a line, so that a key over it shows at a glance. Stretches of more
than ``GAP`` idle seconds (between the firings of a schedule, say) are cut out and marked.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from datetime import datetime, timezone
from html import escape
from pathlib import Path

from engine.campaign_report import TABLE_TITLES, CampaignReport, epoch
from engine.progress import duration
from engine.report import AMBIGUOUS_MEANS, Row, cell, job_rows

#: Idle seconds beyond which the time axis is cut.
GAP = 5
#: Width of the plot, in pixels, that a short campaign fills; a long one scrolls.
PLOT_WIDTH = 960
CHART_HEIGHT = 160
LEFT, TOP, BOTTOM = 48, 14, 34
#: Keys drawn one by one, the busiest first; every key is in the "busiest key" bars.
MAX_KEY_LINES = 12
OK, FAILED, BUSIEST = "#59a14f", "#e15759", "#c5d3e3"
COLOURS = ("#4e79a7", "#f28e2b", "#76b7b2", "#59a14f", "#edc948", "#b07aa1",
           "#ff9da7", "#9c755f", "#bab0ac", "#86bcb6", "#d37295", "#a0cbe8")  # fmt: skip
STYLE = """
body{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:1100px;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.4em 0 1.4em}td,th{border:1px solid #ccc;padding:2px 8px}
th{background:#f3f3f3;text-align:left}.pic{overflow-x:auto}.note{color:#555}
svg text{font:11px system-ui,sans-serif;fill:#444}
"""


def write_page(report: CampaignReport, path: Path) -> None:
    path.write_text(page(report), encoding="utf-8")


def page(report: CampaignReport) -> str:
    stats = report.stats
    title = f"follow-engine report: {report.path.name}"
    parts = [
        f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{escape(title)}</title>",
        f"<style>{STYLE}</style></head><body><h1>{escape(title)}</h1>",
        f"<p>{len(report.results)} jobs (each job's last line): <b>{stats.ok} ok</b>, "
        f"<b>{stats.failed} failed</b>; {stats.attempts} attempts ({stats.retries} retries).",
    ]
    if stats.ambiguous:
        ok = stats.ambiguous - stats.ambiguous_failed
        parts.append(
            f" {stats.ambiguous} ambiguous ({ok} ok, {stats.ambiguous_failed} failed). "
            f"{escape(AMBIGUOUS_MEANS)} Those that ended ok need nothing; check those that "
            "failed on XT before sending them again."
        )
    parts.append("</p>")
    parts += picture(report)
    for name, rows in report.tables().items():
        parts.append(table(TABLE_TITLES[name], rows))
    listed = [r for r in report.results if r.status == "failed" or r.ambiguous]
    parts.append(table(f"failed or ambiguous jobs: {len(listed)}", job_rows(listed)))
    parts.append("</body></html>\n")
    return "".join(parts)


def table(title: str, rows: Sequence[Row]) -> str:
    if not rows:
        return f"<h2>{escape(title)}</h2><p class=note>none</p>"
    head = "".join(f"<th>{escape(name.replace('_', ' '))}</th>" for name in rows[0])
    body = "".join(
        "<tr>" + "".join(f"<td>{escape(cell(v))}</td>" for v in row.values()) + "</tr>"
        for row in rows
    )
    return f"<h2>{escape(title)}</h2><table><tr>{head}</tr>{body}</table>"


class Timeline:
    """Seconds with something in them, as x positions: a slot each, idle stretches cut."""

    def __init__(self, seconds: Iterable[int]) -> None:
        active = sorted(set(seconds))
        self.slots: list[int | None] = []  # a second, or None for a cut
        #: Idle seconds cut out, by the slot that marks them.
        self.cuts: dict[int, int] = {}
        for second in active:
            last = self.slots[-1] if self.slots else None
            if last is not None and second - last > GAP:
                self.cuts[len(self.slots)] = second - last - 1
                self.slots.append(None)
            elif last is not None:
                self.slots.extend(range(last + 1, second))
            self.slots.append(second)
        self.width = max(2.0, min(80.0, PLOT_WIDTH / max(1, len(self.slots))))
        self.index = {s: i for i, s in enumerate(self.slots) if s is not None}

    def x(self, second: int) -> float:
        return LEFT + self.index[second] * self.width


def picture(report: CampaignReport) -> list[str]:
    finished = [(t, r) for r in report.results if (t := epoch(r.finished_at)) is not None]
    sends = report.sends
    seconds = [int(t) for t, _ in finished] + [int(t) for ts in sends.values() for t in ts]
    if not seconds:
        return ["<p class=note>No times recorded: nothing to draw.</p>"]
    line = Timeline(seconds)
    ok = Counter(int(t) for t, r in finished if r.status == "ok")
    failed = Counter(int(t) for t, r in finished if r.status == "failed")
    per_key = {key: Counter(int(t) for t in times) for key, times in sends.items()}
    busiest = report.busiest()
    words = f"limit {report.limit_words()}"
    if busiest is not None:
        words += f"; the most any key sent within one second: {busiest[1]} ({busiest[0]})"
    return [
        "<h2>The campaign over time</h2>",
        f"<p class=note>Each slot is one second (UTC); idle stretches over {GAP} s are cut "
        f"(marked ⋯). {escape(words)}.</p><div class=pic>",
        "<h3>Jobs finished per second</h3>",
        _outcomes_chart(line, ok, failed),
        f"<h3>Requests per second {_scope(report.api.per_ip)}, against the limit</h3>",
        _requests_chart(line, per_key, report.api.rate_limit, report.api.per_ip),
        "</div>",
    ]


def _svg(line: Timeline, title: str, top: float, legend: list[tuple[str, str]]) -> list[str]:
    """The frame of one chart: axes, y ticks up to ``top``, time labels, cuts, legend."""
    legend_width = sum(30 + 7 * len(name) for _, name in legend)
    width = LEFT + max(len(line.slots) * line.width, legend_width) + 20
    height = TOP + CHART_HEIGHT + BOTTOM
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{height}" '
        f'role="img" aria-label="{escape(title)}"><title>{escape(title)}</title>',
        f'<line x1="{LEFT}" y1="{TOP + CHART_HEIGHT}" x2="{width - 20:.0f}" '
        f'y2="{TOP + CHART_HEIGHT}" stroke="#999"/>',
    ]
    step = _tick_step(top)
    for value in range(0, math.floor(top) + 1, step):
        y = _y(value, top)
        out.append(
            f'<line x1="{LEFT}" y1="{y:.1f}" x2="{width - 20:.0f}" y2="{y:.1f}" stroke="#eee"/>'
            f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">{value}</text>'
        )
    last_label = -1e9
    for i, second in enumerate(line.slots):
        x = LEFT + i * line.width
        if second is None:
            idle = f"{duration(line.cuts[i])} without a request or an outcome"
            out.append(
                f'<text x="{x + line.width / 2:.1f}" y="{TOP + 12}" text-anchor="middle">⋯'
                f"<title>{idle}</title></text>"
            )
            last_label = -1e9
        elif x - last_label >= 90:
            when = datetime.fromtimestamp(second, timezone.utc).strftime("%H:%M:%SZ")
            out.append(f'<text x="{x:.1f}" y="{TOP + CHART_HEIGHT + 16}">{when}</text>')
            last_label = x
    x = LEFT
    for colour, name in legend:
        out.append(
            f'<rect x="{x}" y="{height - 12}" width="10" height="10" fill="{colour}"/>'
            f'<text x="{x + 14}" y="{height - 3}">{escape(name)}</text>'
        )
        x += 30 + 7 * len(name)
    return out


def _outcomes_chart(line: Timeline, ok: Counter[int], failed: Counter[int]) -> str:
    top = max(1, max((ok[s] + failed[s] for s in line.index), default=1))
    series = [(ok, OK, "ok"), (failed, FAILED, "failed")]
    out = _svg(line, "jobs finished per second", top, [(OK, "ok"), (FAILED, "failed")])
    return "".join([*out, *_bars(line, top, series), "</svg>"])


def _requests_chart(
    line: Timeline, per_key: dict[str, Counter[int]], limit: float, per_ip: bool
) -> str:
    """The busiest key of each second as a bar, each key as a line (the busiest first),
    and the limit over them."""
    busiest = Counter({s: max(c[s] for c in per_key.values()) for s in line.index})
    top = max(limit * 1.25, max(busiest.values(), default=0) * 1.1, 1)
    scope = _scope(per_ip)
    ranked = sorted(per_key, key=lambda k: (-max(per_key[k].values()), k))[:MAX_KEY_LINES]
    colours = dict(zip(ranked, COLOURS, strict=False)) if len(per_key) > 1 else {}
    what = "all keys" if per_ip else "busiest key"
    legend = [
        (FAILED, f"limit {limit:g}/s"),
        (BUSIEST, what),
        *((c, k) for k, c in colours.items()),
    ]
    out = _svg(line, f"requests per second {scope}", top, legend)
    out += _bars(line, top, [(busiest, BUSIEST, f"requests ({what})")])
    out += (_polyline(line, per_key[key], top, colour, key) for key, colour in colours.items())
    y = _y(limit, top)
    out.append(
        f'<line x1="{LEFT}" y1="{y:.1f}" x2="{LEFT + len(line.slots) * line.width:.1f}" '
        f'y2="{y:.1f}" stroke="{FAILED}" stroke-width="2" stroke-dasharray="6 4">'
        f"<title>limit: {limit:g} requests/s {scope}</title></line></svg>"
    )
    return "".join(out)


def _bars(line: Timeline, top: float, series: list[tuple[Counter[int], str, str]]) -> list[str]:
    """Stacked bars, a slot each; ``series``: counts by second, colour, what they count."""
    out = []
    width = max(1.0, line.width - 1)
    for second in line.index:
        x, base = line.x(second), 0
        for counts, colour, what in series:
            if count := counts[second]:
                y0, y1 = _y(base, top), _y(base + count, top)
                out.append(
                    f'<rect x="{x:.1f}" y="{y1:.1f}" width="{width:.1f}" height="{y0 - y1:.1f}" '
                    f'fill="{colour}"><title>{_when(second)}: {count} {what}</title></rect>'
                )
                base += count
    return out


def _polyline(line: Timeline, counts: Counter[int], top: float, colour: str, name: str) -> str:
    """One series as steps, a segment per stretch of the time axis."""
    runs: list[list[str]] = [[]]
    for second in line.slots:
        if second is None:
            runs.append([])
            continue
        x, y = line.x(second), _y(counts[second], top)
        runs[-1] += [f"{x:.1f},{y:.1f}", f"{x + line.width:.1f},{y:.1f}"]
    return "".join(
        f'<polyline points="{" ".join(points)}" fill="none" stroke="{colour}" '
        f'stroke-width="1.2"><title>{escape(name)}</title></polyline>'
        for points in runs
        if points
    )


def _scope(per_ip: bool) -> str:
    return "of all keys together (the limit is per IP)" if per_ip else "per key"


def _y(value: float, top: float) -> float:
    return TOP + CHART_HEIGHT * (1 - value / top)


def _tick_step(top: float) -> int:
    return max(1, math.ceil(top / 5))


def _when(second: int) -> str:
    return datetime.fromtimestamp(second, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
