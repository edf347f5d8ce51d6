"""Play with a trained model: sample a prompt, write a grid and the single images, judge them.

    python -m tiny_rlhf_t2i.sample --ckpt runs/unet/ckpt.pt "two red circles" --n 16
"""
import argparse
from pathlib import Path

from PIL import Image

from .config import ArgumentParser, UserError, run
from .diffusion import sample, to_uint8
from .files import save_grid
from .judge import judge
from .text import encode
from .unet import load_model
from .world import parse


def main(argv=None):
    ap = ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("prompt", help="e.g. 'two red circles on a blue background'")
    ap.add_argument("--ckpt", default="runs/unet/ckpt.pt", help="checkpoint of any stage")
    ap.add_argument("--n", type=int, default=16, help="number of images")
    ap.add_argument("--guidance-scale", type=float, default=3.0, help="classifier-free guidance")
    ap.add_argument("--steps", type=int, default=15, help="DPM-Solver++(2M) steps")
    ap.add_argument("--seed", type=int, default=0, help="image i uses seed + i")
    ap.add_argument("--out", default="runs/samples", help="output folder")
    args = ap.parse_args(argv)
    parse(args.prompt), encode([args.prompt])  # a bad prompt fails here, before any work
    if args.n < 1 or args.steps < 1 or not args.guidance_scale >= 0:
        raise UserError("--n and --steps must be at least 1 and --guidance-scale >= 0")
    out = Path(args.out)
    blocker = next(p for p in (out, *out.parents) if p.exists())  # the nearest existing path
    if not blocker.is_dir():  # found now, not after sampling
        raise UserError(f"--out must be a folder, but {blocker} is a file")
    model, _ = load_model(args.ckpt)
    seeds = [args.seed + i for i in range(args.n)]
    images = to_uint8(sample(model, [args.prompt] * args.n, seeds, args.steps, args.guidance_scale))
    out.mkdir(parents=True, exist_ok=True)
    stem = args.prompt.replace(" ", "_")[:80]  # a file name has a length limit
    goods = 0
    for seed, image in zip(seeds, images):
        Image.fromarray(image).save(out / f"{stem}_{seed}.png")
        good, reason = judge(image, args.prompt)
        goods += good
        print(f"seed {seed}: {'good' if good else 'bad '}  {reason}")
    grid = save_grid([list(images)], [args.prompt], out / f"{stem}_grid.png")
    print(f"{goods}/{args.n} judged good; grid {grid}, images in {out}/")


if __name__ == "__main__":
    run(main)
