"""Self-check of the world and the judge: `python -m tiny_rlhf_t2i.selfcheck`.

Prints JSON: for each resolution, on N random clean renders,
  agreement.prompt - the scene was sampled for a random template prompt (free attributes drawn at
                     random): how often the judge says "good" for that prompt;
  agreement.full   - the same for the full description of the scene (every attribute named);
  agreement.strict - agreement.prompt for the strict judge (judge.MIN_FIT);
  rejection.<attr> - how often it says "bad" once that one attribute of the full description is
                     changed, i.e. for a render of a different scene;
  renders_per_s    - renderer throughput (one image at a time, this machine).
Every rate must be at least 99.5%: the judge must be right on clean renders before it may
judge a model.
"""
import argparse
import json
import time

import numpy as np

from .judge import analyze, verdict
from .scenes import render, sample_scene
from .world import ATTRIBUTES, RESOLUTIONS, all_prompts, perturb


def selfcheck(n: int, resolution: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    prompts = all_prompts()
    asked = [prompts[int(rng.integers(len(prompts)))] for _ in range(n)]
    scenes = [sample_scene(spec, rng) for spec in asked]
    t0 = time.perf_counter()
    images = [render(s, resolution) for s in scenes]
    renders_per_s = n / (time.perf_counter() - t0)
    agree = {"prompt": 0, "full": 0, "strict": 0}
    rejected = dict.fromkeys(ATTRIBUTES, 0)
    failures = []
    for spec, scene, image in zip(asked, scenes, images):
        a = analyze(image)
        for key, prompt, strict in (("prompt", spec, False), ("full", scene.spec, False),
                                    ("strict", spec, True)):
            good, reason = verdict(a, prompt, strict)
            agree[key] += good
            if not good and len(failures) < 5:
                failures.append(reason)
        for attr in ATTRIBUTES:
            good, reason = verdict(a, perturb(scene.spec, attr, rng))
            rejected[attr] += not good
            if good and len(failures) < 5:
                failures.append(f"accepted a changed {attr}: {reason}")
    return {"n": n, "agreement": {k: v / n for k, v in agree.items()},
            "rejection": {k: v / n for k, v in rejected.items()},
            "renders_per_s": round(renders_per_s), "failures": failures}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--n", type=int, default=2000, help="renders per resolution")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--resolutions", type=int, nargs="+", default=list(RESOLUTIONS))
    args = ap.parse_args(argv)
    report = {str(r): selfcheck(args.n, r, args.seed) for r in args.resolutions}
    print(json.dumps(report, indent=1))
    worst = min(min(v[k].values()) for v in report.values() for k in ("agreement", "rejection"))
    if worst < 0.995:
        raise SystemExit(f"self-check FAILED: a rate is {worst:.4f} < 0.995")


if __name__ == "__main__":
    main()
