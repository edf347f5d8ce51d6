"""Stage 1: collect feedback. Sample the pretrained model on prompts of the four categories and
label each image good or bad (Lee et al. 2023, Sec. 3.1).

A feedback folder holds
    images/<id>.png   the samples
    samples.jsonl     one row per image: id, image, prompt, category, split, seed, how it was
                      drawn (guidance_scale, steps) and the judge's verdict (judge_good,
                      judge_reason)
    labels.jsonl      one row per labeled image: the same fields plus label (1 good, 0 bad),
                      reason and labeler ("judge" or "human"); stage 2 trains on this file
Both files are rewritten atomically after every chunk, so an interrupted collection resumes
from its last chunk without losing or duplicating an image. People can label the same folder
in a browser: `python -m tiny_rlhf_t2i.label FOLDER`.

Stage 3 learns from these folders: `load_d_model` makes D_model of Eq. 2 from a labeled folder
and an unlabeled one, every image scored by the reward.
"""
import dataclasses
import textwrap
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from tqdm import tqdm

from . import seeds
from .config import UserError
from .diffusion import to_model_space
from .evaluate import generate
from .files import check_writable, read_jsonl, save_image, write_jsonl
from .judge import judge
from .text import encode
from .world import CATEGORIES, parse, prompt_set, to_prompt

REQUIRED = ("id", "image", "prompt", "category", "split", "seed", "label")


def feedback_records(split: str, per_category: int, seed: int) -> list[dict]:
    """`per_category` samples for each category, cycling through that category's prompts of the
    split, so rare categories (9 count prompts) are as well labeled as common ones (198
    combinations). The paper sampled its 2,700 prompts 6 to 60 times each."""
    rng = np.random.default_rng(seed)
    records = []
    for category in CATEGORIES:
        specs = prompt_set(split, category)
        records += [{"prompt": to_prompt(specs[k]), "category": category, "split": split}
                    for k in rng.permutation(per_category) % len(specs)]
    for i, r in enumerate(records):
        r["seed"] = int(seed * seeds.FEEDBACK_STRIDE + i)
        r["id"] = f"{split[0]}{seed}_{i:06d}"
        r["image"] = f"images/{r['id']}.png"
    return records


def collect(model, folder, records: list[dict], num_inference_steps: int,
            guidance_scale: float, flip_rate: float, labeler: str = "judge",
            chunk: int = 256) -> list[dict]:
    """Sample every record, judge it, and label it ("judge": the judge's verdict, flipped with
    probability flip_rate as people disagree; "human": leave labeling to the browser page)."""
    folder = check_writable(folder)
    (folder / "images").mkdir(exist_ok=True)
    samples_path, labels_path = folder / "samples.jsonl", folder / "labels.jsonl"
    samples = read_rows(samples_path, "train_reward.py") if samples_path.exists() else []
    done = {r["id"]: r for r in samples}
    labels = (read_rows(labels_path, "train_reward.py", label_check(done))
              if labels_path.exists() else [])
    extra = sorted(set(done) - {r["id"] for r in records})
    if extra:  # another set (other seed or size) lives here: never mix two sets in one folder
        raise UserError(f"{folder} holds images of another feedback set ({extra[0]}, "
                        f"{len(extra)} in all); delete the folder or choose another "
                        f"--feedback_dir")
    drawn = (guidance_scale, num_inference_steps)
    for r in records:  # resuming is only sound if the folder was made for these very records
        old = done.get(r["id"])
        if old is not None and (old["prompt"], old["seed"]) != (r["prompt"], r["seed"]):
            raise UserError(f"{folder} was made with other settings (its image {r['id']} "
                            f"is for {old['prompt']!r}, now asked for {r['prompt']!r}); delete "
                            f"the folder or choose another --feedback_dir")
        # ... and drawn the same way (rows written before these fields existed pass)
        if old is not None and (old.get("guidance_scale", drawn[0]),
                                old.get("steps", drawn[1])) != drawn:
            raise UserError(f"{folder} was sampled with guidance {old['guidance_scale']} and "
                            f"{old['steps']} steps, now asked for guidance {drawn[0]} and "
                            f"{drawn[1]} steps; delete the folder or choose another "
                            f"--feedback_dir")
    n_read = len(labels)
    if labeler == "judge" and samples and labels_path.exists() and not labels:
        # no kill leaves this (the first write has rows): a person's file, emptied or not yet
        # filled (--labeler human, the browser's undo); the judge does not overwrite it unasked
        raise UserError(f"{labels_path} is empty while {samples_path.name} has {len(samples)} "
                        f"images; delete it to have the judge label them, or label them in "
                        f"your browser: python -m tiny_rlhf_t2i.label {folder}")
    if labeler == "judge":  # a kill between writing samples.jsonl and labels.jsonl
        labeled = {r["id"] for r in labels}
        labels += [_judge_label(r, r["judge_good"], r["judge_reason"], flip_rate)
                   for r in samples if r["id"] not in labeled]
    if samples and (not labels_path.exists() or len(labels) > n_read):
        write_jsonl(labels_path, labels)  # the rows that were lost with the kill
    todo = [r for r in records if r["id"] not in done]
    with tqdm(total=len(records), initial=len(records) - len(todo),  # closed on an error too:
              desc=f"sample {folder.name}", dynamic_ncols=True) as bar:  # see train_loop.train
        for i in range(0, len(todo), chunk):
            part = todo[i:i + chunk]
            images = generate(model, part, num_inference_steps, guidance_scale)
            for r, image in zip(part, images):
                Image.fromarray(image).save(folder / r["image"])
                good, reason = judge(image, r["prompt"])
                samples.append({**r, "judge_good": good, "judge_reason": reason,
                                "guidance_scale": guidance_scale, "steps": num_inference_steps})
                if labeler == "judge":
                    labels.append(_judge_label(r, good, reason, flip_rate))
            write_jsonl(samples_path, samples)  # images first, then the rows that point at them
            write_jsonl(labels_path, labels)
            bar.update(len(part))
    return labels


SAMPLE_ONLY = ("judge_good", "judge_reason", "guidance_scale", "steps")  # not in labels.jsonl


def _judge_label(record: dict, good: bool, reason: str, flip_rate: float) -> dict:
    """The labels.jsonl row of the procedural labeler: the judge's verdict, flipped with
    probability flip_rate (people disagree), the same for a record whatever the run."""
    flip = seeds.label_flip(record["seed"]).random() < flip_rate
    row = {k: v for k, v in record.items() if k not in SAMPLE_ONLY}
    return {**row, "label": int(good != flip),
            "reason": reason + (" (label flipped)" if flip else ""), "labeler": "judge"}


def read_rows(path, made_by: str, check=None) -> list[dict]:
    """files.read_jsonl, with a bad line reported in one line that says how to recover."""
    try:
        return read_jsonl(path, check)
    except FileNotFoundError:
        raise UserError(f"{path} does not exist; run `{made_by}` first") from None
    except ValueError as e:
        raise UserError(f"{e}; fix or delete the line, or delete the file and run "
                        f"`{made_by}` again") from None


def label_check(samples):
    """The check of a labels.jsonl row (files.read_jsonl) in a folder whose samples.jsonl holds
    the ids `samples`: its fields, a label of 0 or 1, and an image of samples.jsonl. A label of
    any other image (a row added by hand, or left from another set) is refused, not trained on;
    stages 1, 2 and 3 all read labels through it."""
    def check(row) -> str | None:
        missing = [k for k in REQUIRED if k not in row]
        if missing:
            return f"missing {missing}"
        if type(row["label"]) is not int or row["label"] not in (0, 1):  # json's true is not 1
            return f"label must be 0 or 1, not {row['label']!r}"
        if row["id"] not in samples:
            return f"id {row['id']!r} is not in the folder's samples.jsonl"
        return None
    return check


def load_rows(folder, name: str, made_by: str, check=None) -> tuple[list[dict], np.ndarray]:
    """The rows of folder/name (each passing `check`, see read_jsonl) and their images:
    (rows, (N, H, W, 3) uint8; (0, 0, 0, 3) for no rows, whose size nothing tells)."""
    folder = Path(folder)
    rows = read_rows(folder / name, made_by, check)  # a missing file: "run `made_by` first"
    try:
        images = np.stack([np.asarray(Image.open(folder / r["image"]).convert("RGB"))
                           for r in rows]) if rows else np.zeros((0, 0, 0, 3), np.uint8)
    except (OSError, ValueError) as e:
        raise UserError(f"an image of {folder} is missing or corrupt ({e}); "
                        f"run `{made_by}` again") from None
    return rows, images


def load_labeled(folder, made_by: str) -> tuple[list[dict], np.ndarray]:
    """The labeled images of a feedback folder: (rows, (N, H, W, 3) uint8 images), checked as
    load_feedback checks them (stage 2 reads them here, stage 3 there)."""
    feedback = load_feedback(folder, made_by)
    return feedback.rows, feedback.images


@dataclasses.dataclass
class DModel:
    """D_model of Eq. 2: the labeled feedback images, then the unlabeled samples."""
    x: torch.Tensor  # (N, 3, H, W) images in [-1, 1]
    ids: torch.Tensor  # (N, L) their prompts
    reward: torch.Tensor  # (N,) r_phi(x, z)
    gold: torch.Tensor  # (N,) the gold judge's verdict, 1. or 0.
    labeled: torch.Tensor  # (N,) bool: from the labeled feedback set (else unlabeled)
    group: list[str]  # "category/count" of each prompt (losses.balance_groups)


@dataclasses.dataclass
class Feedback:
    """A labeled feedback set: what a person (or the judge) said of each image."""
    rows: list[dict]  # labels.jsonl rows: id, prompt, category, label, ...
    images: np.ndarray  # (N, H, W, 3) uint8, row i the image of rows[i]
    judged: dict  # the gold judge's verdict of each image by id (gold weights)


def stack_images(parts: list[np.ndarray]) -> np.ndarray:
    """np.concatenate of (N_i, H, W, 3) image arrays, skipping empty ones (whose size is unknown)."""
    full = [p for p in parts if len(p)]
    return np.concatenate(full) if full else parts[0]


def load_feedback(folder: Path, made_by: str) -> Feedback:
    """A labeled feedback folder: its label rows (each of an image in samples.jsonl:
    label_check), their images, and the judge's verdict of each image (from samples.jsonl)."""
    folder = Path(folder)
    if not (folder / "labels.jsonl").exists():  # named first: the file asked for
        raise UserError(f"{folder / 'labels.jsonl'} does not exist; run `{made_by}` first")
    judged = {r["id"]: r["judge_good"]  # the rows only: load_rows loads the labeled images
              for r in read_rows(folder / "samples.jsonl", made_by)}
    rows, images = load_rows(folder, "labels.jsonl", made_by, label_check(judged))
    return Feedback(rows, images, judged)


def load_d_model(labeled: Feedback, unlabeled: Path, reward, device) -> DModel:
    """D_model from a labeled feedback set (load_feedback) and an unlabeled folder, every image
    scored by the reward r."""
    rows, judged = labeled.rows, labeled.judged
    u_rows, u_images = load_rows(unlabeled, "samples.jsonl", "python finetune.py")
    all_rows, all_images = rows + u_rows, stack_images([labeled.images, u_images])
    prompts = [r["prompt"] for r in all_rows]
    return DModel(x=to_model_space(all_images), ids=encode(prompts),
                  reward=reward.to(device).score(all_images, prompts).cpu(),
                  gold=torch.tensor([float(judged[r["id"]]) for r in rows]
                                    + [float(r["judge_good"]) for r in u_rows]),
                  labeled=torch.arange(len(all_rows)) < len(rows),
                  group=[f"{r['category']}/{parse(r['prompt']).count}" for r in all_rows])


def label_summary(rows: list[dict]) -> dict:
    """Fraction labeled good per category (the paper: count 34%, color 70%, overall 46.5%)."""
    mean = lambda labels: float(np.mean(labels)) if labels else float("nan")
    return {"overall": mean([r["label"] for r in rows]), "n": len(rows),
            **{c: mean([r["label"] for r in rows if r["category"] == c]) for c in CATEGORIES}}


def save_gallery(rows: list[dict], images, path, per_row: int = 4, scale: int = 4) -> None:
    """Good and bad examples of each category, each image captioned with its prompt and the
    label's reason, so a person can see *why* an image is bad."""
    font = ImageFont.load_default()
    side = images.shape[1] * scale
    cell_w, text_h = max(side, 220), 5 * 11  # five lines of the ~6x11 px default font
    cells = [[i for i, r in enumerate(rows) if r["category"] == c and r["label"] == lab][:per_row]
             for c in CATEGORIES for lab in (1, 0)]  # one row per (category, label)
    grid = Image.new("RGB", (per_row * (cell_w + 4), len(cells) * (side + text_h + 6)), "white")
    draw = ImageDraw.Draw(grid)
    for y, row in enumerate(cells):
        for x, i in enumerate(row):
            left, top = x * (cell_w + 4), y * (side + text_h + 6)
            grid.paste(Image.fromarray(images[i]).resize((side, side), Image.NEAREST), (left, top))
            verdict = f"{rows[i]['category']}: {'good' if rows[i]['label'] else 'bad'}"
            draw.text((left + side + 4, top + 2), verdict, fill="black", font=font)
            text = textwrap.wrap(f"{rows[i]['prompt']}: {rows[i].get('reason', '')}",
                                 cell_w // 6)[:5]
            draw.multiline_text((left, top + side + 2), "\n".join(text), fill="black", font=font)
    save_image(grid, path)
