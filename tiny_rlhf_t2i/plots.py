"""Figures drawn with pillow alone (no plotting dependency): alignment per category, per model;
the over-optimization curve, per round."""
import math

from PIL import Image, ImageDraw, ImageFont

from .files import save_image
from .world import CATEGORIES

GROUPS = ("overall", *CATEGORIES, "seen", "unseen")
COLORS = ((120, 120, 120), (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40),
          (148, 103, 189), (140, 86, 75), (227, 119, 194))  # one per model, in order


def alignment_bars(metrics: dict[str, dict], path, height: int = 260) -> None:
    """Grouped bars: gold-judge alignment of each model per category and split, with its 95%
    interval as a whisker. metrics: {model name: evaluation metrics with "alignment"}."""
    names = list(metrics)[:len(COLORS)]
    gap, left, top, bottom = 14, 34, 24, 34
    bar = max(9, (72 - gap) // len(names))  # a group is at least as wide as its label
    group_w = bar * len(names) + gap
    width = left + group_w * len(GROUPS) + 10
    per_line = max(1, (width - left) // (12 + 6 * max(len(n) for n in names) + 12))  # legend
    img = Image.new("RGB", (width, top + height + bottom + 14 * -(-len(names) // per_line)),
                    "white")
    draw, font = ImageDraw.Draw(img), ImageFont.load_default()
    y = lambda frac: top + height * (1 - frac)  # fraction in [0, 1] -> pixel row
    for tick in range(0, 101, 20):
        draw.line([(left, y(tick / 100)), (width - 6, y(tick / 100))], fill=(225, 225, 225))
        draw.text((4, y(tick / 100) - 6), f"{tick}%", fill="black", font=font)
    draw.text((left, 6), "alignment (gold judge), 95% intervals", fill="black", font=font)
    for g, group in enumerate(GROUPS):
        x0 = left + g * group_w + gap // 2
        for m, name in enumerate(names):
            ci = metrics[name]["alignment"][group]
            x = x0 + m * bar
            draw.rectangle([x, y(ci["mean"]), x + bar - 2, y(0)], fill=COLORS[m])
            mid = x + (bar - 2) // 2
            draw.line([(mid, y(ci["hi"])), (mid, y(ci["lo"]))], fill="black")
        draw.text((x0, y(0) + 4), group[:11], fill="black", font=font)
    for m, name in enumerate(names):
        lx = left + (m % per_line) * (width - left) // per_line
        ly = top + height + bottom - 8 + 14 * (m // per_line)
        draw.rectangle([lx, ly + 2, lx + 8, ly + 10], fill=COLORS[m])
        draw.text((lx + 12, ly), name, fill="black", font=font)
    save_image(img, path)


def round_curves(curves: dict[str, list[dict]], path, size: int = 170) -> None:
    """The over-optimization curve: per run, after each round (x: fine-tuning steps), the mean
    reward next to what it stands for (gold alignment) and what it may cost (well-formed, FD).
    Each panel's y range fits its data. curves: {run name: [{"steps", "reward", "alignment",
    "well_formed", "fd"}, ...]}, fractions in [0, 1]."""
    panels = (("reward", "mean reward r_phi", 0.05), ("alignment", "gold alignment", 0.05),
              ("well_formed", "well-formed", 0.05), ("fd", "FD (lower is better)", 25.0))
    names = list(curves)[:len(COLORS) - 1]
    left, top, gap, bottom = 40, 22, 14, 30
    x_max = max(p["steps"] for c in curves.values() for p in c) or 1
    per_line = max(1, len(panels) * (size + gap + left) // 110)  # legend entries per line
    img = Image.new("RGB", (left + len(panels) * (size + gap + left),
                            top + size + bottom + 14 * -(-len(names) // per_line)), "white")
    draw, font = ImageDraw.Draw(img), ImageFont.load_default()
    for i, (key, title, step) in enumerate(panels):
        values = [p[key] for n in names for p in curves[n]]
        lo, hi = math.floor(min(values) / step) * step, math.ceil(max(values) / step) * step
        hi = hi if hi > lo else lo + step
        x0 = left + i * (size + gap + left)
        px = lambda p: (x0 + size * p["steps"] / x_max, top + size * (hi - p[key]) / (hi - lo))
        draw.rectangle([x0, top, x0 + size, top + size], outline=(180, 180, 180))
        draw.text((x0, 6), title, fill="black", font=font)
        for tick in range(5):
            value = hi - (hi - lo) * tick / 4
            draw.text((x0 - 36, top + size * tick / 4 - 6),
                      f"{value:.0f}" if key == "fd" else f"{100 * value:.1f}%", fill="black",
                      font=font)
        draw.text((x0, top + size + 4), "0", fill="black", font=font)
        draw.text((x0 + size - 24, top + size + 4), f"{x_max}", fill="black", font=font)
        for m, name in enumerate(names):
            points = [px(p) for p in curves[name]]
            if len(points) > 1:
                draw.line(points, fill=COLORS[m + 1], width=2)
            for x, y in points:
                draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=COLORS[m + 1])
    draw.text((left, top + size + 16), "x: fine-tuning steps (a dot per round; 0: the "
              "pretrained model)", fill="black", font=font)
    for m, name in enumerate(names):
        lx = left + (m % per_line) * 110
        ly = top + size + bottom + 14 * (m // per_line)
        draw.rectangle([lx, ly + 2, lx + 8, ly + 10], fill=COLORS[m + 1])
        draw.text((lx + 12, ly), name, fill="black", font=font)
    save_image(img, path)
