"""Stages 1-3 with the strict judge as the labeler: do labels that reject in-between shapes teach
the method to draw cleaner shapes?

    python benchmarks/strict_labels.py --out runs/sl/strict -- --seed 0 --evaluation val

The judge that labels stage 1 (and every later round's labels) accepts a blob whose fill and
balance read as a circle even when it is drawn halfway to a diamond; the strict judge
(judge.verdict(..., strict=True), criterion e) does not. This script makes the strict judge the
labeler, the only change, and runs train_reward.py into OUT/feedback and OUT/reward (unless
OUT/reward/reward.pt exists), then finetune.py (feedback run, best-of-1, the arguments after
`--`, which may name another --out_dir or --feedback_dir, e.g. another seed's round-1 samples)
into OUT/finetune. Compare it with the same finetune.py command on the default labels (python
finetune.py --runs feedback --best_of_n 1 ...): both evaluations report both judges' alignment.
It runs the stage scripts' main() in this process, since the labeler is swapped in memory.
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout
import finetune  # noqa: E402
import train_reward  # noqa: E402
from tiny_rlhf_t2i import feedback  # noqa: E402
from tiny_rlhf_t2i.judge import analyze, verdict  # noqa: E402


def strict_judge(image, prompt):
    """judge.judge with criterion (e): what feedback.collect labels with, in this script."""
    return verdict(analyze(image), prompt, strict=True)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--unet_dir", default="runs/unet")
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--threads", default="0")
    args = parser.parse_args(argv)
    common = ["--preset", args.preset, "--unet_dir", args.unet_dir, "--threads", args.threads]
    default_judge, feedback.judge = feedback.judge, strict_judge  # collect() labels with it
    try:
        if not (args.out / "reward" / "reward.pt").exists():  # stages 1-2 once per OUT
            train_reward.main([*common, "--feedback_dir", str(args.out / "feedback"),
                               "--out_dir", str(args.out / "reward")])
        finetune.main([*common, "--runs", "feedback", "--best_of_n", "1",
                       "--reward_dir", str(args.out / "reward"),
                       "--feedback_dir", str(args.out / "feedback"),
                       "--out_dir", str(args.out / "finetune"), *extra])
    finally:
        feedback.judge = default_judge


if __name__ == "__main__":
    main()
