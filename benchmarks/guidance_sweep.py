"""How guidance shapes what a model draws: alignment, well-formed, shape fit and diversity of
models sampled at several guidance scales, on the evaluation prompts' validation seeds.

    python benchmarks/guidance_sweep.py --models pretrained=runs/unet/ckpt.pt \
        --scales 1,1.5,2,3 --out benchmarks/results/cpu_guidance_sweep.json

Why it matters to stage 3: D_model is the model's own samples, drawn with guidance. Training on
guided samples moves the conditional model toward the guided distribution, and the next round
(and the evaluation) guides that again; if guidance narrows what a prompt is drawn as, rounds
of it would too. Same images for a model at one scale as its stage-3 evaluation on `--evaluation
val` would draw (same records, seeds and sampler).
"""
import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout
from stage3_seeds import machine  # noqa: E402
from tiny_rlhf_t2i.evaluate import Evaluator  # noqa: E402
from tiny_rlhf_t2i.reward import load_reward  # noqa: E402
from tiny_rlhf_t2i.unet import load_model  # noqa: E402


def sweep(models: dict, scales: list[float], reward, fd_cache: Path, fd_net_steps: int,
          samples_per_prompt: int, steps: int) -> dict:
    """{model: {scale: numbers}} on the validation seeds."""
    out = {}
    for name, model in models.items():
        out[name] = {}
        for s in scales:
            ev = Evaluator(samples_per_prompt, steps, s, model.cfg.resolution, reward,
                           fd_cache=fd_cache, fd_net_steps=fd_net_steps, val=True)
            m, _, _ = ev.model(model, f"{name} @ {s}")
            out[name][str(s)] = {
                **{g: round(100 * m["alignment"][g]["mean"], 1)
                   for g in ("overall", "count", "color", "combination")},
                "well_formed": round(100 * m["well_formed"]["mean"], 1),
                "well_formed_strict": round(100 * m["well_formed_strict"]["mean"], 1),
                "shape_fit": round(m["shape_fit"]["mean"], 4),
                "diversity": round(m["diversity"], 2), "fd": round(m["fd"], 1)}
            print(name, s, out[name][str(s)], flush=True)
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", required=True, help="name=path/to/ckpt.pt")
    parser.add_argument("--scales", default="1,1.5,2,3")
    parser.add_argument("--reward_dir", type=Path, default=Path("runs/reward"))
    parser.add_argument("--fd_cache", type=Path, default=Path("runs/fd"))
    parser.add_argument("--fd_net_steps", type=int, default=600)
    parser.add_argument("--samples_per_prompt", type=int, default=16)
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    models = {}
    for spec in args.models:
        name, _, path = spec.partition("=")
        model = load_model(Path(path), "the stage that writes it")[0]
        models[name] = model.to(memory_format=torch.channels_last)  # as stage 3 samples it
    scales = [float(s) for s in args.scales.split(",")]
    result = sweep(models, scales, load_reward(args.reward_dir, "python train_reward.py"),
                   args.fd_cache, args.fd_net_steps, args.samples_per_prompt, args.steps)
    if args.out:
        where = machine()
        args.out.write_text(json.dumps({"command": " ".join(sys.argv), "models": args.models,
                                        "result": result, **where}, indent=1) + "\n")


if __name__ == "__main__":
    main()
