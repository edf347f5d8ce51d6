"""What a fine-tuned model's lower diversity and shape fit are made of: fewer wrong images, or
worse right ones?

    python benchmarks/fidelity_split.py --models fb0=runs/s3q/s0/feedback/feedback/round3/ckpt.pt \\
        ctl0=runs/s3q/s0/control/control/round3/ckpt.pt@300 --out x.json

A checkpoint whose run sampled it with the pretrained model below a cut names that cut itself
(finetune.py writes it); `path@cut` applies one to a checkpoint saved without it.

Every model (and the pretrained one) is sampled on the evaluation records exactly as
finetune.py's Evaluator samples them (the test seeds: this explains reported numbers, it
chooses nothing) and judged by the gold judge. Per model:
- diversity (fidelity.diversity) over all images, and over the images the judge accepts on the
  prompts where *every* model has at least two accepted images (the same prompts for all, so
  a model that gets more prompts right is not measured on other prompts). Clean renders of the
  same records give the spread a perfectly aligned model has in this world.
- shape fit (fidelity.shape_fit) per blob, as a whole and by how many blobs the image holds:
  an image of four small shapes fits less well than an image of one, so a model that draws
  more shapes scores lower with no worse shapes. `shape_fit_at_pretrained_mix` weights the
  model's per-count means by the pretrained model's blob counts.
"""
import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout
from stage3_seeds import machine  # noqa: E402
from tiny_rlhf_t2i.evaluate import Evaluator, score  # noqa: E402
from tiny_rlhf_t2i.fidelity import clean_references, diversity, features, shape_fit  # noqa: E402
from tiny_rlhf_t2i.judge import analyze  # noqa: E402
from tiny_rlhf_t2i.reward import load_reward  # noqa: E402
from tiny_rlhf_t2i.unet import PretrainedBelowCut, load_model  # noqa: E402

MAX_BLOBS = 4  # images with more blobs are pooled with four


def per_prompt_spread(feats: np.ndarray, prompts: np.ndarray, keep: np.ndarray) -> dict:
    """{prompt: diversity of its kept images} for prompts with at least two kept images."""
    out = {}
    for p in np.unique(prompts):
        sel = (prompts == p) & keep
        if sel.sum() >= 2:
            out[p] = diversity(feats[sel], [{"prompt": p}] * int(sel.sum()))
    return out


def fits_by_blobs(fits_per_image: list[list[float]]) -> dict:
    """{number of blobs in the image: (mean shape fit of its blobs, number of blobs)}, from each
    image's fidelity.shape_fit."""
    by = {}
    for fits in fits_per_image:
        if fits:
            by.setdefault(min(len(fits), MAX_BLOBS), []).extend(fits)
    return {k: (float(np.mean(v)), len(v)) for k, v in sorted(by.items())}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pretrained", type=Path, default=Path("runs/unet/ckpt.pt"))
    ap.add_argument("--reward_dir", type=Path, default=Path("runs/reward"))
    ap.add_argument("--models", nargs="+", required=True, help="name=path/to/ckpt.pt")
    ap.add_argument("--samples_per_prompt", type=int, default=16)
    ap.add_argument("--steps", type=int, default=15, help="DPM-Solver++(2M) steps")
    ap.add_argument("--fd_cache", type=Path, default=Path("runs/fd"))
    ap.add_argument("--fd_net_steps", type=int, default=600)
    ap.add_argument("--out", type=Path, help="JSON of every model")
    args = ap.parse_args(argv)
    pretrained = load_model(args.pretrained)[0].to(memory_format=torch.channels_last)
    ev = Evaluator(args.samples_per_prompt, args.steps, 3.0, pretrained.cfg.resolution,
                   load_reward(args.reward_dir, "python train_reward.py"), args.fd_cache,
                   args.fd_net_steps)
    records = ev.records
    prompts = np.array([r["prompt"] for r in records])
    models = [("pretrained", pretrained)]
    for spec in args.models:  # name=path, or name=path@cut for a checkpoint saved without its cut
        name, path = spec.split("=", 1)
        path, _, cut = path.partition("@")
        model = load_model(path)[0]
        models.append((name, PretrainedBelowCut(model, pretrained, int(cut)) if cut else model))

    seen = {}  # name: (features, goods, each image's shape fit per blob)
    for name, model in models:
        images = ev._sample(model, records, name)
        analyses = [analyze(im) for im in images]
        goods = np.array(score(images, records, analyses)[1], bool)
        seen[name] = (features(ev.fnet, images), goods, [shape_fit(a) for a in analyses])
    spreads = {n: per_prompt_spread(f, prompts, g) for n, (f, g, _) in seen.items()}
    common = sorted(set.intersection(*(set(s) for s in spreads.values())))
    clean = features(ev.fnet, clean_references(records, pretrained.cfg.resolution))
    clean_spread = per_prompt_spread(clean, prompts, np.ones(len(records), bool))

    pre_mix = {k: n for k, (_, n) in fits_by_blobs(seen["pretrained"][2]).items()}

    def on_common(spread: dict) -> float:
        return float(np.mean([spread[p] for p in common])) if common else float("nan")

    results = {"clean renders": {"diversity": diversity(clean, records),
                                 "diversity_common": on_common(clean_spread)}}
    for name, (f, goods, fits_per_image) in seen.items():
        by = fits_by_blobs(fits_per_image)
        fits = [x for image in fits_per_image for x in image]
        results[name] = {
            "alignment": float(goods.mean()), "diversity": diversity(f, records),
            "diversity_good_common": on_common(spreads[name]),
            "shape_fit": float(np.mean(fits)),
            "shape_fit_by_blobs": {str(k): {"mean": m, "blobs": n} for k, (m, n) in by.items()},
            "shape_fit_at_pretrained_mix": float(
                sum(by[k][0] * n for k, n in pre_mix.items() if k in by)
                / sum(n for k, n in pre_mix.items() if k in by))}
        print(name, json.dumps(results[name]), flush=True)
    print("clean renders", results["clean renders"], "common prompts", len(common))
    if args.out:
        where = {k: v for k, v in machine().items() if k != "torch_threads_per_arm"}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({
            "command": "python " + " ".join(sys.argv), "seeds": "test (explains reported "
            "numbers; nothing is chosen on them)", "samples_per_prompt": args.samples_per_prompt,
            "threads": torch.get_num_threads(), **where,
            "common_prompts": len(common), "prompts": len(set(prompts)), "results": results},
            indent=1))


if __name__ == "__main__":
    main()
