"""Seed noise of stage 2: the reward with and without prompt classification, over several seeds.

    python benchmarks/reward_seeds.py --seeds 0,1,2                     # ~7 min on 2 cores
    python benchmarks/reward_seeds.py --seeds 0,1,2 --clip_steps 3000   # a longer-trained CLIP

Retrains only the reward models of train_reward.py (its default settings, one seed at a time)
on the same feedback set and the same CLIP (runs/reward/clip.pt), and measures each on the
held-out set. Seed 0 is the train_reward.py run itself, so its row equals runs/reward/metrics.json.
A difference between the two rewards smaller than the spread across seeds is not a finding.
The last rows are the ensemble of the seeds (the mean of their scores), a cheap way to lower the
seed noise. With --clip_steps a fresh CLIP is trained first (train_reward.py's recipe, more
steps) and the CLIP-score baseline is printed for it.
"""
import argparse
import dataclasses
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout
from tiny_rlhf_t2i.clip import Clip, ClipConfig, train_clip  # noqa: E402
from tiny_rlhf_t2i.corpus import CaptionNoise  # noqa: E402
from tiny_rlhf_t2i.feedback import load_labeled  # noqa: E402
from tiny_rlhf_t2i.files import load_checkpoint, pick_device  # noqa: E402
from tiny_rlhf_t2i.reward import (RewardTrainConfig, measure, stage2_rewards,  # noqa: E402
                                  train_reward_model)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated reward seeds")
    parser.add_argument("--reward_dir", type=Path, default=Path("runs/reward"))
    parser.add_argument("--feedback_dir", type=Path, default=Path("data/feedback"))
    parser.add_argument("--clip_steps", type=int, default=0,
                        help="train a fresh CLIP for this many steps (0: load reward_dir/clip.pt)")
    parser.add_argument("--reward_steps", type=int, default=RewardTrainConfig.reward_steps)
    args = parser.parse_args(argv)
    made_by = "python train_reward.py"
    cfg = RewardTrainConfig(reward_steps=args.reward_steps)
    clip_batch, clip_lr = 256, 2e-3  # train_reward.py's CLIP recipe
    device = pick_device("auto")
    rows, images = load_labeled(args.feedback_dir / "train", made_by)
    h_rows, h_images = load_labeled(args.feedback_dir / "heldout", made_by)
    prompts = [r["prompt"] for r in h_rows]
    if args.clip_steps:
        clip = train_clip(ClipConfig(resolution=images.shape[1]), CaptionNoise(), args.clip_steps,
                          clip_batch, clip_lr, cfg.seed, device)
    else:
        clip = Clip(ClipConfig(resolution=images.shape[1]))
        clip.load_state_dict(load_checkpoint(args.reward_dir / "clip.pt", made_by)["model"])
        clip = clip.to(device).eval()
    pairwise = lambda score: [100 * m["pairwise_accuracy"]
                              for m in measure(score, h_rows).values()]  # seen, unseen
    scores = {name: [] for name, _ in stage2_rewards(cfg.lam)}  # one (N,) array per seed
    print("| seed | scorer | pairwise seen | unseen |\n|---|---|---|---|")
    with torch.no_grad():
        print("| - | clip_score | %.1f | %.1f |" % tuple(pairwise(clip.score(h_images, prompts)
                                                                 .cpu().numpy())))
    for seed in [int(s) for s in args.seeds.split(",")]:
        for name, lam in stage2_rewards(cfg.lam):
            model = train_reward_model(clip, rows, images, dataclasses.replace(cfg, seed=seed),
                                       lam, device)
            scores[name].append(model.score(h_images, prompts).numpy())
            print("| %d | %s | %.1f | %.1f |" % (seed, name, *pairwise(scores[name][-1])),
                  flush=True)
    for name, per_seed in scores.items():
        a = np.array([pairwise(s) for s in per_seed])  # (seeds, 2)
        spread = [f"{a[:, j].mean():.1f} ({a[:, j].min():.1f}-{a[:, j].max():.1f})" for j in (0, 1)]
        print(f"| mean (min-max) | {name} | {spread[0]} | {spread[1]} |")
        print("| ensemble of %d | %s | %.1f | %.1f |" % (len(per_seed), name,
                                                        *pairwise(np.mean(per_seed, 0))))


if __name__ == "__main__":
    main()
