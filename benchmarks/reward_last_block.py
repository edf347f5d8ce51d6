"""Can the reward learn to see a malformed blob from its own labels? Its image tower's last
block trained, against the paper's frozen tower, chosen on a validation split.

    python benchmarks/reward_last_block.py --seeds 0,1,2      # ~10 min on 2 cores

The reward's image tower is our CLIP's: conv stages, then a last block (flatten of the 4x4 map
and two linear layers) that makes the 64-dim embedding. Three ways to train the reward (Eq. 1,
train_reward.py's settings, the same CLIP in runs/reward/clip.pt):
  frozen      the tower frozen, as in the paper (train_reward.py's default)
  last_block  the last block trains with the MLP, the convs stay frozen
  all         the whole tower trains (--train_image_encoder true)
Validation: the training feedback's images with seed % 5 == 0 are held back (gold labels); the
others train. Validation holds seen prompts only, as the training set does. The held-out
feedback set (other seeds, seen and unseen prompts) is the evaluation. Everything is ranked by
the logit (no ties at a reward of 1.0). "four" is the pairwise accuracy on "four ..." prompts,
where the bad images mostly hold three shapes and a malformed blob.
"""
import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout
from tiny_rlhf_t2i import reward  # noqa: E402
from tiny_rlhf_t2i.clip import Clip, ClipConfig  # noqa: E402
from tiny_rlhf_t2i.evaluate import pairwise_accuracy  # noqa: E402
from tiny_rlhf_t2i.feedback import load_feedback  # noqa: E402
from stage3_seeds import write_record  # noqa: E402
from tiny_rlhf_t2i.files import load_checkpoint, pick_device  # noqa: E402


class LastBlockOnly(reward.RewardModel):
    """The reward with only its image tower's last block trainable (the convs frozen)."""

    def __init__(self, clip, hidden=128, train_image_encoder=False, linear=False):
        super().__init__(clip, hidden, train_image_encoder=False, linear=linear)
        self.image.head.requires_grad_(True)


def pairwise(scores, rows, keep) -> float:
    """Pairwise accuracy (gold labels) of the rows where keep is true, in %."""
    labels = np.array([r["label"] for r in rows])
    prompts = np.array([r["prompt"] for r in rows])
    return 100 * pairwise_accuracy(scores[keep], labels[keep], prompts[keep])


def setup(doc: str, argv):
    """A reward benchmark's command line (its docstring's first line as the description), then
    stage 2's CLIP and its feedback, split: (args, device, clip, (fit rows, images),
    (validation rows with gold labels, images), held-out set). Validation is the training
    feedback's images with seed % 5 == 0; the rest train, with their (noisy) labels as stage 2
    trains on them."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--reward_dir", type=Path, default=Path("runs/reward"))
    parser.add_argument("--feedback_dir", type=Path, default=Path("data/feedback"))
    parser.add_argument("--reward_steps", type=int, default=reward.RewardTrainConfig.reward_steps)
    parser.add_argument("--variants", help="comma-separated variant names to run (default: all)")
    parser.add_argument("--out", type=Path, help="write the numbers as JSON here")
    args = parser.parse_args(argv)
    device = pick_device("auto")
    made_by = "python train_reward.py"
    train = load_feedback(args.feedback_dir / "train", made_by)
    held = load_feedback(args.feedback_dir / "heldout", made_by)
    clip = Clip(ClipConfig(resolution=train.images.shape[1]))
    clip.load_state_dict(load_checkpoint(args.reward_dir / "clip.pt", made_by)["model"])
    is_val = np.array([r["seed"] % 5 == 0 for r in train.rows])
    fit_rows = [r for r, v in zip(train.rows, is_val) if not v]
    val_rows = [{**r, "label": int(train.judged[r["id"]])} for r, v in zip(train.rows, is_val) if v]
    return (args, device, clip.to(device).eval(), (fit_rows, train.images[~is_val]),
            (val_rows, train.images[is_val]), held)


def train_as(model_class, clip, rows, images, cfg, device):
    """Stage 2's train_reward_model at cfg.lam, building `model_class` in place of RewardModel
    (put back afterwards: the tests call the benchmarks in-process)."""
    default = reward.RewardModel
    reward.RewardModel = model_class
    try:
        return reward.train_reward_model(clip, rows, images, cfg, cfg.lam, device)
    finally:
        reward.RewardModel = default


def chosen(args, names):
    """The variants --variants names (all of them without it), in the benchmark's order."""
    if not args.variants:
        return list(names)
    asked = args.variants.split(",")
    unknown = [a for a in asked if a not in names]
    if unknown:
        raise SystemExit(f"--variants: unknown {unknown}; known: {', '.join(names)}")
    return [n for n in names if n in asked]


def main(argv=None):
    args, device, clip, (fit_rows, fit_images), (val_rows, val_images), held = setup(
        __doc__, argv)
    four = lambda rows: np.array([r["prompt"].startswith("four") for r in rows])
    split = lambda rows, s: np.array([r["split"] == s for r in rows])

    results = []
    print("| tower | seed | validation | val. four | held-out seen | seen four | unseen |")
    print("|---|---|---|---|---|---|---|")
    for variant in chosen(args, ("frozen", "last_block", "all")):
        for seed in [int(s) for s in args.seeds.split(",")]:
            cfg = reward.RewardTrainConfig(seed=seed, reward_steps=args.reward_steps,
                                            train_image_encoder=variant == "all")
            model = train_as(LastBlockOnly if variant == "last_block" else reward.RewardModel,
                             clip, fit_rows, fit_images, cfg, device)
            v = model.score(val_images, [r["prompt"] for r in val_rows], logit=True).numpy()
            h = model.score(held.images, [r["prompt"] for r in held.rows], logit=True).numpy()
            seen = split(held.rows, "seen")
            row = {"tower": variant, "seed": seed,
                   "validation": pairwise(v, val_rows, np.ones(len(v), bool)),
                   "validation_four": pairwise(v, val_rows, four(val_rows)),
                   "heldout_seen": pairwise(h, held.rows, seen),
                   "heldout_seen_four": pairwise(h, held.rows, seen & four(held.rows)),
                   "heldout_unseen": pairwise(h, held.rows, split(held.rows, "unseen"))}
            results.append(row)
            print("| %s | %d | %.1f | %.1f | %.1f | %.1f | %.1f |" % (
                variant, seed, *[row[k] for k in list(row)[2:]]), flush=True)
    keys = list(results[0])[2:]
    print("\nmeans over seeds")
    for variant in chosen(args, ("frozen", "last_block", "all")):
        rs = [r for r in results if r["tower"] == variant]
        print("| %s | mean | %s |" % (variant, " | ".join(
            "%.1f" % np.mean([r[k] for r in rs]) for k in keys)))
    if args.out:
        write_record(args.out, results, torch.get_num_threads())


if __name__ == "__main__":
    main()
