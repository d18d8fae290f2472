"""The page's summary header: per scorer, a reliability diagram of step scores and the histogram of the scores of
good and bad steps, as inline SVG (no script, no library); plus the colour a score is shown in.

A PRM that gives about 0.85 to every step, misread or not, shows as two histograms on top of each other and a flat
reliability curve, which no accuracy table shows.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

# Bad (0) -> doubtful (0.5) -> good (1): the page's script interpolates the same three colours (COLOUR_SCRIPT).
BAD, MID, GOOD = (214, 69, 65), (240, 200, 80), (67, 160, 71)


def score_colour(score: float) -> tuple[int, int, int]:
    """The RGB colour of a step score in [0, 1] (clipped): red through yellow to green, rounded half up as the
    page's script rounds (`Math.round`)."""
    score = min(1.0, max(0.0, float(score)))
    low, high, t = (BAD, MID, score * 2) if score < 0.5 else (MID, GOOD, score * 2 - 1)
    return tuple(math.floor(a + (b - a) * t + 0.5) for a, b in zip(low, high))  # type: ignore[return-value]


COLOUR_SCRIPT = f"""
const BAD = {list(BAD)}, MID = {list(MID)}, GOOD = {list(GOOD)};
function scoreColour(s) {{
  s = Math.min(1, Math.max(0, s));
  const [lo, hi, t] = s < 0.5 ? [BAD, MID, s * 2] : [MID, GOOD, s * 2 - 1];
  return "rgb(" + lo.map((a, i) => Math.floor(a + (hi[i] - a) * t + 0.5)).join(", ") + ")";
}}
"""


@dataclass
class Calibration:
    """Step scores of one scorer against the steps' truth: the reliability bins and both histograms."""

    name: str
    num_steps: int
    mean_good: float | None
    mean_bad: float | None
    bins: list[tuple[float, float, int]]  # (mean score, share of good steps, steps) of each non-empty bin
    good_hist: list[int]
    bad_hist: list[int]
    ece: float | None  # expected calibration error: the steps' weighted |mean score - share good| over the bins


def calibration(name: str, pairs: Sequence[tuple[float, int]], num_bins: int = 10, hist_bins: int = 20) -> Calibration:
    """The calibration of `pairs` of (score, truth 1 good / 0 bad)."""
    edges: list[list[tuple[float, int]]] = [[] for _ in range(num_bins)]
    good_hist, bad_hist = [0] * hist_bins, [0] * hist_bins
    for score, truth in pairs:
        score = min(1.0, max(0.0, score))
        edges[min(int(score * num_bins), num_bins - 1)].append((score, truth))
        (good_hist if truth else bad_hist)[min(int(score * hist_bins), hist_bins - 1)] += 1
    bins = [(sum(s for s, _ in b) / len(b), sum(t for _, t in b) / len(b), len(b)) for b in edges if b]
    good = [s for s, t in pairs if t]
    bad = [s for s, t in pairs if not t]
    ece = sum(n * abs(s - g) for s, g, n in bins) / len(pairs) if pairs else None
    return Calibration(
        name,
        len(pairs),
        sum(good) / len(good) if good else None,
        sum(bad) / len(bad) if bad else None,
        bins,
        good_hist,
        bad_hist,
        ece,
    )


def _axes(width: int, height: int, pad: int, xlabel: str, ylabel: str) -> list[str]:
    return [
        f'<line x1="{pad}" y1="{height - pad}" x2="{width - 6}" y2="{height - pad}" stroke="#555"/>',
        f'<line x1="{pad}" y1="6" x2="{pad}" y2="{height - pad}" stroke="#555"/>',
        f'<text x="{(width + pad) / 2}" y="{height - 6}" font-size="10" text-anchor="middle">{xlabel}</text>',
        f'<text x="10" y="{(height - pad) / 2}" font-size="10" text-anchor="middle" '
        f'transform="rotate(-90 10 {(height - pad) / 2})">{ylabel}</text>',
        f'<text x="{pad}" y="{height - pad + 11}" font-size="9" text-anchor="middle">0</text>',
        f'<text x="{width - 6}" y="{height - pad + 11}" font-size="9" text-anchor="end">1</text>',
    ]


def reliability_svg(cal: Calibration, size: int = 180, pad: int = 28) -> str:
    """The reliability diagram: share of good steps against mean score per bin (dot area ~ steps); the diagonal is
    a calibrated scorer."""
    span = size - pad - 6

    def xy(x: float, y: float) -> tuple[float, float]:
        return pad + x * span, size - pad - y * span

    parts = _axes(size, size, pad, "step score", "share good")
    (x0, y0), (x1, y1) = xy(0, 0), xy(1, 1)
    parts.append(f'<line x1="{x0}" y1="{y0}" x2="{x1}" y2="{y1}" stroke="#bbb" stroke-dasharray="3 3"/>')
    largest = max((n for _, _, n in cal.bins), default=1)
    points = [xy(s, g) for s, g, _ in cal.bins]
    if len(points) > 1:
        path = " ".join(f"{x:.1f},{y:.1f}" for x, y in points)
        parts.append(f'<polyline points="{path}" fill="none" stroke="#1565c0" stroke-width="1.5"/>')
    for (x, y), (s, g, n) in zip(points, cal.bins):
        radius = 2 + 4 * math.sqrt(n / largest)
        parts.append(
            f'<circle cx="{x:.1f}" cy="{y:.1f}" r="{radius:.1f}" fill="#1565c0"><title>mean score {s:.2f}, '
            f"{100 * g:.0f}% good, {n} steps</title></circle>"
        )
    return _svg(size, size, f"reliability: {cal.name}", parts)


def histogram_svg(cal: Calibration, width: int = 240, height: int = 180, pad: int = 28) -> str:
    """Step scores of good steps (green) and bad steps (red), each normalised to its own total."""
    parts = _axes(width, height, pad, "step score", "share of steps")
    bins = len(cal.good_hist)
    bar = (width - pad - 6) / bins
    tallest = max(
        [h / max(sum(cal.good_hist), 1) for h in cal.good_hist]
        + [h / max(sum(cal.bad_hist), 1) for h in cal.bad_hist]
        + [1e-9]
    )
    for hist, colour, kind, offset in ((cal.good_hist, GOOD, "good", 0.0), (cal.bad_hist, BAD, "bad", 0.5)):
        total = max(sum(hist), 1)
        for k, count in enumerate(hist):
            if not count:
                continue
            h = (count / total) / tallest * (height - pad - 10)
            x = pad + (k + offset) * bar
            parts.append(
                f'<rect class="hist-{kind}" x="{x:.1f}" y="{height - pad - h:.1f}" width="{bar / 2:.1f}" '
                f'height="{h:.1f}" fill="rgb{colour}"><title>{kind} steps scored {k / bins:.2f}-{(k + 1) / bins:.2f}'
                f": {count}</title></rect>"
            )
    return _svg(width, height, f"step scores of good and bad steps: {cal.name}", parts)


def _svg(width: int, height: int, title: str, parts: list[str]) -> str:
    body = "".join(parts)
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
        f'aria-label="{escape(title)}"><title>{escape(title)}</title>{body}</svg>'
    )


def calibration_card(cal: Calibration) -> str:
    """One scorer's block of the header: name, figures, both plots."""

    def fmt(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.3f}"

    figures = (
        f"{cal.num_steps} steps with a known truth; mean score of good steps {fmt(cal.mean_good)}, of bad steps "
        f"{fmt(cal.mean_bad)}; calibration error {fmt(cal.ece)}"
    )
    return (
        f'<div class="card" data-scorer="{escape(cal.name)}"><h3>{escape(cal.name)}</h3><p>{figures}</p>'
        f"{reliability_svg(cal)}{histogram_svg(cal)}</div>"
    )
