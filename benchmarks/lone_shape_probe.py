"""Does a checkpoint still draw a lone shape well-formed when the prompt names no background?

    python benchmarks/lone_shape_probe.py runs/unet/ckpt.pt runs/finetune/feedback/round*/ckpt.pt

The held-out prompts that choose stage 3's kept round (evaluate.heldout_records) ask for a lone
shape only on a background ("a red circle on a gray background"). This probe asks for lone shapes
with no background in two templates that neither feedback nor the evaluation holds: "a circle"
(64 samples per seen shape) and "one red circle" (8 per seen shape and color), with the
evaluation's sampler, on seeds of their own (past the held-out prompts' stream), and prints per
checkpoint the judge's well-formed rate per template and why its malformed blobs are malformed
(judge.analyze; an image also fails well-formed on a smeared background or with no shape at
all, which no blob's reason counts). It reads no evaluation prompt, so it may help choose
settings.
"""
import argparse
import collections
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout
from stage3_seeds import write_record  # noqa: E402
from tiny_rlhf_t2i import seeds  # noqa: E402
from tiny_rlhf_t2i.evaluate import generate  # noqa: E402
from tiny_rlhf_t2i.judge import analyze  # noqa: E402
from tiny_rlhf_t2i.unet import load_model  # noqa: E402
from tiny_rlhf_t2i.world import COLORS, SHAPES, UNSEEN_SHAPES  # noqa: E402

SEEN = [s for s in SHAPES if s not in UNSEEN_SHAPES]
TEMPLATES = {"a SHAPE": ([f"a {s}" for s in SEEN], 64),
             "one COLOR SHAPE": ([f"one {c} {s}" for s in SEEN for c in COLORS], 8)}
FIRST_INDEX = 1000  # prompt indices past the held-out prompts', so the seeds are their own


def records(template: str) -> list[dict]:
    """The template's records; prompt indices run on across the templates, so every record of
    the probe has a seed of its own."""
    index = FIRST_INDEX
    for name, (prompts, n) in TEMPLATES.items():
        if name == template:
            return [{"prompt": p, "seed": seeds.heldout_seed(index + i, k)}
                    for i, p in enumerate(prompts) for k in range(n)]
        index += len(prompts)
    raise KeyError(template)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ckpts", nargs="+", type=Path)
    parser.add_argument("--steps", type=int, default=15, help="sampler steps (the evaluation's)")
    parser.add_argument("--out", type=Path, help="write the rates as JSON here")
    args = parser.parse_args(argv)
    results = {}
    for path in args.ckpts:
        model = load_model(path)[0].to(memory_format=torch.channels_last)  # as finetune.py
        row = {}
        for template in TEMPLATES:
            analyses = [analyze(im) for im in generate(model, records(template), args.steps, 3.0)]
            row[template] = {
                "well_formed": float(np.mean([a["well_formed"] for a in analyses])),
                "n": len(analyses),
                "why": dict(collections.Counter(w for a in analyses for w in a["malformed_why"]))}
        results[str(path)] = row
        print(f"{path}: " + "; ".join(f"{t} well-formed {100 * r['well_formed']:.1f}% of {r['n']}"
                                      f" {r['why']}" for t, r in row.items()), flush=True)
    if args.out:
        write_record(args.out, results, torch.get_num_threads())


if __name__ == "__main__":
    main()
