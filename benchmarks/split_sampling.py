"""Which timesteps carry a fine-tuned model's drift: sample it at t >= cut and the pretrained
model below (unet.PretrainedBelowCut), for several cuts, on the validation seeds.

    python benchmarks/split_sampling.py --pretrained runs/unet/ckpt.pt \\
        --models s0=runs/s3d/s0/feedback/feedback/round3/ckpt.pt --cuts 0,300,650 --out x.json

cut 0 is the fine-tuned model alone. Each (model, cut) is judged on the evaluation prompts with
validation seeds (evaluate.eval_records(val=True), never the reported ones): alignment by the
judge and the strict judge, well-formed by both, shape fit, FD, diversity and mean reward, as
Evaluator measures them. A model checkpoint that is already split (finetune.py's, when it
splits) is taken apart: its fine-tuned half is the one composed here.
"""
import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout
from tiny_rlhf_t2i.evaluate import Evaluator  # noqa: E402
from tiny_rlhf_t2i.reward import load_reward  # noqa: E402
from tiny_rlhf_t2i.unet import PretrainedBelowCut, load_model  # noqa: E402


def row(m: dict) -> dict:
    """The numbers of one evaluation (Evaluator.images' metrics), in percent where a rate."""
    a, s = m["alignment"], m["alignment_strict"]
    out = {g: 100 * a[g]["mean"] for g in ("overall", "count", "color", "background",
                                          "combination", "seen", "unseen")}
    out.update({f"strict_{g}": 100 * s[g]["mean"] for g in ("overall", "count", "color")})
    out.update(well_formed=100 * m["well_formed"]["mean"],
               well_formed_strict=100 * m["well_formed_strict"]["mean"],
               shape_fit=m["shape_fit"]["mean"], fd=m["fd"], diversity=m["diversity"],
               reward=m["reward"])
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pretrained", type=Path, default=Path("runs/unet/ckpt.pt"))
    ap.add_argument("--reward_dir", type=Path, default=Path("runs/reward"))
    ap.add_argument("--models", nargs="+", required=True, help="name=path/to/ckpt.pt")
    ap.add_argument("--cuts", default="0,650", help="comma-separated; 0: the model alone")
    ap.add_argument("--samples_per_prompt", type=int, default=8)
    ap.add_argument("--steps", type=int, default=15, help="DPM-Solver++(2M) steps")
    ap.add_argument("--fd_cache", type=Path, default=Path("runs/fd"))
    ap.add_argument("--fd_net_steps", type=int, default=600)
    ap.add_argument("--out", type=Path, help="JSON of every (model, cut)")
    args = ap.parse_args(argv)
    pretrained = load_model(args.pretrained)[0].to(memory_format=torch.channels_last)
    ev = Evaluator(args.samples_per_prompt, args.steps, 3.0, pretrained.cfg.resolution,
                   load_reward(args.reward_dir, "python train_reward.py"), args.fd_cache,
                   args.fd_net_steps, val=True)
    results = {"pretrained": row(ev.model(pretrained, "pretrained")[0])}
    print("pretrained", {k: round(v, 3) for k, v in results["pretrained"].items()}, flush=True)
    for spec in args.models:
        name, path = spec.split("=", 1)
        tuned = load_model(path)[0]
        tuned = (tuned.tuned if isinstance(tuned, PretrainedBelowCut) else tuned).to(
            memory_format=torch.channels_last)
        for cut in (int(c) for c in args.cuts.split(",")):
            model = PretrainedBelowCut(tuned, pretrained, cut) if cut else tuned
            t0 = time.time()
            r = row(ev.model(model, f"{name} cut {cut}")[0])
            results[f"{name} cut {cut}"] = r
            print(f"{name} cut {cut} ({time.time() - t0:.0f} s)",
                  {k: round(v, 3) for k, v in r.items()}, flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"command": "python " + " ".join(sys.argv),
                                        "samples_per_prompt": args.samples_per_prompt,
                                        "seeds": "validation", "threads": torch.get_num_threads(),
                                        "results": results}, indent=1))


if __name__ == "__main__":
    main()
