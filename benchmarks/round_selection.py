"""Which round would a run keep? Stage 3's held-out signal beside the evaluation, after the fact.

    python benchmarks/round_selection.py feedback=runs/finetune/feedback \\
        control=runs/finetune/control --out benchmarks/results/cpu_round_selection.json

For every run folder given (NAME=FOLDER, holding round1/, round2/, ... each with ckpt.pt and,
if evaluated, the evaluation's eval.json, and FOLDER/../pretrained_eval.json), samples every
round's model and the pretrained model on the held-out prompts (evaluate.heldout_records:
prompts the evaluation does not hold) and prints the signal a round is chosen by (the learned
reward's mean, the well-formed rate) beside what the evaluation measured of the same round,
then the round `evaluate.pick_round` keeps (a run named *control keeps its last, as in
finetune.py). Each checkpoint's signal is cached in --out, so a run given again (or grown by a
round) samples only what is new.
"""
import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout
from stage3_seeds import machine  # noqa: E402
from tiny_rlhf_t2i.evaluate import Evaluator, pick_round  # noqa: E402
from tiny_rlhf_t2i.reward import load_reward  # noqa: E402
from tiny_rlhf_t2i.unet import load_model  # noqa: E402

SHOWN = ("overall", "count", "seen", "unseen")  # evaluation groups printed beside the signal


def evaluation(path: Path) -> dict | None:
    """What the evaluation measured of a round (None: the round was not evaluated)."""
    if not path.exists():
        return None
    m = json.loads(path.read_text())["metrics"]
    return {**{g: m["alignment"][g]["mean"] for g in SHOWN},
            "well_formed": m["well_formed"]["mean"]}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="NAME=FOLDER (FOLDER/round1/ckpt.pt, ...)")
    parser.add_argument("--pretrained", type=Path, default=Path("runs/unet/ckpt.pt"))
    parser.add_argument("--reward_dir", type=Path, default=Path("runs/reward"))
    parser.add_argument("--fd", type=Path, default=Path("runs/fd"), help="the FD ruler's cache")
    parser.add_argument("--fd_net_steps", type=int, default=600, help="the FD ruler's steps")
    parser.add_argument("--samples_per_prompt", type=int, default=4)
    parser.add_argument("--tolerance", type=float, default=0.015,
                        help="well-formed a kept round may lose (fraction)")
    parser.add_argument("--steps", type=int, default=15, help="sampler steps (the evaluation's)")
    parser.add_argument("--out", type=Path, help="cache and record (JSON)")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    reward = load_reward(args.reward_dir, "python train_reward.py")
    resolution = load_model(args.pretrained)[0].cfg.resolution
    evaluator = Evaluator(1, args.steps, 3.0, resolution, reward, fd_cache=args.fd,
                          fd_net_steps=args.fd_net_steps,
                          heldout_per_prompt=args.samples_per_prompt)
    saved = json.loads(args.out.read_text()) if args.out and args.out.exists() else {}
    signals = saved.get("signals", {})

    def signal(ckpt: Path) -> dict:
        key = f"{ckpt}@{args.samples_per_prompt}"
        if key not in signals:
            model = load_model(ckpt)[0].to(memory_format=torch.channels_last)
            signals[key] = evaluator.heldout(model, str(ckpt))
            if args.out:  # after every checkpoint: an interrupted run keeps what it sampled
                args.out.write_text(json.dumps({**saved, "signals": signals}, indent=1))
        return signals[key]

    runs = {}
    for spec in args.runs:
        name, folder = spec.split("=", 1)
        folder = Path(folder)
        rounds = sorted(folder.glob("round*/ckpt.pt"), key=lambda p: int(p.parent.name[5:]))
        sig = [signal(args.pretrained)] + [signal(p) for p in rounds]
        ev = [evaluation(folder.parent / "pretrained_eval.json")] + [
            evaluation(p.parent / "eval.json") for p in rounds]
        # finetune.py keeps the control's last round: it is the same-compute reference
        kept = len(rounds) if name.endswith("control") else pick_round(sig, args.tolerance)
        runs[name] = {"folder": str(folder), "kept": kept, "signal": sig, "evaluation": ev}
        print(f"\n{name} ({folder}): keeps round {kept}")
        print("| round | held-out reward | well-formed | one shape | FD | diversity | gold (not "
              "used) | " + " | ".join(f"eval {g}" for g in (*SHOWN, "well_formed")) + " |")
        for k, (s, e) in enumerate(zip(sig, ev)):
            print(f"| {k}{' (kept)' if k == kept else ''} | {s['reward']:.3f} | "
                  f"{100 * s['well_formed']:.1f} | {100 * s['well_formed_lone']:.1f} | "
                  f"{s['fd']:.1f} | {s['diversity']:.2f} | {100 * s['alignment_not_used']:.1f} | "
                  + " | ".join("-" if e is None else f"{100 * e[g]:.1f}"
                               for g in (*SHOWN, "well_formed")) + " |")
    if args.out:
        args.out.write_text(json.dumps({
            "command": "python benchmarks/round_selection.py " + " ".join(argv or sys.argv[1:]),
            **machine(), "samples_per_prompt": args.samples_per_prompt,
            "tolerance": args.tolerance, "runs": runs, "signals": signals}, indent=1))


if __name__ == "__main__":
    main()
