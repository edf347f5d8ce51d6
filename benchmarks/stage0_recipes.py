"""Is a stage-0 recipe the same pretrained model? Alignment, fidelity and the spread of what the
prompt leaves free, on the validation seeds.

    python benchmarks/stage0_recipes.py runs/unet/ckpt.pt runs/unet_v5000/ckpt.pt \\
        --out benchmarks/results/cpu_stage0_vpred_val.json

Every checkpoint samples the 88 evaluation prompts on the validation seeds (`--per_prompt` each,
never the reported seeds) as stage 3 samples them (DPM-Solver++(2M), the defaults' steps and
guidance, channels_last), and is judged by the gold judge. Beside alignment and well-formed it
measures what stage 3 measures its models against: FD to clean renders of the same records and
diversity (fidelity.py), and one thing a recipe that learns the mean of the data faster could
lose: how evenly the samples spread over what the prompt does not name, as the normalized
entropy (1: every choice equally often, as the web corpus draws them) of the background on
prompts without one, and of the first shape's colour on prompts without one. The clean renders
of the same records give the reference values.
"""
import argparse
import json
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout
from bench_sampler import GROUPS  # noqa: E402
from stage3_seeds import machine  # noqa: E402
from tiny_rlhf_t2i.evaluate import eval_records, generate, score  # noqa: E402
from tiny_rlhf_t2i.fidelity import (clean_references, diversity, feature_net, features,  # noqa: E402
                                    frechet_distance)
from tiny_rlhf_t2i.judge import analyze  # noqa: E402
from tiny_rlhf_t2i.unet import load_model  # noqa: E402
from tiny_rlhf_t2i.world import BACKGROUNDS, COLORS, parse  # noqa: E402

def spread(values: list, choices) -> float:
    """Normalized entropy of `values` over `choices`, in [0, 1]: 1 when every choice is equally
    frequent. Values that are none of the choices (no shape found) are left out."""
    n = Counter(v for v in values if v in choices)
    p = np.array(list(n.values()), float) / sum(n.values())
    return float(-(p * np.log(p)).sum() / np.log(len(choices)))


def free_attributes(analyses: list[dict], records: list[dict]) -> dict:
    """How evenly images (their judge.analyze) spread over the background and colour their
    prompts leave free."""
    specs = [parse(r["prompt"]) for r in records]
    bgs = [a["background"] for a, s in zip(analyses, specs) if s.background is None]
    colors = [a["shapes"][0][0] if a["shapes"] else None
              for a, s in zip(analyses, specs) if s.color is None]
    return {"background_spread": round(spread(bgs, BACKGROUNDS), 3),
            "color_spread": round(spread(colors, COLORS), 3)}


def measure(images: np.ndarray, records: list[dict], fnet, ref_feats) -> dict:
    analyses = [analyze(im) for im in images]  # once, for the verdicts and the spreads
    metrics = score(images, records, analyses)[0]
    feats = features(fnet, images)
    return {**{g: round(100 * metrics["alignment"][g]["mean"], 1) for g in GROUPS},
            "well_formed": round(100 * metrics["well_formed"]["mean"], 1),
            "fd": round(frechet_distance(feats, ref_feats), 1),
            "diversity": round(diversity(feats, records), 2),
            **free_attributes(analyses, records)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ckpts", nargs="+", type=Path, help="stage-0 checkpoints (ckpt.pt)")
    parser.add_argument("--per_prompt", type=int, default=32, help="samples per prompt")
    parser.add_argument("--steps", type=int, default=15, help="DPM-Solver++(2M) steps")
    parser.add_argument("--guidance", type=float, default=3.0, help="guidance scale")
    parser.add_argument("--fd_dir", type=Path, default=Path("runs/fd"),
                        help="the FD feature network's cache (stage 3's runs/fd)")
    parser.add_argument("--fd_net_steps", type=int, default=600,
                        help="the FD feature network's training steps (stage 3's default)")
    parser.add_argument("--out", type=Path, default=None, help="JSON to write")
    args = parser.parse_args(argv)
    records = eval_records(args.per_prompt, val=True)
    resolution = load_model(args.ckpts[0])[0].cfg.resolution
    fnet = feature_net(resolution, cache_dir=args.fd_dir, steps=args.fd_net_steps)
    clean = clean_references(records, resolution)
    ref_feats = features(fnet, clean)
    results = {"clean renders": {**free_attributes([analyze(im) for im in clean], records),
                                 "diversity": round(diversity(ref_feats, records), 2)}}
    for ckpt in args.ckpts:
        model, pre = load_model(ckpt)
        model = model.to(memory_format=torch.channels_last)  # as stage 3 samples it
        images = generate(model, records, args.steps, args.guidance)
        results[str(ckpt)] = {"steps": pre["steps"], "prediction": model.cfg.prediction,
                              "min_snr_gamma": pre.get("min_snr_gamma", 0.0),
                              **measure(images, records, fnet, ref_feats)}
        print(ckpt, results[str(ckpt)], flush=True)
    out = {"command": "python " + " ".join(sys.argv), "seeds": "validation",
           "per_prompt": args.per_prompt, "results": results, **machine()}
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
