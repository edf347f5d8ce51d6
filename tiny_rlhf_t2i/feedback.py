"""Stage 1: collect feedback. Sample the pretrained model on prompts of the four categories and
label each image good or bad (Lee et al. 2023, Sec. 3.1).

A feedback folder holds
    images/<id>.png   the samples
    samples.jsonl     one row per image: id, image, prompt, category, split, seed, and the
                      judge's verdict (judge_good, judge_reason)
    labels.jsonl      one row per labeled image: the same fields plus label (1 good, 0 bad),
                      reason and labeler ("judge" or "human"); stage 2 trains on this file
Both files are rewritten atomically after every chunk, so an interrupted collection resumes
from its last chunk without losing or duplicating an image. People can label the same folder
in a browser: `python -m tiny_rlhf_t2i.label FOLDER`.
"""
import json
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from .evaluate import generate
from .files import atomic_write_text, save_grid
from .judge import judge
from .world import CATEGORIES, prompt_set, to_prompt

REQUIRED = ("id", "image", "prompt", "category", "split", "seed", "label")


def feedback_records(split: str, per_category: int, seed: int) -> list[dict]:
    """`per_category` samples for each category, cycling through that category's prompts of the
    split, so rare categories (9 count prompts) are as well labeled as common ones (198
    combinations). The paper sampled its 2,700 prompts 6 to 60 times each."""
    rng = np.random.default_rng(seed)
    records = []
    for category in CATEGORIES:
        specs = prompt_set(split, category)
        order = rng.permutation(per_category) % len(specs)
        for k in order:
            records.append({"prompt": to_prompt(specs[k]), "category": category, "split": split})
    for i, r in enumerate(records):
        r["seed"] = int(seed * 1_000_000 + i)
        r["id"] = f"{split[0]}{seed}_{i:06d}"
        r["image"] = f"images/{r['id']}.png"
    return records


def read_jsonl(path: Path, made_by: str) -> list[dict]:
    """Rows of a JSONL file; a malformed line is a one-line error naming the file and line."""
    rows = []
    for n, line in enumerate(Path(path).read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise SystemExit(f"error: {path} line {n} is not valid JSON ({e.msg}); fix or delete "
                             f"the line, or delete the file and run `{made_by}` again") from None
        rows.append(row)
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))


def collect(model, folder, records: list[dict], num_inference_steps: int,
            guidance_scale: float, flip_rate: float, labeler: str = "judge",
            chunk: int = 256) -> list[dict]:
    """Sample every record, judge it, and label it ("judge": the judge's verdict, flipped with
    probability flip_rate as people disagree; "human": leave labeling to the browser page)."""
    folder = Path(folder)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    samples_path, labels_path = folder / "samples.jsonl", folder / "labels.jsonl"
    samples = read_jsonl(samples_path, "train_reward.py") if samples_path.exists() else []
    labels = read_jsonl(labels_path, "train_reward.py") if labels_path.exists() else []
    done = {r["id"]: r for r in samples}
    for r in records:  # resuming is only sound if the folder was made for these very records
        old = done.get(r["id"])
        if old is not None and (old["prompt"], old["seed"]) != (r["prompt"], r["seed"]):
            raise SystemExit(f"error: {folder} was made with other settings (its image {r['id']} "
                             f"is for {old['prompt']!r}, now asked for {r['prompt']!r}); delete "
                             f"the folder or choose another --feedback_dir")
    todo = [r for r in records if r["id"] not in done]
    bar = tqdm(total=len(records), initial=len(records) - len(todo), desc=f"sample {folder.name}",
               dynamic_ncols=True)
    for i in range(0, len(todo), chunk):
        part = todo[i:i + chunk]
        images = generate(model, part, num_inference_steps, guidance_scale)
        for r, image in zip(part, images):
            Image.fromarray(image).save(folder / r["image"])
            good, reason = judge(image, r["prompt"])
            sample_row = {**r, "judge_good": good, "judge_reason": reason}
            samples.append(sample_row)
            if labeler == "judge":
                flip = np.random.default_rng(r["seed"]).random() < flip_rate
                labels.append({**r, "label": int(good != flip),
                               "reason": reason + (" (label flipped)" if flip else ""),
                               "labeler": "judge"})
        write_jsonl(samples_path, samples)  # images first, then the rows that point at them
        write_jsonl(labels_path, labels)
        bar.update(len(part))
    bar.close()
    return labels


def load_labeled(folder, made_by: str):
    """The labeled images of a feedback folder: (rows, (N, H, W, 3) uint8 images)."""
    folder = Path(folder)
    path = folder / "labels.jsonl"
    if not path.exists():
        raise SystemExit(f"error: {path} does not exist; run `{made_by}` first")
    rows = read_jsonl(path, made_by)
    for n, row in enumerate(rows, start=1):
        missing = [k for k in REQUIRED if k not in row]
        if missing or row["label"] not in (0, 1):
            raise SystemExit(f"error: {path} row {n} is malformed (missing {missing} or label "
                             f"not 0/1); fix it or run `{made_by}` again")
    try:
        images = np.stack([np.asarray(Image.open(folder / r["image"]).convert("RGB"))
                           for r in rows]) if rows else np.zeros((0, 16, 16, 3), np.uint8)
    except (OSError, ValueError) as e:
        raise SystemExit(f"error: an image of {folder} is missing or corrupt ({e}); "
                         f"run `{made_by}` again") from None
    return rows, images


def label_summary(rows: list[dict]) -> dict:
    """Fraction labeled good per category (the paper: count 34%, color 70%, overall 46.5%)."""
    out = {"overall": float(np.mean([r["label"] for r in rows])) if rows else float("nan"),
           "n": len(rows)}
    for c in CATEGORIES:
        labels = [r["label"] for r in rows if r["category"] == c]
        out[c] = float(np.mean(labels)) if labels else float("nan")
    return out


def save_gallery(rows: list[dict], images, path, per_row: int = 8) -> None:
    """Good and bad examples of each category, one row each, for a person to look at."""
    grid_rows, labels = [], []
    for c in CATEGORIES:
        for lab, name in ((1, "good"), (0, "bad")):
            idx = [i for i, r in enumerate(rows) if r["category"] == c and r["label"] == lab]
            if idx:
                grid_rows.append([images[i] for i in idx[:per_row]])
                labels.append(f"{c}: {name}")
    if grid_rows:
        save_grid(grid_rows, labels, path)
