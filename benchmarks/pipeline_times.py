"""Where the README's first command spends its time: seconds per stage and phase, read from the
metrics.json every stage writes.

    python train_unet.py && python train_reward.py && python finetune.py   # the first command
    python benchmarks/pipeline_times.py --install_seconds 40 \
        --out benchmarks/results/cpu_pipeline_times.json

Stage 0's training time includes building the web corpus table unless its corpus.pt was there
already, and stage 2's CLIP time is about 0 when clip.pt was: a fresh machine's total needs
fresh folders. Each stage folder can be given separately (--unet, --reward, --finetune) when the
stages ran in different places; --note says so in the JSON.
"""
import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout
from stage3_seeds import machine  # noqa: E402


def _metrics(folder: Path) -> dict:
    path = folder / "metrics.json"
    if not path.exists():
        sys.exit(f"{path} is missing: run that stage first")
    return json.loads(path.read_text())


def times(unet: Path, reward: Path, finetune: Path, install_s: float) -> dict:
    """{stage: {"seconds", "phases": {phase: seconds}}} plus the total."""
    u, r, f = _metrics(unet), _metrics(reward), _metrics(finetune)
    clip_s = r.get("clip_seconds", 0)  # absent in runs from before it was recorded
    stages = {
        "install": {"seconds": install_s, "phases": {}},
        "stage 0 (train_unet.py)": {
            "seconds": u["train_seconds"] + u["eval_seconds"],
            "phases": {"corpus table + training": u["train_seconds"],
                       "evaluation": u["eval_seconds"]}},
        "stages 1-2 (train_reward.py)": {
            "seconds": r["seconds"],
            "phases": {"feedback samples + labels": r["sampling_seconds"],
                       "CLIP": clip_s,
                       "two reward models + measurement":
                           r["seconds"] - r["sampling_seconds"] - clip_s}},
        "stage 3 (finetune.py)": {
            "seconds": f["seconds"], "runs": f["config"]["runs"],
            "phases": {k: round(v) for k, v in f["phase_seconds"].items()}},
    }
    total = sum(s["seconds"] for s in stages.values())
    where = machine()  # the commit this script runs at: run it right after the stages
    del where["torch_threads_per_arm"]
    return {"stages": stages, "total_minutes": round(total / 60, 1), **where}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--unet", type=Path, default=Path("runs/unet"))
    parser.add_argument("--reward", type=Path, default=Path("runs/reward"))
    parser.add_argument("--finetune", type=Path, default=Path("runs/finetune"))
    parser.add_argument("--install_seconds", type=float, default=0.0,
                        help="the set-up's time (venv + pip install), measured by hand")
    parser.add_argument("--note", default="", help="how the stages were run, for the JSON")
    parser.add_argument("--out", type=Path, help="write the JSON here")
    args = parser.parse_args(argv)
    t = times(args.unet, args.reward, args.finetune, args.install_seconds)
    print("| stage | phase | minutes |\n|---|---|---|")
    for name, s in t["stages"].items():
        print(f"| {name} | | {s['seconds'] / 60:.1f} |")
        for phase, sec in s["phases"].items():
            print(f"| | {phase} | {sec / 60:.1f} |")
    print(f"| total | | {t['total_minutes']} |")
    if args.out:
        t["note"] = args.note
        args.out.write_text(json.dumps(t, indent=1) + "\n")


if __name__ == "__main__":
    main()
