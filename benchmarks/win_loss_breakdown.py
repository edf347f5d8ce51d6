"""Where the wins and losses against the pretrained model come from, per prompt category.

    python benchmarks/win_loss_breakdown.py runs/unet/ckpt.pt runs/finetune/feedback/round2/ckpt.pt

Samples the evaluation's prompts and seeds with the evaluation's sampler (evaluate.eval_records,
16 per prompt, DPM-Solver++(2M) at 15 steps, guidance 3) for the first checkpoint (the "before")
and each later one, judges every image, and prints per category: wins (only the later image is
aligned), losses (only the before one is), and how many of the losses hold a malformed blob;
then the images holding a malformed blob on one-shape prompts ("a red circle") and on
several-shape prompts, for every checkpoint. Same prompt and seed on both sides, as the
reports' wins : losses.
"""
import argparse
import collections
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout
from tiny_rlhf_t2i.evaluate import eval_records, generate, score  # noqa: E402
from tiny_rlhf_t2i.unet import load_model  # noqa: E402
from tiny_rlhf_t2i.world import parse  # noqa: E402


def judged(path: Path, records, steps: int):
    """(goods, reasons) of one checkpoint on the evaluation records."""
    model = load_model(path)[0].to(memory_format=torch.channels_last)  # as finetune.py samples
    _, goods, reasons = score(generate(model, records, steps, 3.0), records)
    return goods, reasons


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ckpts", nargs="+", type=Path, help="before.pt after.pt [after2.pt ...]")
    parser.add_argument("--samples_per_prompt", type=int, default=16)
    parser.add_argument("--steps", type=int, default=15, help="sampler steps (the evaluation's)")
    parser.add_argument("--out", type=Path, help="write the counts as JSON here")
    args = parser.parse_args(argv)
    records = eval_records(args.samples_per_prompt)
    one_shape = [(parse(r["prompt"]).count or 1) == 1 for r in records]
    results = {}
    before = judged(args.ckpts[0], records, args.steps)
    for path in args.ckpts:
        goods, reasons = before if path == args.ckpts[0] else judged(path, records, args.steps)
        malformed = ["malformed" in why for why in reasons]
        row = {"malformed_one_shape": sum(m and o for m, o in zip(malformed, one_shape)),
               "one_shape_images": sum(one_shape),
               "malformed_several": sum(m and not o for m, o in zip(malformed, one_shape)),
               "several_images": len(records) - sum(one_shape)}
        if path != args.ckpts[0]:
            per = collections.defaultdict(lambda: {"images": 0, "wins": 0, "losses": 0,
                                                   "losses_malformed": 0})
            for r, old, new, mal in zip(records, before[0], goods, malformed):
                c = per[r["category"]]
                c["images"] += 1
                c["wins"] += new and not old
                c["losses"] += old and not new
                c["losses_malformed"] += old and not new and mal
            row["categories"] = dict(per)
        results[str(path)] = row
        print(f"{path}: malformed blobs on one-shape prompts {row['malformed_one_shape']}/"
              f"{row['one_shape_images']}, on several-shape prompts {row['malformed_several']}/"
              f"{row['several_images']}")
        for cat, c in sorted(row.get("categories", {}).items()):
            print(f"    {cat}: {c['wins']} wins, {c['losses']} losses ({c['losses_malformed']} "
                  f"holding a malformed blob) of {c['images']}")
    if args.out:
        args.out.write_text(json.dumps({"command": "python benchmarks/win_loss_breakdown.py "
                                        + " ".join(argv or sys.argv[1:]), "results": results},
                                       indent=1) + "\n")


if __name__ == "__main__":
    main()
