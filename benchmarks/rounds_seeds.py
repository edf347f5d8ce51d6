"""Stage 3's rounds over seeds, each seed against its own same-compute control.

    python benchmarks/rounds_seeds.py launch runs/rounds_seeds --seeds 0,1,2 -- --device cuda
    python benchmarks/rounds_seeds.py table runs/rounds_seeds --out rounds_seeds.json

`launch` runs every arm of ARMS (the method, its control, gold and the paper's one round at
every seed; the ablations at the first seed only) as its own `finetune.py` process, all at once
with one CPU thread each (the D_pre renderer is Python on one core, so the arms of a GPU run are
bound by the CPU cores, not the GPU). Arm A at seed S writes ROOT/sS/A/; the arguments after
`--` go to every arm (e.g. --preset, --device). Each arm samples its own round-1 unlabeled set
into its own feedback folder, next to a link to the shared labeled set.

`table` reads every arm's per-round evaluations (finetune/<run>/round<k>/eval.json) and prints,
per seed and as mean [min, max] over seeds, each arm's final alignment, well-formed and FD
against the pretrained model and against the control of the same seed, the win / loss rates
from the same per-image verdicts, the over-optimization curve (every round) and the count per
number. It works on the arms that finished (an arm stopped early shows its last round).
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ARMS = {  # name: (finetune.py arguments, every seed or the first only)
    "feedback": ("--runs feedback", True),  # the default rounds configuration
    "control": ("--runs control", True),  # same steps and rounds, D_pre alone
    "gold": ("--runs gold", True),  # the judge's verdicts as weights: the ceiling
    "paper": ("--runs paper", True),  # one offline round, every timestep
    "rounds_t0": ("--runs feedback --model_t_min 0", False),  # rounds without the timestep cut
    "one_round_t500": ("--runs feedback --rounds 1", False),  # the timestep cut without rounds
    "t250": ("--runs feedback --model_t_min 250", False),
    "t750": ("--runs feedback --model_t_min 750", False),
}
GROUPS = ("overall", "seen", "unseen", "count", "color", "background", "combination")


def launch(root: Path, seeds: list[int], extra: list[str], labeled: Path, fd: Path,
           timeout: float, arms: list[str]) -> None:
    procs = []
    for i, seed in enumerate(seeds):
        for name in arms:
            args, every_seed = ARMS[name]
            if i > 0 and not every_seed:
                continue
            arm = root / f"s{seed}" / name
            (arm / "feedback").mkdir(parents=True, exist_ok=True)
            if not (arm / "feedback" / "train").exists():
                (arm / "feedback" / "train").symlink_to(labeled.resolve())
            if fd.exists() and not (arm / "fd").exists():
                shutil.copytree(fd, arm / "fd")  # the FD ruler, cached: the same for every arm
            cmd = [sys.executable, str(Path(__file__).resolve().parents[1] / "finetune.py"),
                   *args.split(), "--seed", str(seed),
                   "--threads", "1", "--best_of_n", "1", "--out_dir", str(arm / "finetune"),
                   "--feedback_dir", str(arm / "feedback"), *extra]
            log = open(arm / "log.txt", "w")
            procs.append((arm, time.time(), subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT,
                env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"})))
    print(f"{len(procs)} arms started")
    for arm, t0, p in procs:
        try:
            rc = p.wait(timeout=max(1.0, timeout - (time.time() - t0)))
        except subprocess.TimeoutExpired:
            p.kill()
            rc = "killed (timeout)"
        print(f"{arm}: exit {rc} after {time.time() - t0:.0f} s")


def read_arm(arm: Path) -> dict | None:
    """The arm's pretrained evaluation and its run's evaluations, one per finished round."""
    ft = arm / "finetune"
    pre = ft / "pretrained_eval.json"
    run = ARMS[arm.name][0].split()[1]  # "--runs NAME ..."
    rounds = sorted((ft / run).glob("round*/eval.json"), key=lambda p: int(p.parent.name[5:]))
    if not pre.exists() or not rounds:
        return None
    config = json.loads((ft / "metrics.json").read_text())["config"] if (
        ft / "metrics.json").exists() else None
    return {"pretrained": json.loads(pre.read_text()),
            "rounds": [json.loads(p.read_text()) for p in rounds], "finished": config is not None}


def wins(new: list, old: list) -> tuple[float, float]:
    new, old = np.asarray(new, bool), np.asarray(old, bool)
    return float((new & ~old).mean()), float((~new & old).mean())


def summarize(m: dict) -> dict:
    out = {g: 100 * m["alignment"][g]["mean"] for g in GROUPS}
    out.update(well_formed=100 * m["well_formed"]["mean"], fd=m["fd"], reward=m["reward"])
    return out


def table(root: Path) -> dict:
    per_seed = {}
    for seed_dir in sorted(root.glob("s*")):
        arms = {a.name: read_arm(a) for a in sorted(seed_dir.iterdir()) if a.name in ARMS}
        arms = {k: v for k, v in arms.items() if v is not None}
        if not arms:
            continue
        pre = next(iter(arms.values()))["pretrained"]
        control = arms.get("control")
        rows = {"pretrained": {**summarize(pre["metrics"]), "rounds_done": 0}}
        for name, arm in arms.items():
            final = arm["rounds"][-1]
            row = {**summarize(final["metrics"]), "rounds_done": len(arm["rounds"]),
                   "finished": arm["finished"]}
            row["win_vs_pretrained"], row["loss_vs_pretrained"] = wins(final["goods"],
                                                                         pre["goods"])
            if control is not None and name != "control":
                row["win_vs_control"], row["loss_vs_control"] = wins(
                    final["goods"], control["rounds"][-1]["goods"])
            row["curve"] = [summarize(r["metrics"]) for r in [pre] + arm["rounds"]]
            row["count_breakdown"] = final["metrics"]["count_breakdown"]
            rows[name] = row
        per_seed[seed_dir.name] = rows
    return per_seed


def report(per_seed: dict) -> str:
    names = sorted({n for rows in per_seed.values() for n in rows},
                   key=lambda n: (n != "pretrained", n not in ARMS, list(ARMS).index(n)
                                  if n in ARMS else 0))
    keys = (*GROUPS, "well_formed", "fd", "reward")
    lines = [f"Seeds: {', '.join(per_seed)}. Mean [min, max] over the seeds an arm ran at; "
             "delta columns are per seed, against that seed's pretrained model / control.", "",
             "| arm | seeds | " + " | ".join(keys) + " | d count vs pre | d count vs control "
             "| d seen vs pre | d unseen vs pre | d well-formed | FD ratio | win:loss vs pre |",
             "|---|---|" + "---|" * (len(keys) + 7)]

    def agg(values):
        v = np.asarray(values, float)
        return f"{v.mean():.1f} [{v.min():.1f}, {v.max():.1f}]" if len(v) > 1 else f"{v[0]:.1f}"
    for name in names:
        seeds = [s for s in per_seed if name in per_seed[s]]
        rows = [per_seed[s][name] for s in seeds]
        pres = [per_seed[s]["pretrained"] for s in seeds]
        ctrl = [per_seed[s].get("control") for s in seeds]
        cells = [agg([r[k] for r in rows]) if k != "reward" else
                 f"{np.mean([r[k] for r in rows]):.3f}" for k in keys]
        if name == "pretrained":
            lines.append(f"| {name} | {len(seeds)} | " + " | ".join(cells) + " |" + " - |" * 7)
            continue
        d = lambda k, base: agg([r[k] - b[k] for r, b in zip(rows, base) if b is not None]) \
            if all(b is not None for b in base) else "-"
        ratio = agg([r["fd"] / p["fd"] for r, p in zip(rows, pres)])
        w = [r["win_vs_pretrained"] / max(r["loss_vs_pretrained"], 1e-9) for r in rows]
        lines.append(f"| {name} | {len(seeds)} | " + " | ".join(cells)
                     + f" | {d('count', pres)} | {d('count', ctrl)} | {d('seen', pres)} | "
                     f"{d('unseen', pres)} | {d('well_formed', pres)} | {ratio} | "
                     f"{agg(w)} |")
    lines += ["", "Over-optimization curve (first seed of each arm; round 0 = pretrained): "
              "reward / gold alignment / well-formed / FD per round:", ""]
    for name in names[1:]:
        s = next(s for s in per_seed if name in per_seed[s])
        curve = per_seed[s][name]["curve"]
        lines.append(f"- {name} ({s}): " + " -> ".join(
            f"{p['reward']:.3f} / {p['overall']:.1f} / {p['well_formed']:.1f} / {p['fd']:.0f}"
            for p in curve))
    lines += ["", "Count per number (good / asked, summed over seeds):", ""]
    for name in names[1:]:
        total = {}
        for s in per_seed:
            for w, t in per_seed[s].get(name, {}).get("count_breakdown", {}).items():
                acc = total.setdefault(w, [0, 0, 0])
                acc[0], acc[1], acc[2] = acc[0] + t["good"], acc[1] + t["asked"], \
                    acc[2] + t["malformed"]
        lines.append(f"- {name}: " + ", ".join(f"{w} {g}/{n} ({b} bad with a malformed blob)"
                                               for w, (g, n, b) in total.items()))
    return "\n".join(lines)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=("launch", "table"))
    parser.add_argument("root", type=Path)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--arms", default=",".join(ARMS))
    parser.add_argument("--labeled", type=Path, default=Path("data/feedback/train"))
    parser.add_argument("--fd", type=Path, default=Path("runs/fd"))
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per arm")
    parser.add_argument("--out", type=Path, help="write the table's numbers as JSON here")
    args = parser.parse_args(argv)
    if args.what == "launch":
        launch(args.root, [int(s) for s in args.seeds.split(",")], extra, args.labeled, args.fd,
               args.timeout, args.arms.split(","))
        return
    per_seed = table(args.root)
    print(report(per_seed))
    if args.out:
        args.out.write_text(json.dumps(per_seed, indent=1))


if __name__ == "__main__":
    main()
