"""Evaluation with the gold (noise-free) judge, on the fixed prompts of data/eval_*.jsonl.

One sample per (prompt, seed); the same prompts, seeds and sampler noise for every model, so two
models' images of one (prompt, seed) pair can be compared side by side (the paper's win rate).
`Evaluator` bundles it for stage 3: alignment, fidelity, mean reward and count per number of
every model and round.
"""
import json
import math
from pathlib import Path

import numpy as np
from tqdm import tqdm

from . import seeds
from .diffusion import sample, to_uint8
from .fidelity import (clean_references, diversity, feature_net, features, frechet_distance,
                       shape_fit_summary)
from .files import atomic_write_text
from .judge import analyze, verdict
from .world import (BACKGROUNDS, CATEGORIES, COLORS, SHAPES, UNSEEN_SHAPES, Spec,
                    load_eval_prompts, prompt_set, to_prompt)

Z95 = 1.959964  # two-sided 95% normal quantile


def proportion_ci(k: int, n: int) -> dict:
    """Fraction k/n with its 95% Wilson score interval (sane at 0% and 100%, unlike +-1.96 se)."""
    if n == 0:
        return {"mean": float("nan"), "lo": float("nan"), "hi": float("nan"), "n": 0}
    p = k / n
    denom = 1 + Z95 ** 2 / n
    center = (p + Z95 ** 2 / (2 * n)) / denom
    half = Z95 * math.sqrt(p * (1 - p) / n + Z95 ** 2 / (4 * n * n)) / denom
    return {"mean": p, "lo": center - half, "hi": center + half, "n": n}


def eval_records(samples_per_prompt: int, val: bool = False) -> list[dict]:
    """The evaluation records: prompt, category, split and the seed of each sample. val: the
    same prompts with other seeds (seeds.eval_seed), to choose settings on without touching
    the reported (test) samples."""
    return [{"prompt": to_prompt(spec), "category": spec.category, "split": split,
             "seed": seeds.eval_seed(split, i, k, val)}
            for split in ("seen", "unseen") for i, spec in enumerate(load_eval_prompts(split))
            for k in range(samples_per_prompt)]


def generate(model, records: list[dict], num_inference_steps: int,
             guidance_scale: float) -> np.ndarray:
    """Sample one image per record: (N, H, W, 3) uint8."""
    return to_uint8(sample(model, [r["prompt"] for r in records], [r["seed"] for r in records],
                           num_inference_steps=num_inference_steps,
                           guidance_scale=guidance_scale))


def alignment(goods: list[bool], records: list[dict]) -> dict:
    """Alignment (fraction judged good) overall, per category and per split, each with a 95% CI."""
    goods = np.asarray(goods, bool)
    groups = {"overall": np.ones(len(records), bool)}
    for key, values in (("category", CATEGORIES), ("split", ("seen", "unseen"))):
        for v in values:
            groups[v] = np.array([r[key] == v for r in records])
    for split in ("seen", "unseen"):  # e.g. "seen/count": the category table of one split
        for c in CATEGORIES:
            groups[f"{split}/{c}"] = groups[split] & groups[c]
    return {name: proportion_ci(int(goods[m].sum()), int(m.sum())) for name, m in groups.items()}


def score(images: np.ndarray, records: list[dict],
          analyses: list[dict] | None = None) -> tuple[dict, list[bool], list[str], list[bool]]:
    """Judge every image against its prompt: (metrics, goods, reasons, strict goods), goods and
    reasons the judge's (the labels' judge), strict goods the strict judge's; metrics hold the
    strict judge's alignment and well-formed rate too. analyses: the images' judge.analyze, if
    the caller has them (Evaluator measures shape fit on them too)."""
    analyses = analyses or [analyze(im) for im in images]  # once, for every verdict
    verdicts = [verdict(a, r["prompt"]) for a, r in zip(analyses, records)]
    goods = [g for g, _ in verdicts]
    strict = [verdict(a, r["prompt"], strict=True)[0] for a, r in zip(analyses, records)]
    n = len(analyses)
    metrics = {"alignment": alignment(goods, records),
               "well_formed": proportion_ci(sum(a["well_formed"] for a in analyses), n),
               # the strict judge (judge.MIN_FIT): what the labels' judge let through
               "alignment_strict": alignment(strict, records),
               "well_formed_strict": proportion_ci(sum(a["well_formed_strict"] for a in analyses),
                                                   n)}
    return metrics, goods, [r for _, r in verdicts], strict


def count_breakdown(records: list[dict], goods: list[bool], reasons: list[str]) -> dict:
    """The count prompts by the number asked for: {"two": {"good", "asked", "malformed"}, ...},
    malformed = how many of the bad images hold a blob that is not a clean shape."""
    out = {}
    for r, good, reason in zip(records, goods, reasons):
        if r["category"] == "count":
            tally = out.setdefault(r["prompt"].split()[0], {"good": 0, "asked": 0, "malformed": 0})
            tally["good"] += int(good)
            tally["asked"] += 1
            tally["malformed"] += int(not good and "malformed" in reason)
    return out


def evaluate_model(model, samples_per_prompt: int, num_inference_steps: int,
                   guidance_scale: float):
    """Sample the fixed evaluation prompts and judge them: (metrics, records, images, goods)."""
    records = eval_records(samples_per_prompt)
    images = generate(model, records, num_inference_steps, guidance_scale)
    metrics, goods, reasons, _ = score(images, records)
    for r, g, why in zip(records, goods, reasons):
        r["good"], r["reason"] = g, why
    return metrics, records, images, goods


def fmt(ci: dict) -> str:
    """'62.5% [55.1, 69.4]' for tables."""
    return f"{100 * ci['mean']:.1f}% [{100 * ci['lo']:.1f}, {100 * ci['hi']:.1f}]"


def alignment_table(columns: dict[str, dict]) -> str:
    """Markdown table: one row per group, one column per model's metrics."""
    names = list(columns)
    head = "| group | " + " | ".join(names) + " |\n|---|" + "---|" * len(names) + "\n"
    rows = ["overall", *CATEGORIES, "seen", "unseen"]
    lines = [f"| {g} | " + " | ".join(fmt(columns[n]["alignment"][g]) for n in names) + " |"
             for g in rows]
    lines.append("| well-formed | " + " | ".join(fmt(columns[n]["well_formed"]) for n in names)
                 + " |")
    return head + "\n".join(lines) + "\n"


def sample_grid_rows(model, prompts: list[str], n_seeds: int, num_inference_steps: int,
                     guidance_scale: float):
    """Images for a grid: one row per prompt, n_seeds columns (fixed seeds)."""
    records = [{"prompt": p, "seed": seeds.GRID_SEED + j} for p in prompts for j in range(n_seeds)]
    images = generate(model, records, num_inference_steps, guidance_scale)
    return [list(images[i * n_seeds:(i + 1) * n_seeds]) for i in range(len(prompts))]


GRID_PROMPTS = ["a red circle", "a square on a gray background", "two triangles",
                "three squares", "four circles", "two green triangles on a black background",
                "three yellow circles on a blue background", "a purple diamond",
                "three diamonds"]  # fixed prompts of every stage's sample grid (last two unseen)


# ----------------------------------------------------------------- choosing a round (stage 3)
def heldout_records(samples_per_prompt: int) -> list[dict]:
    """Stage 3's held-out prompts, to choose the round a run keeps without looking at the
    evaluation's prompts: the seen combination prompts the evaluation leaves out, and one seen
    shape of a color on a background ("a red circle on a gray background"), a template neither
    feedback nor the evaluation holds, where a lone shape drawn as a blob shows. Seeds of their
    own stream (seeds.heldout_seed)."""
    in_eval = {to_prompt(s) for s in load_eval_prompts("seen")}
    combos = [s for s in prompt_set("seen", "combination") if to_prompt(s) not in in_eval]
    lone = [Spec(shape, 1, c, b) for shape in SHAPES if shape not in UNSEEN_SHAPES
            for c in COLORS for b in BACKGROUNDS if c != b]
    return [{"prompt": to_prompt(spec), "category": spec.category, "split": "seen",
             "seed": seeds.heldout_seed(i, k)}
            for i, spec in enumerate(combos + lone) for k in range(samples_per_prompt)]


def pick_round(signals: list[dict], tolerance: float) -> int:
    """The round a run keeps (0: the pretrained model, signals[0]): the highest mean reward on
    the held-out samples among the rounds whose well-formed rate is at most `tolerance` below
    the pretrained model's, so a run never ends on a round that bought reward with fidelity."""
    floor = signals[0]["well_formed"] - tolerance
    allowed = [k for k, s in enumerate(signals) if k == 0 or s["well_formed"] >= floor]
    return max(allowed, key=lambda k: signals[k]["reward"])


# ----------------------------------------------------------------- scoring a scorer (stage 2)
def pairwise_accuracy(scores, labels, prompts) -> float:
    """For two images of the same prompt whose gold labels differ, how often the scorer ranks
    the good one higher (ties count half): the paper's Fig. 3a measure."""
    scores, labels = np.asarray(scores, float), np.asarray(labels, int)
    prompts = np.asarray(prompts)
    wins = pairs = 0.0
    for p in np.unique(prompts):
        m = prompts == p
        good, bad = scores[m & (labels == 1)], scores[m & (labels == 0)]
        if len(good) and len(bad):
            diff = good[:, None] - bad[None, :]
            wins += (diff > 0).sum() + 0.5 * (diff == 0).sum()
            pairs += diff.size
    return float(wins / pairs) if pairs else float("nan")


# ----------------------------------------------------------------- side by side (stage 3)
def win_rate(goods_new, goods_old) -> dict:
    """Same prompt and seed, judged by the gold judge: the new model wins when only its image
    is aligned, loses when only the old one's is, ties otherwise (the paper's Fig. 5 analogue)."""
    new, old = np.asarray(goods_new, bool), np.asarray(goods_old, bool)
    n = len(new)
    return {"win": float((new & ~old).sum() / n), "tie": float((new == old).sum() / n),
            "loss": float((~new & old).sum() / n), "n": n}


class Evaluator:
    """Every model on the same prompts, seeds and sampler noise, judged by the gold judge:
    alignment, well-formed, FD, shape fit, diversity, count per number, and the mean reward of
    a reward model (which rises while the gold alignment falls when the reward is exploited)."""

    def __init__(self, samples_per_prompt: int, num_inference_steps: int, guidance_scale: float,
                 resolution: int, reward, fd_cache, fd_net_steps: int, val: bool = False,
                 heldout_per_prompt: int = 0):
        self.steps, self.guidance_scale, self.reward = num_inference_steps, guidance_scale, reward
        self.records = eval_records(samples_per_prompt, val)
        self.heldout_records = heldout_records(heldout_per_prompt)  # [] when no round is chosen
        self.fnet = feature_net(resolution, cache_dir=fd_cache, steps=fd_net_steps)
        self.ref_feats = features(self.fnet, clean_references(self.records, resolution))
        self.heldout_ref_feats = (features(self.fnet, clean_references(self.heldout_records,
                                                                        resolution))
                                  if self.heldout_records else None)

    @classmethod
    def for_config(cls, cfg, resolution: int, reward):
        """Stage 3's evaluator from its config (finetune.FinetuneConfig); the FD ruler is cached
        beside the run folder."""
        return cls(cfg.eval_samples_per_prompt, cfg.num_inference_steps, cfg.guidance_scale,
                   resolution, reward, fd_cache=Path(cfg.out_dir).parent / "fd",
                   fd_net_steps=cfg.fd_net_steps, val=cfg.evaluation == "val",
                   heldout_per_prompt=cfg.heldout_samples_per_prompt)

    def images(self, images: np.ndarray) -> tuple[dict, list[bool], list[bool]]:
        """(metrics, goods, strict goods) of one image per evaluation record: the judge's
        verdicts and the strict judge's (for win rates under either)."""
        analyses = [analyze(im) for im in images]  # once, for the verdicts and the shape fit
        m, goods, reasons, strict = score(images, self.records, analyses)
        f = features(self.fnet, images)
        m["fd"], m["diversity"] = frechet_distance(f, self.ref_feats), diversity(f, self.records)
        m["shape_fit"] = shape_fit_summary(analyses)  # exactly 1 on clean renders
        m["reward"] = float(self.reward.score(images, [r["prompt"] for r in self.records]).mean())
        m["count_breakdown"] = count_breakdown(self.records, goods, reasons)
        return m, goods, strict

    def model(self, model, desc: str, path: Path | None = None, reuse: bool = False):
        """(metrics, goods, images) of a model's samples, saved to `path`; with reuse, read back
        from an existing `path` instead (a resumed run; images None)."""
        if reuse and path is not None and path.exists():
            saved = json.loads(path.read_text())
            return saved["metrics"], saved["goods"], None
        images = self._sample(model, self.records, f"evaluate {desc}")
        m, goods, strict = self.images(images)
        if path is not None:
            atomic_write_text(path, json.dumps({"metrics": m, "goods": goods,
                                                "goods_strict": strict}))
        return m, goods, images

    def _sample(self, model, records: list[dict], desc: str) -> np.ndarray:
        """One image per record, in chunks under a progress bar (the samples do not depend on
        the chunking): (N, H, W, 3) uint8."""
        return np.concatenate([generate(model, records[i:i + 256], self.steps,
                                        self.guidance_scale)
                               for i in tqdm(range(0, len(records), 256), desc=desc,
                                             dynamic_ncols=True)])

    def heldout(self, model, desc: str = "", path: Path | None = None,
                reuse: bool = False) -> dict | None:
        """The signal a round is chosen by, on the held-out records (heldout_records), saved to
        `path`: the learned reward's mean score, the well-formed rate (judge.analyze reads
        shapes, not the prompt; also on the one-shape prompts alone, and the strict judge's),
        FD and diversity against clean renders of the same records. The gold alignment is
        recorded beside them to check the choice, never used to make it. None when no round is
        chosen (no held-out records)."""
        if not self.heldout_records:
            return None
        if reuse and path is not None and path.exists():
            return json.loads(path.read_text())
        records = self.heldout_records
        images = self._sample(model, records, f"held-out {desc}")
        analyses = [analyze(im) for im in images]
        lone = np.array([r["category"] != "combination" for r in records])  # one shape asked
        formed = np.array([a["well_formed"] for a in analyses], float)
        f = features(self.fnet, images)
        rewards = self.reward.score(images, [r["prompt"] for r in records])  # (N,)
        signal = {"reward": float(rewards.mean()), "well_formed": float(formed.mean()),
                  "well_formed_lone": float(formed[lone].mean()),
                  "well_formed_strict": float(np.mean([a["well_formed_strict"] for a in analyses])),
                  "fd": frechet_distance(f, self.heldout_ref_feats),
                  "diversity": diversity(f, records),
                  "alignment_not_used": float(np.mean([verdict(a, r["prompt"])[0]
                                                       for a, r in zip(analyses, records)])),
                  "n": len(records)}
        if path is not None:
            atomic_write_text(path, json.dumps(signal))
        return signal
