"""Pairwise accuracy of the reward models per prompt group, on the held-out feedback set.

    python benchmarks/reward_breakdown.py                 # runs/reward, data/feedback/heldout

The pairwise accuracy of train_reward.py pools every pair of one prompt's good and bad images,
so the groups with many such pairs (count prompts: 9 prompts of ~22 images, half good) dominate
it and a group the reward cannot rank hides inside the mean. This prints it per (split,
category, number asked for) with the number of pairs, and the most common ways the bad
images of each count group failed (the judge's reasons), to see *what* the reward misses. It
also prints how many rewards saturate at exactly 1.0 (ties) and the ranking by the logit.
"""
import argparse
import collections
import re
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout
from tiny_rlhf_t2i.evaluate import pairwise_accuracy  # noqa: E402
from tiny_rlhf_t2i.feedback import load_labeled  # noqa: E402
from tiny_rlhf_t2i.reward import load_reward  # noqa: E402
from tiny_rlhf_t2i.world import PALETTE, SHAPES, parse  # noqa: E402


def failure_kind(reason: str) -> str:
    """'asked for 4 circles, found 3 red circles on gray and 1 malformed blob(s)' ->
    '3 C S on C and 1 malformed blob(s)': colors and shapes abstracted away."""
    found = reason.split("found ")[-1]
    found = re.sub(r"\b(" + "|".join(PALETTE) + r")\b", "C", found)
    return re.sub(r"\b(" + "|".join(SHAPES) + r")s?\b", "S", found)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reward_dir", type=Path, default=Path("runs/reward"))
    parser.add_argument("--heldout", type=Path, default=Path("data/feedback/heldout"))
    args = parser.parse_args(argv)
    rows, images = load_labeled(args.heldout, "python train_reward.py")
    prompts = [r["prompt"] for r in rows]
    y = np.array([r["label"] for r in rows])
    groups = np.array([f"{r['split']}/{r['category']}/{parse(r['prompt']).count}" for r in rows])
    scores, logits = {}, {}
    for name in [n for n in ("reward_no_pc", "reward_pc", "reward")  # the twin, then stage 3's
                 if (args.reward_dir / f"{n}.pt").exists()]:
        model = load_reward(args.reward_dir, "python train_reward.py", name)
        logit = model.score(images, prompts, logit=True)  # (N,); the reward is its sigmoid
        logits[name], scores[name] = logit.numpy(), torch.sigmoid(logit).numpy()
    print("| group | images | good | pairs | " + " | ".join(scores) + " |")
    print("|---|---|---|---|" + "---|" * len(scores))
    for g in sorted(set(groups)):
        m = groups == g
        p = np.array(prompts)[m]
        pairs = sum(int((y[m][p == q] == 1).sum() * (y[m][p == q] == 0).sum()) for q in set(p))
        accs = [pairwise_accuracy(s[m], y[m], p) for s in scores.values()]
        print(f"| {g} | {m.sum()} | {y[m].mean():.0%} | {pairs} | "
              + " | ".join("-" if np.isnan(a) else f"{100 * a:.1f}" for a in accs) + " |")
    print("\nsaturation: a sigmoid above ~16.6 rounds to exactly 1.0 in float32, and pairwise "
          "accuracy counts ties as half a pair")
    split = np.array([r["split"] for r in rows])
    for name in scores:
        by_logit = [pairwise_accuracy(logits[name][split == s], y[split == s],
                                      np.array(prompts)[split == s]) for s in ("seen", "unseen")]
        print(f"  {name}: {(scores[name] == 1.0).mean():.1%} of the rewards are exactly 1.0; "
              f"logits {logits[name].min():.1f} to {logits[name].max():.1f}; pairwise accuracy "
              f"ranked by the logit: seen {100 * by_logit[0]:.1f}, unseen {100 * by_logit[1]:.1f}")
    print("\nmost common failures of the bad held-out count images:")
    for g in sorted(g for g in set(groups) if "/count/" in g):
        kinds = collections.Counter(failure_kind(r["reason"]) for r, h in zip(rows, groups)
                                    if h == g and not r["label"])
        print(f"  {g}: " + "; ".join(f"{k} ({n}x)" for k, n in kinds.most_common(3)))


if __name__ == "__main__":
    main()
