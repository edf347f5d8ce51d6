"""Seed noise of stage 2: the reward with and without prompt classification, over several seeds.

    python benchmarks/reward_seeds.py --seeds 0,1,2          # ~7 min on 2 cores

Retrains only the reward models of train_reward.py (its cpu-preset config, one seed at a time)
on the same feedback set and the same CLIP (runs/reward/clip.pt), and measures each on the
held-out set. Seed 0 is the train_reward.py run itself, so its row equals runs/reward/metrics.json.
A difference between the two rewards smaller than the spread across seeds is not a finding.
"""
import argparse
import dataclasses
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout
import train_reward  # noqa: E402
from tiny_rlhf_t2i.clip import Clip, ClipConfig  # noqa: E402
from tiny_rlhf_t2i.config import parse_config  # noqa: E402
from tiny_rlhf_t2i.feedback import load_labeled  # noqa: E402
from tiny_rlhf_t2i.files import load_checkpoint, pick_device  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated reward seeds")
    parser.add_argument("--reward_dir", type=Path, default=Path("runs/reward"))
    parser.add_argument("--feedback_dir", type=Path, default=Path("data/feedback"))
    args = parser.parse_args()
    made_by = "python train_reward.py"
    cfg = parse_config(train_reward.RewardConfig, train_reward.PRESETS, [])
    device = pick_device(cfg.device)
    rows, images = load_labeled(args.feedback_dir / "train", made_by)
    h_rows, h_images = load_labeled(args.feedback_dir / "heldout", made_by)
    clip = Clip(ClipConfig(resolution=images.shape[1]))
    clip.load_state_dict(load_checkpoint(args.reward_dir / "clip.pt", made_by)["model"])
    clip = clip.to(device).eval()
    results = {"reward_no_pc": [], "reward": []}
    print("| seed | scorer | pairwise seen | unseen |\n|---|---|---|---|")
    for seed in [int(s) for s in args.seeds.split(",")]:
        for name, lam in (("reward_no_pc", 0.0), ("reward", cfg.lam)):
            model = train_reward.train_reward_model(clip, rows, images,
                                                    dataclasses.replace(cfg, seed=seed), lam, device)
            m = train_reward.measure(model.score(h_images, [r["prompt"] for r in h_rows]).numpy(),
                                     h_rows)
            acc = [100 * m[s]["pairwise_accuracy"] for s in ("seen", "unseen")]
            results[name].append(acc)
            print(f"| {seed} | {name} | {acc[0]:.1f} | {acc[1]:.1f} |", flush=True)
    for name, accs in results.items():
        a = np.array(accs)
        print(f"| mean (min-max) | {name} | {a[:, 0].mean():.1f} ({a[:, 0].min():.1f}-"
              f"{a[:, 0].max():.1f}) | {a[:, 1].mean():.1f} ({a[:, 1].min():.1f}-{a[:, 1].max():.1f}) |")


if __name__ == "__main__":
    main()
