"""Where one stage-3 evaluation's time goes: sampling the model, or judging and measuring its
images (the part that could overlap the next batch's sampling on an idle core).

    python benchmarks/eval_share.py --out benchmarks/results/cpu_eval_share.json

Evaluates the pretrained model as finetune.py's Evaluator does (1,408 images at the defaults),
timing the sampling, the judge's reading of every image (judge.analyze) and everything
Evaluator.images measures (the judge, the strict judge, shape fit, FD and diversity features,
the reward). Run it with nothing else on the machine.
"""
import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout
from stage3_seeds import machine  # noqa: E402
from tiny_rlhf_t2i.evaluate import Evaluator  # noqa: E402
from tiny_rlhf_t2i.judge import analyze  # noqa: E402
from tiny_rlhf_t2i.reward import load_reward  # noqa: E402
from tiny_rlhf_t2i.unet import load_model  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ckpt", type=Path, default=Path("runs/unet/ckpt.pt"))
    ap.add_argument("--reward_dir", type=Path, default=Path("runs/reward"))
    ap.add_argument("--samples_per_prompt", type=int, default=16)
    ap.add_argument("--steps", type=int, default=15, help="DPM-Solver++(2M) steps")
    ap.add_argument("--fd_cache", type=Path, default=Path("runs/fd"))
    ap.add_argument("--fd_net_steps", type=int, default=600)
    ap.add_argument("--out", type=Path, help="JSON of the seconds per phase")
    args = ap.parse_args(argv)
    model = load_model(args.ckpt)[0].to(memory_format=torch.channels_last)
    ev = Evaluator(args.samples_per_prompt, args.steps, 3.0, model.cfg.resolution,
                   load_reward(args.reward_dir, "python train_reward.py"), args.fd_cache,
                   args.fd_net_steps)
    t0 = time.perf_counter()
    images = ev._sample(model, ev.records, "sample")
    t1 = time.perf_counter()
    for im in images:
        analyze(im)
    t2 = time.perf_counter()
    ev.images(images)
    t3 = time.perf_counter()
    res = {"images": len(images), "sample_s": t1 - t0, "judge_analyze_s": t2 - t1,
           "all_measures_s": t3 - t2, "measures_share": (t3 - t2) / (t3 - t0 - (t2 - t1))}
    print(json.dumps({k: round(v, 3) for k, v in res.items()}))
    if args.out:
        where = {k: v for k, v in machine().items() if k != "torch_threads_per_arm"}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"command": "python " + " ".join(sys.argv), **res,
                                        "threads": torch.get_num_threads(), **where}, indent=1))


if __name__ == "__main__":
    main()
