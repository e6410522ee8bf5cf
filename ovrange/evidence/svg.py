"""Self-contained SVG rate charts (no plotting library): one row per key, one marker per model, log-scale rates.

A rate is drawn as a bar to its point value with its 95% interval as a whisker; a rate of 0 (nothing on a log
axis) as a triangle at its interval's upper end; a row with fewer than ``min_trials`` trials is not drawn, only
labelled, so a few-trial site never shows up as a wide bar. Counts are written beside each row.
"""

from __future__ import annotations

import math
from html import escape
from typing import Any

COLOURS = ("#c0392b", "#1f5fa8", "#2e8b57", "#8e44ad")
LABEL_W, PLOT_W, NOTE_W = 330, 400, 250
ROW_H, TOP, BOTTOM = 14, 46, 34


def _short(text: str, limit: int = 52) -> str:
    return text if len(text) <= limit else "…" + text[-(limit - 1):]


def _axis_floor(rows: list[dict[str, Any]], min_trials: int) -> float:
    """The left end of the log axis: the decade below the smallest drawn value (at most 1e-5, at least 1e-1)."""
    smallest = 1e-1
    for row in rows:
        for rate in row["series"]:
            if rate["n"] >= min_trials:
                for value in (rate["value"], rate["low"], rate["high"]):
                    if value:
                        smallest = min(smallest, value)
    return max(10.0 ** math.floor(math.log10(smallest)), 1e-5)


def rate_chart(title: str, rows: list[dict[str, Any]], names: list[str], *, min_trials: int = 30,
               axis_label: str = "rate (log scale, 95% Wilson interval)") -> str:
    """``rows``: ``{"label", "series": [{"k", "n", "value", "low", "high"} per model], "note", "sublabel"}``."""
    floor = _axis_floor(rows, min_trials)
    decades = -round(math.log10(floor))
    series = max(1, len(names))
    block = ROW_H * series + 6
    height = TOP + block * len(rows) + BOTTOM + 16
    width = LABEL_W + PLOT_W + NOTE_W
    x0 = LABEL_W

    def x(value: float) -> float:
        return x0 + PLOT_W * (math.log10(max(value, floor)) + decades) / decades

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11" role="img">',
           f'<title>{escape(title)}</title>',
           f'<text x="4" y="16" font-size="13" font-weight="bold">{escape(title)}</text>']
    for i, name in enumerate(names):  # legend
        lx = 4 + i * (width // max(1, len(names)))
        out.append(f'<rect x="{lx}" y="24" width="10" height="10" fill="{COLOURS[i % len(COLOURS)]}"/>'
                   f'<text x="{lx + 14}" y="33">{escape(_short(name, 70))}</text>')
    plot_bottom = TOP + block * len(rows)
    for d in range(decades + 1):  # decade grid lines
        gx = x0 + PLOT_W * d / decades
        out.append(f'<line x1="{gx:.1f}" y1="{TOP - 4}" x2="{gx:.1f}" y2="{plot_bottom}" stroke="#ddd"/>'
                   f'<text x="{gx:.1f}" y="{plot_bottom + 12}" text-anchor="middle" font-size="10">'
                   f'{_decade(d - decades)}</text>')
    out.append(f'<text x="{x0 + PLOT_W / 2}" y="{plot_bottom + 26}" text-anchor="middle" font-size="10">'
               f'{escape(axis_label)}</text>')
    for r, row in enumerate(rows):
        y = TOP + r * block
        if r % 2:
            out.append(f'<rect x="0" y="{y - 2}" width="{width}" height="{block}" fill="#f6f6f6"/>')
        middle = y + block / 2 + (-3 if row.get("sublabel") else 2)
        out.append(f'<text x="{LABEL_W - 6}" y="{middle:.1f}" text-anchor="end">'
                   f'<title>{escape(row["label"])}</title>{escape(_short(row["label"]))}</text>')
        if row.get("sublabel"):
            out.append(f'<text x="{LABEL_W - 6}" y="{middle + 10:.1f}" text-anchor="end" font-size="9" '
                       f'fill="#555">{escape(row["sublabel"])}</text>')
        for j, rate in enumerate(row["series"]):
            cy = y + j * ROW_H + ROW_H / 2
            colour = COLOURS[j % len(COLOURS)]
            count = f'{rate["k"]}/{rate["n"]}'
            if rate["n"] < min_trials:
                out.append(f'<text x="{x0 + 4}" y="{cy + 4:.1f}" fill="#888" font-style="italic">'
                           f'too few trials ({count}): not drawn</text>')
                continue
            if rate["k"] == 0:  # nothing to draw on a log axis: the upper end of the interval, pointing left
                hx = x(rate["high"])
                out.append(f'<path d="M{hx:.1f},{cy - 5:.1f} L{hx:.1f},{cy + 5:.1f} L{hx - 8:.1f},{cy:.1f} Z" '
                           f'fill="none" stroke="{colour}"/>')
            else:
                out.append(f'<rect x="{x0}" y="{cy - 4:.1f}" width="{x(rate["value"]) - x0:.1f}" height="8" '
                           f'fill="{colour}" opacity="0.85"/>')
                out.append(f'<line x1="{x(rate["low"]):.1f}" y1="{cy:.1f}" x2="{x(rate["high"]):.1f}" '
                           f'y2="{cy:.1f}" stroke="#222"/><line x1="{x(rate["low"]):.1f}" y1="{cy - 3:.1f}" '
                           f'x2="{x(rate["low"]):.1f}" y2="{cy + 3:.1f}" stroke="#222"/><line '
                           f'x1="{x(rate["high"]):.1f}" y1="{cy - 3:.1f}" x2="{x(rate["high"]):.1f}" '
                           f'y2="{cy + 3:.1f}" stroke="#222"/>')
            text = f'{_pct(rate["value"])} ({count})'
            out.append(f'<text x="{x0 + PLOT_W + 6}" y="{cy + 4:.1f}" fill="{colour}">{escape(text)}</text>')
        if row.get("note"):
            out.append(f'<text x="{width - 4}" y="{y + block / 2 + 2:.1f}" text-anchor="end" '
                       f'font-size="10">{escape(row["note"])}</text>')
    out.append("</svg>")
    return "\n".join(out)


def _decade(power: int) -> str:
    return "100%" if power == 0 else "10%" if power == -1 else "1%" if power == -2 else f"1e{power}"


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{value:.2%}" if value >= 1e-3 or value == 0 else f"{value:.3%}"
