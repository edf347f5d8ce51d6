"""Does Eq. 1's prompt classification break the reward's ranking when the reward is a sigmoid?

    python benchmarks/reward_head.py --seeds 0,1,2      # ~10 min on 2 cores

Our reward is r = sigmoid(MLP(...)) trained by Eq. 1: MSE to the 0/1 label plus lambda times a
softmax over r(x, z_j) / T for a good image's true and one-attribute-changed prompts. With r in
[0, 1] and T = 2 the softmax can never come close to one-hot, so prompt classification keeps
pushing good images' true-prompt logits up for as long as the sigmoid has slope; a bad pair
carried into saturation with them gets no gradient from the MSE term (the sigmoid's slope is
about 0 there), rewards pile up at exactly 1.0, and the ranking *within* a prompt (what Eq. 2's
weights use) can invert. A linear head (r = MLP(...), unbounded) keeps the MSE's full gradient
on every confidently wrong pair. A sigmoid reward whose prompt classification ranks the logits
(RewardModel.prompt_scores) has a softmax that can be satisfied, but its cross-entropy then
widens the margins without end. Five ways to train the reward (Eq. 1 at train_reward.py's other
settings, the same CLIP in runs/reward/clip.pt):
  sigmoid, lambda 0.5                 train_reward.py's `reward`, the one stage 3 uses
  sigmoid, lambda 0.5, PC on logits   the softmax over logit / T in place of r / T
  sigmoid, lambda 0                   train_reward.py's `reward_no_pc`
  linear, lambda 0.5 / linear, lambda 0
Validation: the training feedback's images with seed % 5 == 0 are held back (gold labels, seen
prompts only), the rest train; the held-out feedback set (other seeds, seen and unseen prompts)
is the evaluation. Ranked by the logit (for the linear head, the reward itself). "three" is the
pairwise accuracy on "three ..." count prompts, where the pretrained model draws four shapes and
Eq. 2 can only teach the count if the reward ranks its rare right images first. `saturated` is
the share of held-out rewards exactly 1.0 in float32 (sigmoid only).
"""
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout
from tiny_rlhf_t2i import reward  # noqa: E402
from reward_last_block import chosen, pairwise, setup, train_as  # noqa: E402
from stage3_seeds import write_record  # noqa: E402


class LogitPC(reward.RewardModel):
    """Prompt classification over the logit in place of r = sigmoid(logit)."""

    def prompt_scores(self, img, txt):
        return self.logit(img, txt)


# (name, head, lambda, model class)
VARIANTS = (("sigmoid", "sigmoid", 0.5, reward.RewardModel),
            ("sigmoid_pc_on_logit", "sigmoid", 0.5, LogitPC),
            ("sigmoid_no_pc", "sigmoid", 0.0, reward.RewardModel),
            ("linear", "linear", 0.5, reward.RewardModel),
            ("linear_no_pc", "linear", 0.0, reward.RewardModel))


def main(argv=None):
    args, device, clip, (fit_rows, fit_images), (val_rows, val_images), held = setup(
        __doc__, argv)
    three = lambda rows: np.array([r["prompt"].startswith("three") for r in rows])
    split = lambda rows, s: np.array([r["split"] == s for r in rows])

    results = []
    print("| variant | lambda | seed | validation | val. three | held-out seen | seen three | "
          "unseen | unseen three | saturated |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    names = chosen(args, [v[0] for v in VARIANTS])
    variants = [v for v in VARIANTS if v[0] in names]
    for name, head, lam, model_class in variants:
        for seed in [int(s) for s in args.seeds.split(",")]:
            cfg = reward.RewardTrainConfig(seed=seed, reward_steps=args.reward_steps, lam=lam,
                                            reward_head=head)
            model = train_as(model_class, clip, fit_rows, fit_images, cfg, device)
            v = model.score(val_images, [r["prompt"] for r in val_rows], logit=True).numpy()
            h = model.score(held.images, [r["prompt"] for r in held.rows], logit=True).numpy()
            seen, unseen = split(held.rows, "seen"), split(held.rows, "unseen")
            row = {"variant": name, "head": head, "lambda": lam, "seed": seed,
                   "validation": pairwise(v, val_rows, np.ones(len(v), bool)),
                   "validation_three": pairwise(v, val_rows, three(val_rows)),
                   "heldout_seen": pairwise(h, held.rows, seen),
                   "heldout_seen_three": pairwise(h, held.rows, seen & three(held.rows)),
                   "heldout_unseen": pairwise(h, held.rows, unseen),
                   "heldout_unseen_three": pairwise(h, held.rows, unseen & three(held.rows)),
                   "saturated": (100 * float((torch.sigmoid(torch.from_numpy(h)) == 1).float()
                                             .mean()) if head == "sigmoid" else None)}
            results.append(row)
            print("| %s | %g | %d | %.1f | %.1f | %.1f | %.1f | %.1f | %.1f | %s |" % (
                name, lam, seed, *[row[k] for k in list(row)[4:-1]],
                "-" if row["saturated"] is None else "%.1f" % row["saturated"]), flush=True)
    keys = [k for k in results[0] if k not in ("variant", "head", "lambda", "seed", "saturated")]
    print("\nmean [min, max] over seeds")
    for name, _, lam, _ in variants:
        rs = [r for r in results if r["variant"] == name]
        print("| %s | %g | %s |" % (name, lam, " | ".join(
            "%.1f [%.1f, %.1f]" % (np.mean(x), np.min(x), np.max(x))
            for x in ([r[k] for r in rs] for k in keys))))
    if args.out:
        write_record(args.out, results, torch.get_num_threads())


if __name__ == "__main__":
    main()
