"""Where Eq. 2's weight goes in round 1's D_model: per prompt group, on good, bad and malformed images.

    python benchmarks/d_model_weights.py      # runs/reward, data/feedback/{train,unlabeled}

D_model is stage 1's labeled images plus the unlabeled samples of the pretrained model, each
weighted by the reward (feedback.load_d_model), then balanced per prompt group
(losses.balance_groups). If fine-tuning teaches malformed shapes, either D_model puts weight on
malformed images (the reward cannot see them) or the training itself drifts: this says which,
by the share of the weight that lands on images the gold judge calls malformed (any blob that
is not a clean shape), next to their share of the images.
"""
import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout
from tiny_rlhf_t2i import feedback  # noqa: E402
from tiny_rlhf_t2i.diffusion import to_uint8  # noqa: E402
from tiny_rlhf_t2i.judge import analyze  # noqa: E402
from tiny_rlhf_t2i.losses import balance_groups  # noqa: E402
from tiny_rlhf_t2i.reward import load_reward  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reward_dir", type=Path, default=Path("runs/reward"))
    parser.add_argument("--labeled", type=Path, default=Path("data/feedback/train"))
    parser.add_argument("--unlabeled", type=Path, default=Path("data/feedback/unlabeled"))
    args = parser.parse_args(argv)
    made_by = "python train_reward.py"
    reward = load_reward(args.reward_dir, made_by)
    labeled = feedback.load_feedback(args.labeled, made_by)
    d = feedback.load_d_model(labeled, args.unlabeled, reward, "cpu")
    malformed = np.array([bool(analyze(im)["malformed"]) for im in to_uint8(d.x)])  # (N,)
    good = d.gold.numpy().astype(bool)
    plain = d.reward.clamp(min=0).numpy()  # Eq. 2's weights (rewards below 0 count 0)
    balanced = balance_groups(d.reward.clamp(min=0), d.group).numpy()
    groups = np.array(d.group)
    mean = lambda sel: plain[sel].mean() if sel.any() else float("nan")  # noqa: E731
    print(f"{len(d.group)} images; mean reward: good {mean(good):.3f}, bad and well-formed "
          f"{mean(~good & ~malformed):.3f}, malformed {mean(malformed):.3f}")
    print("\n| group | images | good | malformed | weight on bad, plain | balanced "
          "| weight on malformed, plain | balanced |\n|---|---|---|---|---|---|---|---|")
    for g in ["all"] + sorted(set(d.group)):
        m = np.ones(len(groups), bool) if g == "all" else groups == g
        share = lambda w, sel: w[m & sel].sum() / max(w[m].sum(), 1e-12)  # noqa: E731
        print(f"| {g} | {m.sum()} | {good[m].mean():.1%} | {malformed[m].mean():.1%} | "
              f"{share(plain, ~good):.1%} | {share(balanced, ~good):.1%} | "
              f"{share(plain, malformed):.1%} | {share(balanced, malformed):.1%} |")


if __name__ == "__main__":
    main()
