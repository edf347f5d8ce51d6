"""Where the wins and losses against the pretrained model come from, per prompt category.

    python benchmarks/win_loss_breakdown.py runs/unet/ckpt.pt runs/finetune/feedback/round2/ckpt.pt

Samples the evaluation's prompts and seeds with the evaluation's sampler (evaluate.eval_records,
16 per prompt, DPM-Solver++(2M) at 15 steps, guidance 3) for the first checkpoint (the "before")
and each later one, judges every image, and prints per category: wins (only the later image is
aligned), losses (only the before one is), and how many of the losses hold a malformed blob;
then the images holding a malformed blob on one-shape prompts ("a red circle") and on
several-shape prompts, for every checkpoint, and why the judge calls the one-shape prompts'
blobs malformed (too large: objects joined; two parts: touching at a corner; mixed color; no
shape's silhouette: in between shapes). Same prompt and seed on both sides, as the
reports' wins : losses.
"""
import argparse
import collections
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout
from stage3_seeds import write_record  # noqa: E402
from tiny_rlhf_t2i.evaluate import eval_records, generate, score  # noqa: E402
from tiny_rlhf_t2i.judge import analyze  # noqa: E402
from tiny_rlhf_t2i.unet import load_model  # noqa: E402
from tiny_rlhf_t2i.world import parse  # noqa: E402


def judged(path: Path, records, steps: int):
    """(goods, reasons, why) of one checkpoint on the evaluation records; why: how often each
    reason the judge gives for a malformed blob (judge.analyze) occurs on one-shape prompts."""
    model = load_model(path)[0].to(memory_format=torch.channels_last)  # as finetune.py samples
    images = generate(model, records, steps, 3.0)
    _, goods, reasons, _ = score(images, records)
    why = collections.Counter(w for image, r in zip(images, records) if one_shape(r)
                              for w in analyze(image)["malformed_why"])
    return goods, reasons, dict(why)


def one_shape(record) -> bool:
    return (parse(record["prompt"]).count or 1) == 1


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ckpts", nargs="+", type=Path, help="before.pt after.pt [after2.pt ...]")
    parser.add_argument("--samples_per_prompt", type=int, default=16)
    parser.add_argument("--steps", type=int, default=15, help="sampler steps (the evaluation's)")
    parser.add_argument("--out", type=Path, help="write the counts as JSON here")
    args = parser.parse_args(argv)
    records = eval_records(args.samples_per_prompt)
    single = [one_shape(r) for r in records]
    results = {}
    before = judged(args.ckpts[0], records, args.steps)
    for path in args.ckpts:
        goods, reasons, why = (before if path == args.ckpts[0]
                               else judged(path, records, args.steps))
        malformed = ["malformed" in why for why in reasons]
        row = {"malformed_one_shape": sum(m and o for m, o in zip(malformed, single)),
               "one_shape_images": sum(single),
               "malformed_several": sum(m and not o for m, o in zip(malformed, single)),
               "several_images": len(records) - sum(single),
               "one_shape_blobs_why": why}
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
              f"{row['several_images']}; why the one-shape blobs are malformed: {why}")
        for cat, c in sorted(row.get("categories", {}).items()):
            print(f"    {cat}: {c['wins']} wins, {c['losses']} losses ({c['losses_malformed']} "
                  f"holding a malformed blob) of {c['images']}")
    if args.out:
        write_record(args.out, results, torch.get_num_threads())


if __name__ == "__main__":
    main()
