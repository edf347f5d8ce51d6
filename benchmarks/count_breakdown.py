"""Count prompts broken down by the number asked for, for one or more checkpoints.

    python benchmarks/count_breakdown.py runs/unet/ckpt.pt runs/finetune/gold/round2/ckpt.pt

Uses the evaluation's own count prompts, seeds and sampler (evaluate.eval_records, 16 samples per
prompt, DPM-Solver++(2M) at 15 steps, guidance 3), so its totals equal the `count` row of the
reports. Prints, per checkpoint, good / asked for each number, how many of the bad ones hold a
malformed blob, and the most common ways the bad ones failed.
"""
import argparse
import collections
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout
from tiny_rlhf_t2i.evaluate import count_breakdown, eval_records, generate, score  # noqa: E402
from tiny_rlhf_t2i.unet import load_model  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ckpts", nargs="+", type=Path, help="checkpoints (ckpt.pt) to compare")
    parser.add_argument("--samples_per_prompt", type=int, default=16)
    parser.add_argument("--steps", type=int, default=15, help="sampler steps (the evaluation's)")
    args = parser.parse_args(argv)
    records = [r for r in eval_records(args.samples_per_prompt) if r["category"] == "count"]
    for path in args.ckpts:
        model = load_model(path)[0].to(memory_format=torch.channels_last)  # as finetune.py samples
        _, goods, reasons, _ = score(generate(model, records, args.steps, 3.0), records)
        failures = collections.Counter((r["prompt"].split()[0], why.split("found")[-1].strip())
                                       for r, good, why in zip(records, goods, reasons)
                                       if not good)
        print(f"{path}: " + ", ".join(f"{w} {t['good']}/{t['asked']} ({t['malformed']} bad "
                                      f"with a malformed blob)"
                                      for w, t in count_breakdown(records, goods, reasons).items())
              + f" (count {sum(goods)}/{len(goods)})")
        for (number, found), k in failures.most_common(4):
            print(f"    asked {number}, found {found}: {k}x")


if __name__ == "__main__":
    main()
