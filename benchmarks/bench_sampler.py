"""Fewer sampling steps at the same judged quality? DDIM against DPM-Solver++(2M) on real models.

    python benchmarks/bench_sampler.py runs/unet/ckpt.pt runs/finetune/feedback/round2/ckpt.pt \\
        --samplers ddim:25,dpm++2m:10,dpm++2m:15,ddim:15 --out benchmarks/results/cpu_sampler.json

For every checkpoint and sampler (solver:steps) it samples the 88 evaluation prompts on the
validation seeds (`--evaluation val`'s, never the reported ones), 16 samples each, with the
defaults' guidance, judges them with the gold judge and writes alignment (overall and per
category), well-formed, the seconds it took, and how often each image's verdict agrees with the
first sampler's on the same prompt and seed (the reference, by default 25-step DDIM).

A sampler may name its batch (solver:steps:batch; without it `diffusion.sample`'s default): the
same sampler at several batch sizes times the batch alone, and `images_as_reference` says
whether every image came out equal to the reference's, to the last bit of its uint8 pixels.
`--channels_last` samples as stage 0's evaluation and stage 3 do (stages 1-2 sample the
checkpoint as loaded):

    python benchmarks/bench_sampler.py runs/unet/ckpt.pt --channels_last \
        --samplers dpm++2m:15:256,dpm++2m:15:128,dpm++2m:15:64,dpm++2m:15:32
"""
import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout
from stage3_seeds import machine  # noqa: E402
from tiny_rlhf_t2i.diffusion import sample, to_uint8  # noqa: E402
from tiny_rlhf_t2i.evaluate import eval_records, score  # noqa: E402
from tiny_rlhf_t2i.unet import load_model  # noqa: E402

GROUPS = ("overall", "count", "color", "background", "combination", "seen", "unseen")


def run(ckpt: Path, samplers: list[tuple[str, int, int | None]], per_prompt: int,
        guidance: float, channels_last: bool = False) -> dict:
    model, _ = load_model(ckpt, "the stage that writes it")
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    records = eval_records(per_prompt, val=True)
    prompts, seeds_ = [r["prompt"] for r in records], [r["seed"] for r in records]
    out, first, first_images = {}, None, None
    for solver, steps, batch in samplers:
        t0 = time.time()
        images = to_uint8(sample(model, prompts, seeds_, steps, guidance, solver=solver,
                                 batch_size=batch))
        seconds = time.time() - t0
        metrics, goods, _, _ = score(images, records)
        first = goods if first is None else first
        first_images = images if first_images is None else first_images
        name = f"{solver}:{steps}" + (f":{batch}" if batch else "")
        out[name] = {**{g: round(100 * metrics["alignment"][g]["mean"], 1) for g in GROUPS},
                     "well_formed": round(100 * metrics["well_formed"]["mean"], 1),
                     "verdicts_as_reference": round(float(np.mean(np.equal(goods, first))), 3),
                     "images_as_reference": bool(np.array_equal(images, first_images)),
                     "sampling_seconds": round(seconds, 1),
                     "images_per_s": round(len(images) / seconds, 1)}
        print(ckpt, name, out[name], flush=True)
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ckpts", nargs="+", type=Path)
    parser.add_argument("--samplers", default="ddim:25,dpm++2m:10,dpm++2m:15,ddim:15",
                        help="solver:steps[:batch], comma-separated; the first is the reference")
    parser.add_argument("--per_prompt", type=int, default=16)
    parser.add_argument("--guidance", type=float, default=3.0)
    parser.add_argument("--channels_last", action="store_true",
                        help="sample in channels_last memory, as stage 0's evaluation and stage 3")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    samplers = [(p[0], int(p[1]), int(p[2]) if len(p) > 2 else None)
                for p in (s.split(":") for s in args.samplers.split(","))]
    where = machine()  # the commit the samples come from
    results = {str(c): run(c, samplers, args.per_prompt, args.guidance, args.channels_last)
               for c in args.ckpts}
    if args.out:
        where["torch_threads_per_arm"] = torch.get_num_threads()
        args.out.write_text(json.dumps({"command": " ".join(["python", *sys.argv]), **where,
                                        "results": results}, indent=1) + "\n")


if __name__ == "__main__":
    main()
