"""Figures drawn with pillow alone (no plotting dependency): alignment per category, per model."""
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
