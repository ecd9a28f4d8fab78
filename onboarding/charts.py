"""Server-rendered SVG charts: no JavaScript library, hover shows the numbers (<title>)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from html import escape

from django.utils.safestring import SafeString, mark_safe

COLORS = ["#155eef", "#f79009", "#12b76a", "#d92d20", "#7a5af8"]
MAX_POINTS = 300


@dataclass(frozen=True)
class Series:
    label: str
    points: Sequence[tuple[datetime, float]]
    color: str = ""


def downsample_max(points: Sequence[tuple[datetime, float]], limit: int = MAX_POINTS) -> list:
    """Keep the peak of each run of points: a lag spike must not vanish when zoomed out."""
    if len(points) <= limit:
        return list(points)
    size = -(-len(points) // limit)
    return [max(points[i : i + size], key=lambda p: p[1]) for i in range(0, len(points), size)]


def sparkline(
    values: Sequence[float], *, width: int = 120, height: int = 24, title: str = ""
) -> SafeString:
    if not values:
        return mark_safe(f'<svg class="spark" width="{width}" height="{height}"></svg>')
    top = max(values) or 1.0
    step = width / max(len(values) - 1, 1)
    coords = " ".join(
        f"{i * step:.1f},{height - 2 - (v / top) * (height - 4):.1f}" for i, v in enumerate(values)
    )
    return mark_safe(
        f'<svg class="spark" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        f'role="img" aria-label="{escape(title)}"><title>{escape(title)}</title>'
        f'<polyline fill="none" stroke="#155eef" stroke-width="1.5" points="{coords}"/></svg>'
    )


def line_chart(
    series: Sequence[Series],
    *,
    title: str,
    fmt: Callable[[float], str] = lambda v: f"{v:.0f}",
    width: int = 900,
    height: int = 180,
) -> SafeString:
    """A time-series line chart; each point carries a hover <title> with time and values."""
    pad_l, pad_r, pad_t, pad_b = 56, 12, 24, 22
    all_points = [p for s in series for p in s.points]
    if not all_points:
        return mark_safe(
            f'<svg class="chart-svg" width="{width}" height="60"><text x="8" y="20" '
            f'font-size="13" fill="#667085">{escape(title)}: no samples yet</text></svg>'
        )
    t0 = min(p[0] for p in all_points).timestamp()
    t1 = max(p[0] for p in all_points).timestamp()
    span = max(t1 - t0, 1.0)
    top = max(max(p[1] for p in all_points), 1.0) * 1.1
    plot_w, plot_h = width - pad_l - pad_r, height - pad_t - pad_b

    def x(moment: datetime) -> float:
        return pad_l + (moment.timestamp() - t0) / span * plot_w

    def y(value: float) -> float:
        return pad_t + plot_h - value / top * plot_h

    parts = [
        f'<svg class="chart-svg" width="100%" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="{escape(title)}">',
        f'<text x="{pad_l}" y="15" font-size="13" font-weight="600">{escape(title)}</text>',
    ]
    for frac in (0, 0.5, 1):
        gy = pad_t + plot_h - frac * plot_h
        parts.append(
            f'<line x1="{pad_l}" x2="{width - pad_r}" y1="{gy:.1f}" y2="{gy:.1f}" stroke="#eaecf0"/>'
            f'<text x="{pad_l - 6}" y="{gy + 4:.1f}" font-size="11" text-anchor="end" '
            f'fill="#667085">{escape(fmt(top / 1.1 * frac))}</text>'
        )
    for label, moment in (("start", t0), ("end", t1)):
        anchor = "start" if label == "start" else "end"
        stamp = datetime.fromtimestamp(moment).strftime("%d %b %H:%M")
        xpos = pad_l if label == "start" else width - pad_r
        parts.append(
            f'<text x="{xpos}" y="{height - 6}" font-size="11" text-anchor="{anchor}" '
            f'fill="#667085">{stamp} UTC</text>'
        )
    for index, s in enumerate(series):
        color = s.color or COLORS[index % len(COLORS)]
        coords = " ".join(f"{x(t):.1f},{y(v):.1f}" for t, v in s.points)
        parts.append(
            f'<polyline fill="none" stroke="{color}" stroke-width="1.8" points="{coords}">'
            f"<title>{escape(s.label)}</title></polyline>"
        )
        parts.append(
            f'<text x="{width - pad_r - 150 * (index + 1) + 150}" y="15" font-size="12" '
            f'fill="{color}" text-anchor="end">■ {escape(s.label)}</text>'
        )
    parts.append(_hover_columns(series, x, plot_h, pad_t, fmt))
    parts.append("</svg>")
    return mark_safe("".join(parts))


def _hover_columns(series, x, plot_h, pad_t, fmt) -> str:
    """Invisible columns over each sample time; hovering one shows every series' value."""
    by_time: dict[datetime, list[str]] = {}
    for s in series:
        for moment, value in s.points:
            by_time.setdefault(moment, []).append(f"{s.label}: {fmt(value)}")
    times = sorted(by_time)
    cols = []
    for i, moment in enumerate(times):
        left = x(times[i - 1]) if i else x(moment)
        right = x(times[i + 1]) if i + 1 < len(times) else x(moment)
        x0, x1 = (left + x(moment)) / 2, (x(moment) + right) / 2
        label = f"{moment:%d %b %H:%M:%S} UTC — " + ", ".join(by_time[moment])
        cols.append(
            f'<rect x="{x0:.1f}" y="{pad_t}" width="{max(x1 - x0, 1):.1f}" height="{plot_h}" '
            f'fill="transparent"><title>{escape(label)}</title></rect>'
        )
    return "".join(cols)
