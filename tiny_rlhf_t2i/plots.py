"""Stage 3's figure, drawn with pillow alone (no plotting dependency): the over-optimization
curve, per round."""
import math

from PIL import Image, ImageDraw, ImageFont

from .files import save_image

COLORS = ((120, 120, 120), (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40),
          (148, 103, 189), (140, 86, 75), (227, 119, 194))  # one per model, in order


def round_curves(curves: dict[str, list[dict]], prompts: str, path,
                 size: int = 170) -> None:
    """The over-optimization curve: per run, after each round (x: fine-tuning steps), the mean
    reward next to what it stands for (gold alignment) and what it may cost (well-formed, FD).
    Each panel's y range fits its data. curves: {run name: [{"steps", "reward", "alignment",
    "well_formed", "fd"}, ...]}, fractions in [0, 1]; prompts: which prompts they were
    measured on, for the caption."""
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
    draw.text((left, top + size + 16), f"x: fine-tuning steps (a dot per round; 0: the "
              f"pretrained model), on the {prompts}", fill="black", font=font)
    for m, name in enumerate(names):
        lx = left + (m % per_line) * 110
        ly = top + size + bottom + 14 * (m // per_line)
        draw.rectangle([lx, ly + 2, lx + 8, ly + 10], fill=COLORS[m + 1])
        draw.text((lx + 12, ly), name, fill="black", font=font)
    save_image(img, path)
