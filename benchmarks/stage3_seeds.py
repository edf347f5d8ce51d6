"""Stage 3 over seeds, each seed against its own same-compute control: the README's stage-3 table.

    python benchmarks/stage3_seeds.py launch runs/s3 --seeds 0,1,2
    python benchmarks/stage3_seeds.py table runs/s3 --out benchmarks/results/stage3_seeds.json

`launch` first prepares each seed once (ROOT/sS/prep: the pretrained model's evaluation and
round 1's unlabeled samples in ROOT/sS/d_model, next to a link to stage 1's labeled set), then
runs every arm of --arms at every seed as its own `finetune.py` process (ROOT/sS/ARM), all at
once with one CPU thread each; the arms of a seed share its round-1 samples, FD ruler and
pretrained evaluation, and run at the committed defaults plus the arguments after `--` (e.g.
--device cuda, or --evaluation val to choose settings on the validation seeds).

`table` reads every arm's evaluations (ARM/<run>/round<k>/eval.json: the kept round's, or every
round's with --eval_every_round) and prints, per seed and as mean [min, max] over seeds, each
arm's alignment, well-formed and FD (and the strict judge's alignment and well-formed, where the
evaluations hold them) at the round it keeps (finetune.py's held-out choice, ARM/metrics.json;
round 0 is the pretrained model) against the pretrained model and against the control of the
same seed, the win / loss rates from the same per-image verdicts, the over-optimization curve
(the rounds evaluated) and the count per number. With --out it writes the same numbers as JSON:
for each seed, arm and round the groups' alignment, well-formed, FD, mean reward, wins and
losses, the count per number (null for a round not evaluated), with the commit and the machine.
It works on the arms that finished (an arm stopped early shows its last evaluated round).
"""
import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
FIRST = ("feedback", "control", "gold", "paper")  # an arm is a run of finetune.py (its RUNS)
NOT_ARMS = ("prep", "fd", "d_model")  # a seed folder's shared parts
GROUPS = ("overall", "seen", "unseen", "count", "color", "background", "combination")


def _start(cmd: list[str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(cmd, stdout=open(log, "w"), stderr=subprocess.STDOUT,
                            env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"})


def _wait(procs: list, timeout: float) -> None:
    for name, t0, p in procs:
        try:
            rc = p.wait(timeout=max(1.0, timeout - (time.time() - t0)))
        except subprocess.TimeoutExpired:
            p.kill()
            rc = "killed (timeout)"
        print(f"{name}: exit {rc} after {time.time() - t0:.0f} s")


def launch(root: Path, seeds: list[int], extra: list[str], labeled: Path, fd: Path,
           timeout: float, arms: list[str]) -> None:
    script = [sys.executable, str(REPO / "finetune.py"), "--threads", "1", "--best_of_n", "1"]
    preps = []
    for seed in seeds:  # once per seed: the pretrained evaluation and round 1's samples
        s = root / f"s{seed}"
        (s / "d_model").mkdir(parents=True, exist_ok=True)
        if not (s / "d_model" / "train").exists():
            (s / "d_model" / "train").symlink_to(labeled.resolve())
        if fd.exists() and not (s / "fd").exists():
            shutil.copytree(fd, s / "fd")  # the FD ruler, cached: the same for every arm
        cmd = [*script, "--runs", "feedback", "--stop_after", "1", "--seed", str(seed),
               "--out_dir", str(s / "prep"), "--feedback_dir", str(s / "d_model"), *extra]
        preps.append((s / "prep", time.time(), _start(cmd, s / "prep.log")))
    _wait(preps, timeout)
    procs = []
    for seed in seeds:
        s = root / f"s{seed}"
        for name in arms:
            (s / name).mkdir(exist_ok=True)
            for done in ("pretrained_eval.json", "pretrained_heldout.json"):  # read back by
                if (s / "prep" / done).exists():                             # --resume
                    shutil.copy(s / "prep" / done, s / name)
            cmd = [*script, "--runs", name, "--seed", str(seed), "--resume", "true",
                   "--out_dir", str(s / name), "--feedback_dir", str(s / "d_model"), *extra]
            procs.append((s / name, time.time(), _start(cmd, s / f"{name}.log")))
    print(f"{len(procs)} arms started")
    _wait(procs, timeout)


def read_arm(ft: Path) -> dict | None:
    """The arm's pretrained evaluation, its run's evaluations (rounds[k - 1]: round k's, None if
    it was not evaluated) and the round it keeps (the last evaluated one for an arm that has
    not finished)."""
    pre = ft / "pretrained_eval.json"
    evals = {int(p.parent.name[5:]): p for p in (ft / ft.name).glob("round*/eval.json")}
    if not pre.exists() or not evals:
        return None
    done = ft / "metrics.json"
    metrics = json.loads(done.read_text()) if done.exists() else {}
    return {"pretrained": json.loads(pre.read_text()), "finished": bool(metrics),
            "kept": metrics.get("kept", {}).get(ft.name, max(evals)),
            "rounds": [json.loads(evals[k].read_text()) if k in evals else None
                       for k in range(1, max(evals) + 1)]}


def order(path_or_name) -> tuple:
    """Arms in the order of FIRST, then by name."""
    name = getattr(path_or_name, "name", path_or_name)
    return (FIRST.index(name) if name in FIRST else len(FIRST), name)


def wins(new: list, old: list) -> tuple[float, float]:
    new, old = np.asarray(new, bool), np.asarray(old, bool)
    return float((new & ~old).mean()), float((~new & old).mean())


def summarize(m: dict) -> dict:
    out = {g: 100 * m["alignment"][g]["mean"] for g in GROUPS}
    out.update(well_formed=100 * m["well_formed"]["mean"], fd=m["fd"], reward=m["reward"],
               shape_fit=m["shape_fit"]["mean"], diversity=m["diversity"],
               count_breakdown=m["count_breakdown"])
    if "alignment_strict" in m:  # the strict judge (judge.MIN_FIT), in evaluations since it exists
        out.update({f"strict_{g}": 100 * m["alignment_strict"][g]["mean"] for g in GROUPS},
                   well_formed_strict=100 * m["well_formed_strict"]["mean"])
    return out


def table(root: Path) -> dict:
    """{seed: {"pretrained": row, arm: {"finished", "rounds": [row of round 1, 2, ...]}}}; a
    row holds summarize()'s numbers plus wins / losses against the pretrained model and, for
    the arms beside a control, against the control's same round."""
    per_seed = {}
    for seed_dir in sorted(root.glob("s*")):
        arms = {a.name: read_arm(a) for a in sorted(seed_dir.iterdir(), key=order)
                if a.is_dir() and a.name not in NOT_ARMS}
        arms = {k: v for k, v in arms.items() if v is not None}
        if not arms:
            continue
        pre = next(iter(arms.values()))["pretrained"]
        control = arms.get("control")
        rows = {"pretrained": summarize(pre["metrics"])}
        for name, arm in arms.items():
            out = []
            for k, ev in enumerate(arm["rounds"]):
                if ev is None:  # a round not evaluated
                    out.append(None)
                    continue
                row = summarize(ev["metrics"])
                row["wins"], row["losses"] = wins(ev["goods"], pre["goods"])
                if "goods_strict" in ev and "goods_strict" in pre:  # evaluations since they exist
                    row["wins_strict"], row["losses_strict"] = wins(ev["goods_strict"],
                                                                    pre["goods_strict"])
                if (control is not None and name != "control" and k < len(control["rounds"])
                        and control["rounds"][k] is not None):
                    row["wins_vs_control"], row["losses_vs_control"] = wins(
                        ev["goods"], control["rounds"][k]["goods"])
                out.append(row)
            rows[name] = {"finished": arm["finished"], "kept": arm["kept"], "rounds": out}
        per_seed[seed_dir.name] = rows
    return per_seed


def _agg(values, digits: int = 1) -> str:
    v = np.asarray(values, float)
    one = f"{{:.{digits}f}}"
    return (f"{one.format(v.mean())} [{one.format(v.min())}, {one.format(v.max())}]"
            if len(v) > 1 else one.format(v[0]))


def kept(rows: dict, arm: str) -> dict:
    """The row of the round `arm` keeps at one seed (rows: table()'s seed entry); round 0 is the
    pretrained model, which neither wins nor loses against itself."""
    k = rows[arm]["kept"] if "rounds" in rows[arm] else 0
    return rows[arm]["rounds"][k - 1] if k else {**rows["pretrained"], "wins": 0.0, "losses": 0.0,
                                                  "wins_strict": 0.0, "losses_strict": 0.0}


def headline(per_seed: dict) -> str:
    """The README's stage-3 table: each arm at the round it keeps, mean [min, max] over seeds."""
    arms = sorted({a for rows in per_seed.values() for a in rows if a != "pretrained"
                   and all(a in r for r in per_seed.values())}, key=order)
    pre = [rows["pretrained"] for rows in per_seed.values()]
    cols = {a: [kept(rows, a) for rows in per_seed.values()] for a in arms}
    names = [a if all(rows[a]["finished"] for rows in per_seed.values()) else
             f"{a} (stopped after round {min(len(rows[a]['rounds']) for rows in per_seed.values())})"
             for a in arms]
    lines = ["| group | pretrained | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(arms),
             "| round kept | - | " + " | ".join(", ".join(str(rows[a]["kept"]) for rows in
                                                         per_seed.values()) for a in arms) + " |"]
    for key, label in (("overall", "overall"), ("count", "count"),
                       ("combination", "combination"), ("seen", "seen"), ("unseen", "unseen"),
                       ("well_formed", "well-formed")):
        lines.append(f"| {label} | {_agg([p[key] for p in pre])} | "
                     + " | ".join(_agg([r[key] for r in cols[a]]) for a in arms) + " |")
    lines.append(f"| shape fit | {_agg([p['shape_fit'] for p in pre], 3)} | "
                 + " | ".join(_agg([r["shape_fit"] for r in cols[a]], 3) for a in arms) + " |")
    for key, label in (("fd", "FD"), ("diversity", "diversity")):
        lines.append(f"| {label}, x pretrained's {_agg([p[key] for p in pre])} | 1 | "
                     + " | ".join(_agg([r[key] / p[key] for r, p in zip(cols[a], pre)], 2)
                                  for a in arms) + " |")
    lines.append("| wins : losses vs pretrained | - | " + " | ".join(
        _agg([r["wins"] / max(r["losses"], 1e-9) for r in cols[a]]) for a in arms) + " |")
    strict = [("strict_overall", "overall, strict judge"), ("strict_count", "count, strict judge"),
              ("strict_seen", "seen, strict judge"), ("strict_unseen", "unseen, strict judge"),
              ("well_formed_strict", "well-formed, strict judge")]
    has_strict = all("strict_overall" in r for r in pre + [r for a in arms for r in cols[a]])
    if has_strict:
        for key, label in strict:
            lines.append(f"| {label} | {_agg([p[key] for p in pre])} | "
                         + " | ".join(_agg([r[key] for r in cols[a]]) for a in arms) + " |")
    if all("wins_strict" in r for a in arms for r in cols[a]):
        lines.append("| wins : losses vs pretrained, strict judge | - | " + " | ".join(
            _agg([r["wins_strict"] / max(r["losses_strict"], 1e-9) for r in cols[a]])
            for a in arms) + " |")
    if "control" in cols:
        ctrl = cols["control"]
        for key, label in [("count", "count")] + ([("strict_count", "count, strict judge")]
                                                  if has_strict else []):
            lines.append(f"| {label} vs control | - | " + " | ".join(
                "-" if a == "control" else _agg([r[key] - c[key] for r, c in zip(cols[a], ctrl)])
                for a in arms) + " |")
    return "\n".join(lines)


def report(per_seed: dict) -> str:
    names = ["pretrained"] + sorted({n for rows in per_seed.values() for n in rows} - {"pretrained"},
                                    key=order)
    keys = (*GROUPS, "well_formed", "fd", "shape_fit", "reward")
    lines = [headline(per_seed), "",
             f"Seeds: {', '.join(per_seed)}. Mean [min, max] over the seeds an arm ran at; "
             "delta columns are per seed, against that seed's pretrained model / control.", "",
             "| arm | seeds | " + " | ".join(keys) + " | d count vs pre | d count vs control "
             "| d seen vs pre | d unseen vs pre | d well-formed | FD ratio | win:loss vs pre |",
             "|---|---|" + "---|" * (len(keys) + 7)]

    agg = _agg
    for name in names:
        seeds = [s for s in per_seed if name in per_seed[s]]
        rows = [kept(per_seed[s], name) for s in seeds]
        pres = [per_seed[s]["pretrained"] for s in seeds]
        ctrl = [kept(per_seed[s], "control") if "control" in per_seed[s] else None
                for s in seeds]
        cells = [agg([r[k] for r in rows]) if k not in ("reward", "shape_fit") else
                 f"{np.mean([r[k] for r in rows]):.3f}" for k in keys]
        if name == "pretrained":
            lines.append(f"| {name} | {len(seeds)} | " + " | ".join(cells) + " |" + " - |" * 7)
            continue
        d = lambda k, base: agg([r[k] - b[k] for r, b in zip(rows, base) if b is not None]) \
            if all(b is not None for b in base) else "-"
        ratio = agg([r["fd"] / p["fd"] for r, p in zip(rows, pres)])
        w = [r["wins"] / max(r["losses"], 1e-9) for r in rows]
        lines.append(f"| {name} | {len(seeds)} | " + " | ".join(cells)
                     + f" | {d('count', pres)} | {d('count', ctrl)} | {d('seen', pres)} | "
                     f"{d('unseen', pres)} | {d('well_formed', pres)} | {ratio} | "
                     f"{agg(w)} |")
    lines += ["", "Over-optimization curve (first seed of each arm; round 0 = pretrained; - a "
              "round not evaluated): reward / gold alignment / well-formed / FD / shape fit per "
              "round:", ""]
    for name in names[1:]:
        s = next(s for s in per_seed if name in per_seed[s])
        curve = [per_seed[s]["pretrained"]] + per_seed[s][name]["rounds"]
        lines.append(f"- {name} ({s}): " + " -> ".join(
            "-" if p is None else f"{p['reward']:.3f} / {p['overall']:.1f} / "
            f"{p['well_formed']:.1f} / {p['fd']:.0f} / {p['shape_fit']:.3f}" for p in curve))
    lines += ["", "Count per number (good / asked, summed over seeds):", ""]
    for name in names[1:]:
        total = {}
        for s in per_seed:
            if name not in per_seed[s]:
                continue
            for w, t in kept(per_seed[s], name)["count_breakdown"].items():
                acc = total.setdefault(w, [0, 0, 0])
                acc[0], acc[1], acc[2] = acc[0] + t["good"], acc[1] + t["asked"], \
                    acc[2] + t["malformed"]
        lines.append(f"- {name}: " + ", ".join(f"{w} {g}/{n} ({b} bad with a malformed blob)"
                                               for w, (g, n, b) in total.items()))
    return "\n".join(lines)


def machine() -> dict:
    """Where a launch ran: the commit and the CPU (a GPU run says so in its arguments)."""
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip()
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
    names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    flags = set(next((line.split(":", 1)[1].split() for line in lines
                      if line.startswith("flags")), []))
    # the widest vector unit: torch's CPU kernels (and so the last bits of every number) follow it
    isa = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else ""
    return {"commit": commit, "dirty": bool(subprocess.run(
                ["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                capture_output=True, text=True).stdout.strip()),
            "machine": f"{names[0] if names else platform.processor()}"
                       f"{f' ({isa})' if isa else ''}, {os.cpu_count()} cores",
            "torch_threads_per_arm": 1}


def write_record(out: Path, results, threads: int) -> None:
    """A benchmark's JSON record: the command line that made it, where it ran, its results."""
    out.write_text(json.dumps({"command": " ".join(["python", *sys.argv]), **machine(),
                               "torch_threads_per_arm": threads, "results": results},
                              indent=1) + "\n")


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    command = "python benchmarks/stage3_seeds.py " + " ".join(argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=("launch", "table"))
    parser.add_argument("root", type=Path)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--arms", default="feedback,control", help="runs of finetune.py's RUNS")
    parser.add_argument("--labeled", type=Path, default=Path("data/feedback/train"))
    parser.add_argument("--fd", type=Path, default=Path("runs/fd"))
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per arm")
    parser.add_argument("--out", type=Path, help="write the table's numbers as JSON here")
    args = parser.parse_args(argv)
    if args.what == "launch":
        t0, where = time.time(), machine()  # the code the arms run: the commit at the start
        launch(args.root, [int(s) for s in args.seeds.split(",")], extra, args.labeled, args.fd,
               args.timeout, args.arms.split(","))
        (args.root / "launch.json").write_text(json.dumps(
            {"command": command, **where, "minutes": round((time.time() - t0) / 60, 1)}))
        return
    per_seed = table(args.root)
    print(report(per_seed))
    if args.out:
        launched = args.root / "launch.json"
        info = json.loads(launched.read_text()) if launched.exists() else {}
        args.out.write_text(json.dumps({**info, "table_command": command, "seeds": per_seed},
                                       indent=1) + "\n")


if __name__ == "__main__":
    main()
