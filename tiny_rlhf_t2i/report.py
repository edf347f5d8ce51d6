"""Stage 3's report: win rates, the before/after grid, the plots, metrics.json and summary.md.

finetune.py trains and evaluates; this module only arranges what it measured. The tables name
each run's own settings, so a reader sees what differs between two rows.
"""
import dataclasses
import time

from .evaluate import GRID_PROMPTS, alignment_table, sample_grid_rows, win_rate
from .files import save_grid, write_metrics
from .plots import round_curves


def curve_point(m: dict) -> dict:
    """What the evaluation measured of one round for the over-optimization curve: the reward
    against the gold judge and what it may cost."""
    return {"reward": m["reward"], "alignment": m["alignment"]["overall"]["mean"],
            **{g: m["alignment"][g]["mean"] for g in ("seen", "unseen", "count")},
            "well_formed": m["well_formed"]["mean"], "fd": m["fd"],
            "shape_fit": m["shape_fit"]["mean"], "count_breakdown": m["count_breakdown"],
            **strict(m)}


def strict(m: dict) -> dict:
    """The strict judge's overall alignment and well-formed rate (judge.MIN_FIT); None in an
    evaluation saved before the strict judge existed (a resumed run)."""
    return {"alignment_strict": m["alignment_strict"]["overall"]["mean"]
            if "alignment_strict" in m else None,
            "well_formed_strict": m["well_formed_strict"]["mean"]
            if "well_formed_strict" in m else None}


def write(out, cfg, runs: dict, n_stage1: int, pretrained, before, results: dict,
          baselines: dict, clock, t0: float) -> None:
    """Everything a person reads after stage 3. runs: {name: (finetune.Run, its resolved
    config)}; n_stage1: stage 1's labels; before: the pretrained model's (metrics, goods,
    images); results: {run: finetune.RunResult}; baselines: {name: (metrics, goods)}. Each run
    is reported at the round it keeps."""
    run_cfgs = {name: c for name, (_, c) in runs.items()}
    weights = {name: run.weights for name, (run, _) in runs.items()}
    n_labels = {name: n_stage1 + (c.rounds - 1) * c.labels_per_round  # every label a run saw
                for name, c in run_cfgs.items() if weights[name] == "reward"}
    kept = {n: r.kept for n, r in results.items()}
    # What the evaluation measured of each run: round 0 (the pretrained model), the kept round,
    # or every round with --eval_every_round.
    evaluated = {n: {0: before, **r.evals} for n, r in results.items()}
    last = {"pretrained": before[:2], **baselines,  # name -> (metrics, goods) of its kept round
            **{n: evaluated[n][r.kept][:2] for n, r in results.items()}}
    metrics = {n: dict(m) for n, (m, _) in last.items()}  # a run kept at round 0 gets its own
    goods = {n: g for n, (_, g) in last.items()}
    for name in metrics:  # side by side with the pretrained model and the control
        if name != "pretrained":
            metrics[name]["win_rate_vs_pretrained"] = win_rate(goods[name], goods["pretrained"])
        if name not in ("pretrained", "control") and "control" in goods:
            metrics[name]["win_rate_vs_control"] = win_rate(goods[name], goods["control"])
    # Every round of every run: the held-out signal (runs that choose a round) and, where a
    # round was evaluated, what the evaluation measured.
    curves = {n: [{"round": k, "steps": k * run_cfgs[n].steps // run_cfgs[n].rounds,
                   "kept": r.kept == k, "heldout": h,
                   "evaluation": curve_point(evaluated[n][k][0]) if k in evaluated[n] else None}
                  for k, h in enumerate(r.heldout)]
              for n, r in results.items()}

    main_run = next((r for r in ("feedback", "gold") if r in results), next(iter(results)))
    rows_before, rows_after = (sample_grid_rows(m, GRID_PROMPTS, 6, cfg.num_inference_steps,
                                                cfg.guidance_scale)
                               for m in (pretrained, results[main_run].model))
    save_grid([r for pair in zip(rows_before, rows_after) for r in pair],
              [f"{tag}: {p}" for p in GRID_PROMPTS for tag in ("before", "after")],
              out / "before_after.png")
    round_curves(*plotted_curves(curves), out / "rounds.png")
    clock.lap("grids and plots")

    seconds = round(time.time() - t0)
    result = {"before": metrics["pretrained"], "after": metrics[main_run], "models": metrics,
              "rounds": curves, "kept": kept, "labels": n_labels, "seconds": seconds,
              "phase_seconds": clock.seconds, "evaluation": cfg.evaluation,
              "win_rate": metrics[main_run].get("win_rate_vs_pretrained"),
              "config": dataclasses.asdict(cfg),  # the command line's; each run's below
              "run_configs": {n: dataclasses.asdict(c) for n, c in run_cfgs.items()}}
    md = summary_md(metrics, curves, run_cfgs, weights, n_labels, kept, cfg, main_run, seconds,
                    clock.seconds)
    write_metrics(out, result, md)
    print(md)
    print(f"report: {out / 'summary.md'}   grid: {out / 'before_after.png'}   "
          f"plot: {out / 'rounds.png'}")


def plotted_curves(curves: dict) -> tuple[dict, str]:
    """What rounds.png draws: the held-out signal of every round of the runs that choose a
    round (gold alignment beside the reward that chose, never used to choose), or, when no run
    chooses, the evaluated rounds. Returns ({run: [{"steps", "reward", "alignment",
    "well_formed", "fd"}, ...]}, which prompts they are on)."""
    if any(p["heldout"] for points in curves.values() for p in points):
        drawn = {n: [{"steps": p["steps"], "reward": p["heldout"]["reward"],
                      "alignment": p["heldout"]["alignment_not_used"],
                      "well_formed": p["heldout"]["well_formed"], "fd": p["heldout"]["fd"]}
                     for p in points if p["heldout"]] for n, points in curves.items()}
        return {n: c for n, c in drawn.items() if c}, "held-out prompts"
    return {n: [{"steps": p["steps"], **p["evaluation"]} for p in points if p["evaluation"]]
            for n, points in curves.items()}, "evaluation prompts"


def summary_md(metrics: dict, curves: dict, run_cfgs: dict, weights: dict, n_labels: dict,
               kept: dict, cfg, main_run: str, seconds: float, phases: dict) -> str:
    """The results tables: alignment (per category, split), fidelity and win rates of each
    run's kept round, each run's own settings; then every round of every run (the
    over-optimization curve) with the held-out signal that chose the kept round."""
    pct = lambda r: "-" if r is None else (f"{100 * r['win']:.1f} / {100 * r['tie']:.1f} / "
                                           f"{100 * r['loss']:.1f}")
    pc = lambda v: "-" if v is None else f"{100 * v:.1f}"
    lines = [f"# Stage 3: reward-weighted fine-tuning (preset {cfg.preset}, "
             f"{seconds / 60:.1f} min)", "",
             "Time per phase: " + "; ".join(f"{k} {v / 60:.1f} min" for k, v in phases.items())
             + " (seconds in metrics.json).",
             "", f"Main run: `{main_run}`; {cfg.steps} steps per run, batch {cfg.batch_size} "
             f"({cfg.model_fraction:.0%} D_model). Gold-judge alignment with 95% CI "
             f"({cfg.eval_samples_per_prompt} samples per evaluation prompt, {cfg.evaluation} "
             f"seeds), each run at the round it keeps:", "",
             alignment_table(metrics), "| model | weights | rounds (kept) | t_min | anchor | beta "
             "| balanced | labels | FD | shape fit: mean / exact | strict judge: alignment / "
             "well-formed | diversity | win / tie / loss vs pretrained | vs control |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, m in metrics.items():
        c = run_cfgs.get(name)
        rounds = "-" if c is None else f"{c.rounds} ({kept[name]})"
        below = f" (pretrained below {c.pretrained_below})" if c and c.pretrained_below else ""
        tuned = ("-",) * 4 if c is None or weights[name] is None else (
            f"{c.model_t_min}{below}", c.anchor, c.beta, c.balance)
        lines.append(f"| {name} | {weights.get(name) or '-'} | {rounds} | "
                     + " | ".join(map(str, tuned)) + f" | {n_labels.get(name, '-')} | "
                     f"{m['fd']:.2f} | {m['shape_fit']['mean']:.3f} / "
                     f"{100 * m['shape_fit']['exact']:.1f}% | "
                     + " / ".join(pc(v) for v in strict(m).values())
                     + f" | {m['diversity']:.2f} | "
                     f"{pct(m.get('win_rate_vs_pretrained'))} | "
                     f"{pct(m.get('win_rate_vs_control'))} |")
    lines += ["", "Every round (round 0: the pretrained model). Held-out: mean r_phi and "
              "well-formed on the held-out prompts, which choose the kept round, and the gold "
              "judge's alignment there, recorded but not used to choose; the other "
              "columns are the evaluation's, of the rounds evaluated (the kept one; every one "
              "with --eval_every_round): reward, the mean r_phi of stage 2's reward on the "
              "evaluation samples; count per number, good / asked (bad ones with a malformed "
              "blob):", "",
              "| run | round | steps | held-out reward / well-formed / alignment | reward "
              "| alignment | seen | unseen | count | well-formed | strict: alignment / "
              "well-formed | FD | shape fit | count per number |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, points in curves.items():
        for p in points:
            h, e = p["heldout"], p["evaluation"]
            held = "-" if h is None else (f"{h['reward']:.3f} / {100 * h['well_formed']:.1f} / "
                                          f"{pc(h.get('alignment_not_used'))}")
            row = (f"| {name} | {p['round']}{' (kept)' if p['kept'] else ''} | {p['steps']} "
                   f"| {held} |")
            if e is None:
                lines.append(row + " - |" * 10)
                continue
            per_number = ", ".join(f"{w} {t['good']}/{t['asked']} ({t['malformed']})"
                                   for w, t in e["count_breakdown"].items())
            lines.append(row + f" {e['reward']:.3f} | "
                         + " | ".join(f"{100 * e[g]:.1f}" for g in ("alignment", "seen",
                                                                     "unseen", "count",
                                                                     "well_formed"))
                         + f" | {pc(e['alignment_strict'])} / {pc(e['well_formed_strict'])}"
                         + f" | {e['fd']:.1f} | {e['shape_fit']:.3f} | {per_number} |")
    return "\n".join(lines) + "\n"
