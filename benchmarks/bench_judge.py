"""The judge's cost per image, as stages 1 and 3 pay it (evaluate.score: verdict and well-formed).

    python benchmarks/bench_judge.py --out benchmarks/results/cpu_judge.json

On a GPU, stage 3 samples a few hundred images a second and the judge runs on the CPU, so its
milliseconds per image add straight to the stage's time. The images: web scenes rendered at
each resolution, half of them with pixel noise (off-palette pixels, specks and broken blobs, as
in a model's samples), the same for every run (fixed seed). Single-threaded numpy; run it with
nothing else on the machine.
"""
import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout
from tiny_rlhf_t2i.corpus import CaptionNoise, web_scene  # noqa: E402
from tiny_rlhf_t2i.evaluate import score  # noqa: E402
from tiny_rlhf_t2i.scenes import render  # noqa: E402
from tiny_rlhf_t2i.world import to_prompt  # noqa: E402


def judge_images(n: int, resolution: int) -> tuple[np.ndarray, list[dict]]:
    """n images (N, H, W, 3) uint8 and evaluation-like records of their prompts."""
    rng = np.random.default_rng(0)
    images, records = [], []
    for i in range(n):
        scene, _ = web_scene(rng, CaptionNoise())
        image = render(scene, resolution).astype(np.float32)
        if i % 2:
            image += rng.normal(0, 25, image.shape)
        images.append(np.clip(image, 0, 255).round().astype(np.uint8))
        records.append({"prompt": to_prompt(scene.spec), "category": scene.spec.category,
                        "split": "seen"})
    return np.stack(images), records


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="JSON results file")
    parser.add_argument("--n", type=int, default=1000, help="images per resolution")
    parser.add_argument("--resolutions", default="16,32,64")
    args = parser.parse_args(argv)
    result = {"n": args.n, "ms_per_image": {}, "good": {}}
    for res in map(int, args.resolutions.split(",")):
        images, records = judge_images(args.n, res)
        t0 = time.perf_counter()
        _, goods, _, _ = score(images, records)
        result["ms_per_image"][f"{res}px"] = (time.perf_counter() - t0) / args.n * 1e3
        result["good"][f"{res}px"] = sum(goods) / args.n  # the same images judged the same
        print(f"{res} px: {result['ms_per_image'][f'{res}px']:.2f} ms/image "
              f"({100 * result['good'][f'{res}px']:.1f}% good)", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
