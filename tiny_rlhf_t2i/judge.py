"""The judge: our stand-in for the paper's human labelers (and for GenEval's detector).

`judge(image, prompt) -> (good, reason)` looks at pixels and the prompt, nothing else:

1. Every pixel gets the name of its nearest palette color; a pixel farther than OFF_PALETTE
   from every palette color (a blurry edge, a smear) gets none.
2. The background is the most common color; it must be a background color.
3. Every 8-connected group of non-background pixels is a blob. Blobs of at most SPECK_AREA
   pixels are specks and are ignored (a careful person does not count a stray pixel).
4. A blob is a *clean shape* when (a) at least CLEAN_COLOR of its pixels are one object color,
   (b) its size is that of one object (two touching objects are too big: merged), and
   (c) it is one piece even without its corner contacts (two shapes touching at a corner are
   not), and (d) its silhouette matches one shape (fill of its bounding box, mass, aspect).
   Anything else is *malformed*: blurry, broken, half-drawn or merged shapes. A careful person
   cannot count those as the asked-for objects, so any malformed blob makes the image bad.
5. The image is good iff the background is the one asked for (if named), there are no malformed
   blobs, every clean shape is the asked-for shape (and color, if named), and their number is
   the asked-for count.

`well_formed(image)` is the prompt-free half of this: a clean background and only clean shapes.

The strict judge (`verdict(..., strict=True)`) adds (e): a clean shape must also match the clean
render of the shape it is read as, at the best on-grid place and size, with an intersection-
over-union of at least MIN_FIT (silhouette_fits). The features of (d) accept a blob halfway
between a circle and a diamond; (e) does not. Clean renders match exactly, so the strict judge
is as exact on them. Stage 1 labels with the judge; the evaluation reports both.
"""
import numpy as np

from .scenes import shape_mask
from .world import BACKGROUNDS, COLORS, PALETTE, PLURAL, SHAPES, Spec, parse

PALETTE_NAMES = tuple(PALETTE)
PALETTE_RGB = np.array([PALETTE[n] for n in PALETTE_NAMES], np.int32)  # (P, 3)
OFF_PALETTE = 60.0  # RGB distance beyond which a pixel belongs to no palette color
CLEAN_COLOR = 0.8  # fraction of a clean blob's pixels that must be its dominant object color
SPECK_AREA = 2  # blobs this small (pixels, at 16 px; scaled by area at larger sizes) are ignored
MIN_FIT = 0.9  # the strict judge's (e): at most about one pixel in ten off the clean shape


def quantize(image: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 -> (H, W) index into PALETTE_NAMES, or -1 for off-palette pixels."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 image, got {image.shape} {image.dtype}")
    diff = image[:, :, None, :].astype(np.int32) - PALETTE_RGB  # (H, W, P, 3)
    dist2 = (diff * diff).sum(-1)  # (H, W, P) squared RGB distances, exact integers
    return np.where(dist2.min(-1) <= OFF_PALETTE ** 2, dist2.argmin(-1), -1)


def connected_components(mask: np.ndarray, diagonal: bool = True) -> list[np.ndarray]:
    """Connected components of a boolean (H, W) mask (8-connected; 4-connected with
    diagonal=False), as arrays of (y, x) pixel coordinates, in the raster order of each
    component's first pixel.

    Label propagation, vectorized: every pixel starts with its own raster index as label and
    repeatedly takes the smallest label among itself and its neighbours in the mask, then the
    label of the pixel its label names (pointer jumping: a label is always a pixel of the same
    component with a label no larger, so jumping stays inside the component and halves long
    chains). When nothing changes, every component carries the index of its first pixel."""
    h, w = mask.shape
    none = h * w  # the label of pixels outside the mask: larger than every index
    label = np.where(mask, np.arange(none).reshape(h, w), none)  # (H, W)
    steps = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)
             if (dy or dx) and (diagonal or not (dy and dx))]
    padded = np.full((h + 2, w + 2), none)  # the labels with a border of `none`
    flat = np.full(none + 1, none)  # the labels by pixel index; index `none` stays `none`
    while True:
        padded[1:-1, 1:-1] = label
        new = label
        for dy, dx in steps:
            new = np.minimum(new, padded[1 + dy:1 + dy + h, 1 + dx:1 + dx + w])
        new = np.where(mask, new, none)
        flat[:-1] = new.ravel()
        new = flat[new]  # pointer jumping
        if np.array_equal(new, label):
            break
        label = new
    ys, xs = np.nonzero(mask)
    if not len(ys):
        return []
    names = label[ys, xs]  # each mask pixel's component: the index of its first pixel
    order = np.argsort(names, kind="stable")  # pixels grouped by component
    ys, xs, names = ys[order], xs[order], names[order]
    starts = np.flatnonzero(np.diff(names, prepend=-1))  # first pixel of each component
    return np.split(np.stack([ys, xs], 1), starts[1:])


def classify_silhouette(pixels: np.ndarray) -> str | None:
    """Name the shape of a blob from its silhouette, or None if it matches none.

    Features that survive 16 px pixelation: `fill` = area / bounding-box area (square ~1,
    circle ~0.75, diamond and triangle ~0.5), `drop` = how far below the box center the mass
    sits (a triangle's centroid is 1/3 of the way up from its base), and the aspect ratio."""
    ys, xs = pixels[:, 0], pixels[:, 1]
    h, w = ys.max() - ys.min() + 1, xs.max() - xs.min() + 1
    fill = len(pixels) / (h * w)
    drop = (ys.mean() - (ys.min() + ys.max()) / 2) / h
    if not 0.7 <= w / h <= 1.6:
        return None
    if drop > 0.06 and 0.4 <= fill <= 0.72:
        return "triangle"
    if abs(drop) > 0.06:
        return None
    if fill >= 0.88:
        return "square"
    if 0.62 <= fill < 0.88:
        return "circle"
    if 0.4 <= fill < 0.62:
        return "diamond"
    return None


def silhouette_fits(pixels: np.ndarray, side: int, shapes=SHAPES) -> dict[str, float]:
    """For a blob's (y, x) pixels in a side x side image: per shape, the best intersection-over-
    union with a clean render of that shape, centered on a pixel center near the blob's centroid
    (within 1 px across and 2 down or up, twice that at 64 px), with a radius of k + 1/2 px (the
    renderer's grid, scenes.on_grid) whose area is near the blob's. A clean render's object
    matches its own shape exactly (1.0)."""
    cy, cx = pixels.mean(0) + 0.5
    radii = np.arange(np.floor(np.sqrt(len(pixels) / 3.6)), np.sqrt(len(pixels) / 1.4) + 1) + 0.5
    reach = max(1, side // 32)  # a triangle's centroid sits below its center, more px at 64 px
    # Only a window of the image: every candidate shape reaches at most 1.15 r from its center,
    # so outside the window no candidate and no blob pixel lies, and the counts are the same.
    pad = int(np.ceil(1.15 * radii[-1])) + 2 * reach + 3
    y0, x0 = (max(0, min(int(pixels[:, i].min()), int(c) - pad)) for i, c in ((0, cy), (1, cx)))
    y1, x1 = (min(side, max(int(pixels[:, i].max()) + 1, int(c) + pad + 1))
              for i, c in ((0, cy), (1, cx)))
    ys, xs = np.mgrid[y0:y1, x0:x1] + 0.5  # pixel centers of the window
    blob = np.zeros((y1 - y0, x1 - x0), bool)
    blob[pixels[:, 0] - y0, pixels[:, 1] - x0] = True
    centers = [(np.floor(cx) + dx + 0.5, np.floor(cy) + dy + 0.5)
               for dx in range(-reach, reach + 1) for dy in range(-2 * reach, 2 * reach + 1)]
    px, py, r = (np.array(v)[:, None, None] for v in  # (candidates, 1, 1)
                 zip(*[(x, y, rr) for x, y in centers for rr in radii]))
    fits = {}
    for shape in shapes:
        masks = shape_mask(shape, xs - px, ys - py, r)  # (candidates, h, w) of the window
        fits[shape] = float(((masks & blob).sum((1, 2)) / (masks | blob).sum((1, 2))).max())
    return fits


def analyze(image: np.ndarray) -> dict:
    """Everything the judge sees in an image: background, clean shapes, malformed blobs, the
    fit of each clean shape the strict judge rejects (in_between), and the (y, x) pixels of
    every blob beyond a speck (what fidelity.shape_fit measures)."""
    q = quantize(image)
    side = image.shape[0]
    counts = np.bincount(q[q >= 0].ravel(), minlength=len(PALETTE_NAMES))
    background = PALETTE_NAMES[counts.argmax()] if counts.any() else None
    bg_idx = PALETTE_NAMES.index(background) if background else -2
    speck = SPECK_AREA * (side / 16) ** 2
    # Pixel area of one object: the smallest triangle to the largest circle the world draws,
    # with slack for soft edges. Two touching objects exceed the upper bound.
    lo, hi = 1.6 * (0.16 * side) ** 2 * 0.85, 3.3 * (0.24 * side) ** 2 * 1.15
    foreground = q != bg_idx  # (H, W) every pixel that is not the background
    blobs = connected_components(foreground)
    blob_of = np.empty(q.shape, int)  # (H, W) the blob of each non-background pixel
    for i, pixels in enumerate(blobs):
        blob_of[pixels[:, 0], pixels[:, 1]] = i
    # Two shapes touching only at a corner are one blob but two parts when corners do not
    # join (4-connected): one drawn shape never is. Count each blob's parts beyond a speck.
    parts = np.zeros(len(blobs), int)
    for part in connected_components(foreground, diagonal=False):
        parts[blob_of[part[0, 0], part[0, 1]]] += len(part) > speck
    shapes, malformed, why, in_between = [], [], [], []  # shapes: list of (color, shape)
    for pixels, n_parts in zip(blobs, parts):
        if len(pixels) <= speck:
            continue
        colors = q[pixels[:, 0], pixels[:, 1]]
        idx, n = np.unique(colors[colors >= 0], return_counts=True)
        dominant = PALETTE_NAMES[idx[n.argmax()]] if len(idx) else None
        clean_color = dominant in COLORS and n.max() >= CLEAN_COLOR * len(pixels)
        shape = (classify_silhouette(pixels) if lo <= len(pixels) <= hi and n_parts <= 1
                 else None)
        if clean_color and shape:
            shapes.append((dominant, shape))
            fit = silhouette_fits(pixels, side, (shape,))[shape]
            if fit < MIN_FIT:  # (e): read as a shape, but not drawn as one
                in_between.append(fit)
        else:  # and why, the first reason that applies
            malformed.append(len(pixels))
            why.append("too large" if len(pixels) > hi else "too small" if len(pixels) < lo
                       else "two parts" if n_parts > 1 else "mixed color" if not clean_color
                       else "no shape's silhouette")
    # Every pixel that is not the background belongs to a blob, so a smear on the background is a
    # malformed blob (or an ignored speck): the background is clean when it is a background color.
    clean_bg = background in BACKGROUNDS
    formed = clean_bg and not malformed and len(shapes) > 0
    return {"background": background, "clean_background": clean_bg, "shapes": shapes,
            "malformed": malformed, "malformed_why": why, "in_between": in_between,
            "well_formed": formed, "well_formed_strict": formed and not in_between,
            "side": side, "blobs": [pixels for pixels in blobs if len(pixels) > speck]}


def _describe(shapes: list[tuple[str, str]]) -> str:
    if not shapes:
        return "no shapes"
    groups = {s: shapes.count(s) for s in shapes}  # (color, shape) -> how many, in found order
    return " and ".join(f"{n} {c} {PLURAL[s] if n > 1 else s}" for (c, s), n in
                        sorted(groups.items(), key=lambda kv: -kv[1]))


def _asked(spec: Spec) -> str:
    count = "some" if spec.count is None else str(spec.count)
    noun = spec.shape if spec.count == 1 else PLURAL[spec.shape]
    bg = f" on {spec.background}" if spec.background else ""
    return f"{count} {spec.color + ' ' if spec.color else ''}{noun}{bg}"


def judge(image: np.ndarray, prompt: str | Spec) -> tuple[bool, str]:
    """Is the image aligned with the prompt? Returns (good, readable reason)."""
    return verdict(analyze(image), prompt)


def verdict(a: dict, prompt: str | Spec, strict: bool = False) -> tuple[bool, str]:
    """judge's verdict from an image's analysis (analyze): one analysis serves both judge and
    well_formed when a caller wants both. strict: the strict judge, which also rejects an image
    with a clean shape that is not drawn as one (criterion e, MIN_FIT)."""
    spec = parse(prompt) if isinstance(prompt, str) else prompt
    found = f"found {_describe(a['shapes'])} on {a['background']}"
    if a["malformed"]:
        found += f" and {len(a['malformed'])} malformed blob(s)"
    if strict and a["in_between"]:
        found += f" ({len(a['in_between'])} of the shapes not drawn cleanly)"
    reason = f"asked for {_asked(spec)}, {found}"
    if not a["clean_background"]:
        return False, reason + " (background not clean)"
    wanted = [s for s in a["shapes"] if s[1] == spec.shape and spec.color in (None, s[0])]
    wrong_background = spec.background and a["background"] != spec.background
    if (wrong_background or a["malformed"] or (strict and a["in_between"])
            or len(wanted) != len(a["shapes"])):  # or an extra kind
        return False, reason
    return (len(wanted) >= 1 if spec.count is None else len(wanted) == spec.count), reason


def well_formed(image: np.ndarray) -> bool:
    """Prompt-free fidelity: a clean background color and at least one object, all clean shapes."""
    return analyze(image)["well_formed"]
