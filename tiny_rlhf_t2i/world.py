"""The synthetic world: our stand-in for the images and prompts of Stable Diffusion.

A scene is `count` identical shapes of one color on a plain background, so a prompt follows the
paper's template "count color object background" (Lee et al. 2023, Sec. 4.1):

    count       "two circles"                           (counts 2-4; color, background free)
    color       "a red circle"                          (one object)
    background  "a circle on a gray background"         (one object)
    combination "two red circles on a gray background"

An attribute the prompt does not name is free: `sample_scene` picks it at random and the judge
ignores it. Scenes are stored in resolution-free units (centers and radii as fractions of the
image side), so one scene renders at 16, 32 or 64 px. Every color is far from every other in RGB,
so a pixel's color name is never in doubt on a clean render.

The web corpus (`web_caption`) pairs renders with noisy captions: attributes dropped, counts made
vague, and large groups *systematically* undercounted. That noise is what makes the pretrained
model misaligned on counts, as LAION captions make Stable Diffusion bad at counting.
"""
import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import torch

from . import seeds
from .config import UserError


class PromptError(UserError, ValueError):
    """A prompt the world cannot draw or the grammar cannot read, with what would be valid."""


# ----------------------------------------------------------------------------- vocabulary
SHAPES = ("circle", "square", "triangle", "diamond")
UNSEEN_SHAPES = ("diamond",)  # held out: never in feedback or fine-tuning (paper: 5 of 25)
COLORS = {  # object colors, RGB
    "red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 230),
    "yellow": (240, 220, 50), "purple": (160, 60, 200), "white": (245, 245, 245),
}
BACKGROUNDS = {"black": (20, 20, 20), "gray": (128, 128, 128), "white": (245, 245, 245),
               "blue": (40, 80, 230)}  # also object colors: a white object on white is impossible
PALETTE = {**COLORS, **BACKGROUNDS}  # every color a clean pixel can have, by name
NUMBERS = {"one": 1, "two": 2, "three": 3, "four": 4}
MAX_COUNT = 4  # the most objects that fit a 16 px image with clean gaps between them
VAGUE = ("some", "several", "many")  # web-caption words that hide the count
FILLER = ("a", "an", "photo", "picture", "image", "of", "with", "on", "background", "and")
PLURAL = {s: s + "s" for s in SHAPES}
VOCAB = tuple(sorted(set(SHAPES) | set(PLURAL.values()) | set(PALETTE) | set(NUMBERS) | set(VAGUE)
                     | set(FILLER)))
CATEGORIES = ("count", "color", "background", "combination")
ATTRIBUTES = ("shape", "count", "color", "background")  # what a prompt can name
PROMPT_COUNTS = (2, 3, 4)  # counts used by count and combination prompts ("two", "three", "four")
RESOLUTIONS = (16, 32, 64)


@dataclasses.dataclass(frozen=True)
class Spec:
    """What a prompt asks for. None means the prompt leaves that attribute free."""
    shape: str
    count: int | None = 1
    color: str | None = None
    background: str | None = None

    @property
    def category(self) -> str:
        """The paper's four prompt categories; anything else (only web captions) is 'other'."""
        many = self.count is not None and self.count > 1
        if many and self.color and self.background:
            return "combination"
        if many and not self.color and not self.background:
            return "count"
        if self.count == 1 and self.color and not self.background:
            return "color"
        if self.count == 1 and self.background and not self.color:
            return "background"
        return "other"

    @property
    def split(self) -> str:
        return "unseen" if self.shape in UNSEEN_SHAPES else "seen"

    def attributes(self) -> dict:
        """The attributes this prompt names (GenEval-style metadata)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


@dataclasses.dataclass(frozen=True)
class Scene:
    """A full scene description: what `render` draws (positions, radii: fractions of the side)."""
    shape: str
    color: str
    background: str
    objects: tuple  # ((cx, cy, r), ...), one triple per object, in [0, 1] image units

    @property
    def spec(self) -> Spec:
        return Spec(self.shape, len(self.objects), self.color, self.background)


# ----------------------------------------------------------------------------- validation
def _choices(kind: str, valid) -> str:
    return f"valid {kind}: {', '.join(valid)}"


def validate(spec: Spec) -> Spec:
    """Raise PromptError naming the offending attribute for a scene that cannot be drawn."""
    if spec.shape not in SHAPES:
        raise PromptError(f"unknown shape {spec.shape!r}; {_choices('shapes', SHAPES)}")
    if spec.color is not None and spec.color not in COLORS:
        raise PromptError(f"unknown color {spec.color!r}; {_choices('colors', COLORS)}")
    if spec.background is not None and spec.background not in BACKGROUNDS:
        raise PromptError(f"unknown background {spec.background!r}; "
                          f"{_choices('backgrounds', BACKGROUNDS)}")
    if spec.count is not None and not 1 <= spec.count <= MAX_COUNT:
        raise PromptError(f"count {spec.count} is impossible: at most {MAX_COUNT} objects fit the "
                          f"image; valid counts: 1-{MAX_COUNT}")
    if spec.color is not None and spec.color == spec.background:
        raise PromptError(f"a {spec.color} {spec.shape} on a {spec.background} background is "
                          f"invisible: the color must differ from the background")
    return spec


# ----------------------------------------------------------------------------- prompt grammar
def to_prompt(spec: Spec) -> str:
    """Spec -> template prompt: "[count] [color] object [on a <background> background]"."""
    validate(spec)
    noun = spec.shape if spec.count == 1 else PLURAL[spec.shape]
    words = [] if spec.count is None else [_article(spec) if spec.count == 1 else
                                           _number_word(spec.count)]
    words += [spec.color] if spec.color else []
    words += [noun]
    if spec.background:
        words += ["on", "a", spec.background, "background"]
    return " ".join(words)


def _number_word(n: int) -> str:
    return {v: k for k, v in NUMBERS.items()}[n]


def _article(spec: Spec) -> str:
    first = spec.color or spec.shape
    return "an" if first[0] in "aeiou" else "a"


def tokenize(text: str) -> list[str]:
    """Lower-case words; an unknown word is a PromptError naming it and listing the vocabulary."""
    if not text or not text.strip():
        raise PromptError(f"empty prompt; a prompt names a shape, e.g. 'two red circles on a gray "
                          f"background' ({_choices('shapes', SHAPES)})")
    words = text.lower().replace(",", " ").replace(".", " ").split()
    for w in words:
        if w not in VOCAB:
            raise PromptError(f"unknown word {w!r} in prompt {text!r}; the vocabulary is: "
                              f"{', '.join(VOCAB)}")
    return words


def parse(prompt: str) -> Spec:
    """Prompt (or web caption) -> Spec. A number word or a singular noun names the count;
    a plural without a number ("some circles") leaves it free. A color word followed by
    "background" names the background, any other color word the objects' color."""
    words = tokenize(prompt)
    shapes = [w for w in words if w in SHAPES or w in PLURAL.values()]
    if len(shapes) != 1:
        raise PromptError(f"prompt {prompt!r} must name exactly one shape, found "
                          f"{shapes or 'none'}; {_choices('shapes', SHAPES)}")
    noun = shapes[0]
    shape = noun if noun in SHAPES else noun[:-1]
    numbers = [NUMBERS[w] for w in words if w in NUMBERS]
    if len(numbers) > 1:
        raise PromptError(f"prompt {prompt!r} names more than one count: {numbers}")
    count = numbers[0] if numbers else (1 if noun in SHAPES else None)
    color = background = None
    for i, w in enumerate(words):
        if w not in PALETTE:
            continue
        if i + 1 < len(words) and words[i + 1] == "background":
            if background is not None:
                raise PromptError(f"prompt {prompt!r} names two backgrounds")
            background = w
        else:
            if color is not None:
                raise PromptError(f"prompt {prompt!r} names two object colors ({color}, {w}); "
                                  f"all objects of a scene share one color")
            color = w
    return validate(Spec(shape, count, color, background))


def perturb(spec: Spec, attribute: str, rng: np.random.Generator) -> Spec:
    """Change exactly one attribute the spec names to another valid value (the paper's prompt
    augmentation for the reward model, Sec. 3.2, and the judge's rejection self-check)."""
    current = getattr(spec, attribute)
    if current is None:
        raise PromptError(f"the prompt does not name its {attribute}, so it cannot be changed")
    values = {"shape": SHAPES, "count": tuple(range(1, MAX_COUNT + 1)), "color": tuple(COLORS),
              "background": tuple(BACKGROUNDS)}[attribute]
    options = [v for v in values if v != current]
    if attribute == "color":
        options = [v for v in options if v != spec.background]
    if attribute == "background":
        options = [v for v in options if v != spec.color]
    return dataclasses.replace(spec, **{attribute: options[int(rng.integers(len(options)))]})


# ----------------------------------------------------------------------------- prompt sets
def all_prompts() -> list[Spec]:
    """Every template prompt of the four categories (the paper had ~2,700; our world has 316)."""
    specs = []
    for shape in SHAPES:
        specs += [Spec(shape, n) for n in PROMPT_COUNTS]
        specs += [Spec(shape, 1, c) for c in COLORS]
        specs += [Spec(shape, 1, None, b) for b in BACKGROUNDS]
        specs += [Spec(shape, n, c, b) for n in PROMPT_COUNTS for c in COLORS for b in BACKGROUNDS
                  if c != b]
    return specs


def prompt_set(split: str, category: str | None = None) -> list[Spec]:
    """All template prompts of one split ('seen' or 'unseen'), optionally of one category."""
    return [s for s in all_prompts() if s.split == split and category in (None, s.category)]


def eval_prompts(split: str, n_combination: int) -> list[Spec]:
    """The fixed evaluation prompts of a split: every count, color and background prompt plus a
    fixed, evenly spaced subset of the (many) combination prompts, so no category dominates."""
    out = [s for s in prompt_set(split) if s.category != "combination"]
    combos = prompt_set(split, "combination")
    step = len(combos) / n_combination
    return out + [combos[int(i * step)] for i in range(n_combination)]


EVAL_COMBINATIONS = {"seen": 24, "unseen": 12}  # combination prompts in the fixed eval sets
DATA_DIR = Path(__file__).resolve().parent.parent / "data"


def prompt_record(spec: Spec) -> dict:
    return {"prompt": to_prompt(spec), "category": spec.category, "split": spec.split,
            "include": spec.attributes()}


def write_eval_prompt_sets(data_dir: Path = DATA_DIR) -> list[Path]:
    """Write data/eval_{seen,unseen}.jsonl (committed: the fixed evaluation prompts)."""
    paths = []
    for split in ("seen", "unseen"):
        path = Path(data_dir) / f"eval_{split}.jsonl"
        specs = eval_prompts(split, EVAL_COMBINATIONS[split])
        lines = [json.dumps(prompt_record(s)) for s in specs]
        path.write_text("\n".join(lines) + "\n")
        paths.append(path)
    return paths


def load_eval_prompts(split: str, data_dir: Path = DATA_DIR) -> list[Spec]:
    path = Path(data_dir) / f"eval_{split}.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing; recreate it with "
                                f"`python -m tiny_rlhf_t2i.world --write-prompt-sets`")
    return [parse(json.loads(line)["prompt"]) for line in path.read_text().splitlines() if line]


# ----------------------------------------------------------------------------- scenes
RADIUS = {"few": (0.16, 0.24), "many": (0.16, 0.18)}  # object radius range, fraction of the side
GAP = 0.10  # minimum empty space between two objects, fraction of the side (1.6 px at 16 px)


def sample_scene(spec: Spec, rng: np.random.Generator) -> Scene:
    """Fill the spec's free attributes at random and place the objects without overlap."""
    validate(spec)
    count = spec.count or int(rng.integers(1, MAX_COUNT + 1))
    if spec.color is None:
        color = str(rng.choice([c for c in COLORS if c != spec.background]))
    else:
        color = spec.color
    background = spec.background or str(rng.choice([b for b in BACKGROUNDS if b != color]))
    lo, hi = RADIUS["few" if count <= 2 else "many"]
    radii = rng.uniform(lo, hi, size=count)
    if count >= 3:  # three or four objects: one per cell of a 2x2 grid, jittered inside the cell
        cells = rng.permutation(4)[:count]
        centers = [np.array([0.25 + 0.5 * (c % 2), 0.25 + 0.5 * (c // 2)])
                   + rng.uniform(-1, 1, size=2) * (0.25 - r - GAP / 2)
                   for c, r in zip(cells, radii)]
    else:  # one or two objects anywhere: rejection sampling, which succeeds within a few tries
        while True:
            centers = [rng.uniform(r + 0.04, 1 - r - 0.04, size=2) for r in radii]
            if count == 1 or math.dist(*centers) >= radii.sum() + GAP:
                break
    objects = tuple((float(c[0]), float(c[1]), float(r)) for c, r in zip(centers, radii))
    return Scene(spec.shape, color, background, objects)


def shape_mask(shape: str, dx, dy, r):
    """Which pixels (offsets dx, dy from the center, y pointing down) a shape of radius r covers.
    The four shapes have nearly equal areas (~2-3 r^2), so size never gives the shape away.
    Arithmetic, abs and comparisons only, so numpy arrays (`render`) and torch tensors
    (`render_batch`) give the same pixels."""
    if shape == "circle":
        return dx ** 2 + dy ** 2 <= r ** 2
    if shape == "square":  # max(|dx|, |dy|) <= 0.85 r
        return (abs(dx) <= 0.85 * r) & (abs(dy) <= 0.85 * r)
    if shape == "diamond":
        return abs(dx) + abs(dy) <= 1.1 * r
    if shape == "triangle":  # apex up; base below the center, so the mass sits low
        return (dy >= -r) & (dy <= 0.8 * r) & (abs(dx) <= 1.15 * (dy + r) / 1.8)
    raise ValueError(f"unknown shape {shape!r}; {_choices('shapes', SHAPES)}")


def on_grid(cx, cy, r, resolution: int):
    """An object on the pixel grid: center on a pixel center, radius a whole number of pixels
    plus a half (rounded down). An off-grid circle of radius 2.9 px rasterizes to a 5x5 square,
    and then no judge (or person) could tell the shapes apart at 16 px. Floats or float64
    arrays or tensors in (x // 1 is the floor of each), (px, py, r_px) in pixels out."""
    return cx * resolution // 1 + 0.5, cy * resolution // 1 + 0.5, (r * resolution - 0.5) // 1 + 0.5


def render(scene: Scene, resolution: int) -> np.ndarray:
    """Draw a scene: (resolution, resolution, 3) uint8. Hard edges, no anti-aliasing, so every
    pixel is exactly one palette color (what makes the judge exact on clean renders). The
    readable reference; `render_batch` draws many scenes at once, pixel for pixel the same."""
    if resolution not in RESOLUTIONS:
        raise ValueError(f"unsupported resolution {resolution}; valid resolutions: {RESOLUTIONS}")
    image = np.empty((resolution, resolution, 3), np.uint8)
    image[:] = BACKGROUNDS[scene.background]
    ys, xs = np.mgrid[0:resolution, 0:resolution] + 0.5  # pixel centers, (H, W)
    for cx, cy, r in scene.objects:
        px, py, r_px = on_grid(cx, cy, r, resolution)
        mask = shape_mask(scene.shape, xs - px, ys - py, r_px)
        image[mask] = COLORS[scene.color]
    return image


# Scenes as index tensors, for render_batch: shape, color and background by their position in
# SHAPES, COLORS and BACKGROUNDS; objects padded to MAX_COUNT, an absent one far off the image.
COLOR_RGB = torch.tensor(list(COLORS.values()), dtype=torch.uint8)  # (6, 3)
BACKGROUND_RGB = torch.tensor(list(BACKGROUNDS.values()), dtype=torch.uint8)  # (4, 3)
ABSENT = (-1e4, -1e4, 0.0)  # (cx, cy, r) of a padding object: it covers no pixel


def scene_arrays(scenes: list[Scene]) -> dict[str, np.ndarray]:
    """Scenes -> {"shape", "color", "background": (B,) int8 indices, "objects": (B, MAX_COUNT,
    3) float64 (cx, cy, r) in image units, padded with ABSENT}: what render_batch draws."""
    objects = np.array([list(s.objects) + [ABSENT] * (MAX_COUNT - len(s.objects))
                        for s in scenes], np.float64).reshape(len(scenes), MAX_COUNT, 3)
    return {"shape": np.array([SHAPES.index(s.shape) for s in scenes], np.int8),
            "color": np.array([list(COLORS).index(s.color) for s in scenes], np.int8),
            "background": np.array([list(BACKGROUNDS).index(s.background) for s in scenes],
                                   np.int8),
            "objects": objects}


def render_batch(scenes: dict, resolution: int, device="cpu") -> torch.Tensor:
    """Draw B scenes at once on any torch device: (B, H, W, 3) uint8, the very pixels of
    `render` (tests/test_world.py checks thousands of scenes at 16, 32 and 64 px).
    scenes: `scene_arrays` output (numpy or torch). Every shape's mask is computed for every
    object and the scene's own shape picked: four times the arithmetic, no Python loop."""
    if resolution not in RESOLUTIONS:
        raise ValueError(f"unsupported resolution {resolution}; valid resolutions: {RESOLUTIONS}")
    get = lambda k: torch.as_tensor(scenes[k]).to(device)
    cx, cy, r = get("objects").unbind(-1)  # (B, K) each, float64 image units
    px, py, r_px = (v[:, :, None, None] for v in on_grid(cx, cy, r, resolution))  # (B, K, 1, 1)
    centers = torch.arange(resolution, dtype=torch.float64, device=device) + 0.5  # (W,)
    dx, dy = centers.view(1, 1, 1, -1) - px, centers.view(1, 1, -1, 1) - py  # (B,K,1,W) (B,K,H,1)
    masks = torch.stack([shape_mask(s, dx, dy, r_px) for s in SHAPES])  # (S, B, K, H, W)
    rows = torch.arange(len(px), device=device)
    covered = masks[get("shape").long(), rows].any(1)[..., None]  # (B, H, W, 1)
    color = COLOR_RGB.to(device)[get("color").long()][:, None, None]  # (B, 1, 1, 3)
    background = BACKGROUND_RGB.to(device)[get("background").long()][:, None, None]
    return torch.where(covered, color, background)  # (B, H, W, 3)


def render_prompt(prompt: str, resolution: int, seed: int) -> np.ndarray:
    """Convenience: a clean render of a random scene that satisfies the prompt."""
    return render(sample_scene(parse(prompt), np.random.default_rng(seed)), resolution)


# ----------------------------------------------------------------------------- the web corpus
@dataclasses.dataclass
class CaptionNoise:
    """How web-like (noisy) the pretraining captions are. All rates are probabilities."""
    p_drop_color: float = 0.3  # the caption does not mention the objects' color
    p_drop_background: float = 0.4  # the caption does not mention the background
    p_vague_count: float = 0.2  # a count >= 2 becomes "some"/"several"/"many" or a bare plural
    p_undercount: float = 0.7  # a group of >= undercount_from objects is captioned one too few
    undercount_from: int = 3  # smallest group that people (and alt-texts) undercount


PHRASINGS = ("{np}", "a photo of {np}", "a picture of {np}", "an image of {np}")
PHRASINGS_BG = ("{np} on a {bg} background", "a photo of {np} on a {bg} background",
                "a {bg} background with {np}", "an image of {np} on a {bg} background")


def web_caption(scene: Scene, noise: CaptionNoise, rng: np.random.Generator) -> str:
    """A noisy, web-like caption of a scene (README, "The world and the judge").

    Why *systematic* undercounting: classifier-free guidance sharpens the most likely image for a
    caption, so random count noise that leaves the true count most likely is fixed by guidance and
    by more training. Undercounting larger groups makes "three" mostly mean four objects in the
    data itself, which only feedback can correct."""
    n = len(scene.objects)
    stated = n - 1 if n >= noise.undercount_from and rng.random() < noise.p_undercount else n
    color = None if rng.random() < noise.p_drop_color else scene.color
    if stated >= 2 and rng.random() < noise.p_vague_count:
        vague = rng.choice(VAGUE + ("",))
        words = [str(vague)] if vague else []
    else:
        words = [_article(Spec(scene.shape, 1, color))] if stated == 1 else [_number_word(stated)]
    words += [color] if color else []
    words += [scene.shape if stated == 1 else PLURAL[scene.shape]]
    np_ = " ".join(words)
    if rng.random() < noise.p_drop_background:
        return str(rng.choice(PHRASINGS)).format(np=np_)
    return str(rng.choice(PHRASINGS_BG)).format(np=np_, bg=scene.background)


def web_scene(rng: np.random.Generator, noise: CaptionNoise, shapes=SHAPES) -> tuple[Scene, str]:
    """One pretraining pair: a random scene (every shape, seen and unseen, as LAION holds every
    object) and its web caption. Drawing these is most of the cost of a web example; rendering
    is the rest."""
    spec = Spec(str(rng.choice(shapes)), int(rng.integers(1, MAX_COUNT + 1)))
    scene = sample_scene(spec, rng)
    return scene, web_caption(scene, noise, rng)


def web_corpus_scenes(indices, noise: CaptionNoise, corpus_seed: int = 0):
    """The scenes and captions of examples `indices` of the (finite, fixed) web corpus: example
    i is always the same, whatever the batch or the run (its own stream, seeds.web_example)."""
    scenes, captions = zip(*(web_scene(seeds.web_example(corpus_seed, int(i)), noise)
                             for i in indices))
    return list(scenes), list(captions)


def web_corpus_batch(indices, noise: CaptionNoise, resolution: int, corpus_seed: int = 0):
    """Examples `indices` of the web corpus, rendered: ((B, H, W, 3) uint8, [caption] * B).
    corpus.WebCorpus serves the same examples from a table, for a GPU."""
    scenes, captions = web_corpus_scenes(indices, noise, corpus_seed)
    return render_batch(scene_arrays(scenes), resolution).numpy(), captions


if __name__ == "__main__":
    import argparse
    ap = argparse.ArgumentParser(description="world utilities")
    ap.add_argument("--write-prompt-sets", action="store_true",
                    help="write data/eval_seen.jsonl and data/eval_unseen.jsonl")
    if ap.parse_args().write_prompt_sets:
        for p in write_eval_prompt_sets():
            print("wrote", p)
