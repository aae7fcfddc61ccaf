"""A line chart drawn with PIL (no plotting library in the pinned stack)."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw

COLOURS = [
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (0, 0, 0),
]


def line_chart(
    series: dict[str, list[tuple[float, float]]],
    path: str | Path,
    title: str,
    xlabel: str,
    ylabel: str,
    size: tuple[int, int] = (720, 440),
) -> None:
    w, h = size
    left, right, top, bottom = 60, 170, 36, 46
    img = Image.new("RGB", size, "white")
    d = ImageDraw.Draw(img)
    xs = sorted({x for pts in series.values() for x, _ in pts})
    ys = [y for pts in series.values() for _, y in pts]
    ymax = max(1e-6, max(ys, default=1.0))
    ymax = min(1.0, round(ymax + 0.05, 1)) if ymax <= 1 else ymax
    pos = {x: left + i * (w - left - right) / max(1, len(xs) - 1) for i, x in enumerate(xs)}

    def py(y: float) -> float:
        return top + (1 - y / ymax) * (h - top - bottom)

    d.text((left, 10), title, fill="black")
    d.line([(left, top), (left, h - bottom), (w - right, h - bottom)], fill="black")
    for k in range(6):
        yv = ymax * k / 5
        d.line([(left - 4, py(yv)), (w - right, py(yv))], fill=(225, 225, 225))
        d.text((8, py(yv) - 6), f"{yv:.2f}", fill="black")
    for x, px in pos.items():
        d.text((px - 6, h - bottom + 6), f"{x:g}", fill="black")
    d.text(((w - right) // 2, h - 18), xlabel, fill="black")
    d.text((8, top - 20), ylabel, fill="black")
    for i, (label, pts) in enumerate(series.items()):
        c = COLOURS[i % len(COLOURS)]
        xy = [(pos[x], py(y)) for x, y in sorted(pts)]
        if len(xy) > 1:
            d.line(xy, fill=c, width=2)
        for px, pyy in xy:
            d.ellipse([px - 3, pyy - 3, px + 3, pyy + 3], fill=c)
        d.text((w - right + 12, top + 16 * i), label, fill=c)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
