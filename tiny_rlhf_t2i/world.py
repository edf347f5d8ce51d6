"""The synthetic world's vocabulary and prompts: our stand-in for the prompts of Stable Diffusion.

A scene is `count` identical shapes of one color on a plain background, so a prompt follows the
paper's template "count color object background" (Lee et al. 2023, Sec. 4.1):

    count       "two circles"                           (counts 2-4; color, background free)
    color       "a red circle"                          (one object)
    background  "a circle on a gray background"         (one object)
    combination "two red circles on a gray background"

A prompt reads into a `Spec` (`parse`) and back (`to_prompt`); an attribute the prompt does not
name is None there, free. The fixed evaluation prompts of the seen and unseen shapes are
committed in data/ (`write_eval_prompt_sets`, `load_eval_prompts`).
"""
import dataclasses
import json
from pathlib import Path

import numpy as np

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
    clash = {"color": spec.background, "background": spec.color}.get(attribute)  # invisible
    options = [v for v in values if v not in (current, clash)]
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
    """A line of data/eval_*.jsonl: the prompt and, GenEval-style, the attributes it names."""
    return {"prompt": to_prompt(spec), "category": spec.category, "split": spec.split,
            "include": {k: v for k, v in dataclasses.asdict(spec).items() if v is not None}}


def write_eval_prompt_sets(data_dir: Path = DATA_DIR) -> list[Path]:
    """Write data/eval_{seen,unseen}.jsonl (committed: the fixed evaluation prompts)."""
    paths = [Path(data_dir) / f"eval_{split}.jsonl" for split in ("seen", "unseen")]
    for split, path in zip(("seen", "unseen"), paths):
        path.write_text("".join(json.dumps(prompt_record(s)) + "\n"
                                for s in eval_prompts(split, EVAL_COMBINATIONS[split])))
    return paths


def load_eval_prompts(split: str, data_dir: Path = DATA_DIR) -> list[Spec]:
    path = Path(data_dir) / f"eval_{split}.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing; recreate it with "
                                f"`python -m tiny_rlhf_t2i.world --write-prompt-sets`")
    return [parse(json.loads(line)["prompt"]) for line in path.read_text().splitlines() if line]


if __name__ == "__main__":
    import argparse
    ap = argparse.ArgumentParser(description="world utilities")
    ap.add_argument("--write-prompt-sets", action="store_true",
                    help="write data/eval_seen.jsonl and data/eval_unseen.jsonl")
    if ap.parse_args().write_prompt_sets:
        for p in write_eval_prompt_sets():
            print("wrote", p)
