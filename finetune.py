"""Stage 3: reward-weighted fine-tuning and the before/after evaluation (Lee et al. 2023, Sec. 3.3).

1. D_model: the labeled feedback images plus fresh *unlabeled* samples of the pretrained model
   on seen feedback prompts, every image weighted by the reward model's score r_phi(x, z)
   (feedback.load_d_model). D_pre: the web corpus (pretraining data).
2. Fine-tune with Eq. 2: reward-weighted denoising loss on D_model + beta * denoising loss on
   D_pre, half of every batch from each (losses.finetune_loss), in the same training loop as
   stage 0 (train_loop.py). One change to the paper, on by default (--balance false undoes
   it): the weights are rescaled so that prompts the model rarely gets right ("three ...")
   keep their share of D_model (losses.balance_groups).
3. Rounds of feedback (our extension; the paper names online feedback as its next step): in
   round k >= 2 the current model is sampled afresh on the feedback prompts, stage 1's labeler
   labels a budget of those samples, the reward is trained again on every label so far, and
   the model is fine-tuned again with Eq. 2 on its new samples. The model's own samples teach
   only the high-noise timesteps (--model_t_min, train_loop.step_loss): what to draw, not how
   to draw it. `--rounds 1 --model_t_min 0` (the run `paper`) is the paper's method.
4. Two more runs make the result honest: the *control* (the same steps, rounds and optimizer on
   D_pre alone: whatever it gains is extra training, not feedback) and *gold* (the judge's
   verdicts as weights: a perfect reward model, the ceiling of the method).
5. Evaluate every round of every run on the same prompts, seeds and sampler noise with the gold
   judge: alignment, fidelity (well-formed rate, FD), mean reward (the over-optimization curve),
   count per number, win rate, diversity, and the best-of-n baseline; write summary.md,
   metrics.json, a before/after grid, a plot of alignment per category and one per round.

    python finetune.py                                   # after train_reward.py
    python finetune.py --runs paper,control --rounds 1 --model_t_min 0  # the paper's method
    python finetune.py --runs labeled_only,labeled_unlabeled_beta0,paper,unbalanced,beta1 \\
        --rounds 1 --model_t_min 0 --steps 750 --eval_samples_per_prompt 8 --best_of_n 1 \\
        --out_dir runs/ablation  # the paper's Table 3
    torchrun --standalone --nproc_per_node 8 finetune.py --preset gpu  # 8 GPUs (DDP): rank 0
        samples, labels, evaluates and writes; every rank trains on its share of each batch
"""
import copy
import dataclasses
import json
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from tiny_rlhf_t2i import distributed, seeds
from tiny_rlhf_t2i.config import check_range, parse_config, require, run
from tiny_rlhf_t2i.corpus import WebCorpus
from tiny_rlhf_t2i.diffusion import NUM_TRAIN_TIMESTEPS
from tiny_rlhf_t2i.evaluate import (GRID_PROMPTS, Evaluator, alignment_table, generate,
                                    sample_grid_rows, win_rate)
from tiny_rlhf_t2i.feedback import DModel, collect, feedback_records, load_d_model, load_feedback
from tiny_rlhf_t2i.files import (atomic_write_text, check_writable, pick_device, save_checkpoint,
                                 save_grid, write_metrics)
from tiny_rlhf_t2i.kernels import BACKENDS, resolve_loss_backend
from tiny_rlhf_t2i.losses import balance_groups, eq2_weights
from tiny_rlhf_t2i.plots import alignment_bars, round_curves
from tiny_rlhf_t2i.reward import RewardTrainConfig, load_reward, load_stage2, train_reward_model
from tiny_rlhf_t2i.train_loop import Batch, LoopConfig, drop_captions, train
from tiny_rlhf_t2i.unet import load_model
from tiny_rlhf_t2i.world import CATEGORIES


@dataclasses.dataclass(frozen=True)
class Run:
    """What one fine-tuning run trains on."""
    weights: str | None  # D_model weights: "reward" (r_phi), "gold" (the judge), None (control)
    unlabeled: bool = True  # D_model holds the unlabeled samples too (the labeled ones always)
    beta: float | None = None  # weight of the pretraining loss (None: --beta)
    balance: bool | None = None  # rescale weights per prompt group (None: --balance)
    rounds: int | None = None  # rounds of feedback (None: --rounds)
    t_min: int | None = None  # own samples teach timesteps >= t_min (None: --model_t_min)


RUNS = {
    "feedback": Run("reward"),  # the method: rounds of feedback, own samples at high noise
    "paper": Run("reward", rounds=1, t_min=0),  # the paper's method: one offline round
    "control": Run(None),  # same steps and rounds, D_pre only: extra training without feedback
    "gold": Run("gold"),  # a perfect reward model: the ceiling of the method
    "unbalanced": Run("reward", balance=False),  # plain Eq. 2 weights
    # The paper's Table 3: labeled only; + unlabeled; + pretraining loss (= feedback); beta.
    "labeled_only": Run("reward", unlabeled=False, beta=0.0),
    "labeled_unlabeled_beta0": Run("reward", beta=0.0),
    "beta0.5": Run("reward", beta=0.5),
    "beta1": Run("reward", beta=1.0),
    "beta2": Run("reward", beta=2.0),
}


@dataclasses.dataclass
class FinetuneConfig(LoopConfig):
    """Stage 3: reward-weighted fine-tuning (Eq. 2) and evaluation."""
    preset: str = "cpu"  # the named preset these values started from (--preset)
    unet_dir: str = "runs/unet"  # stage 0 run folder (ckpt.pt: the pretrained model)
    reward_dir: str = "runs/reward"  # stage 2 run folder (reward.pt, clip.pt)
    feedback_dir: str = "data/feedback"  # stage 1 feedback sets; unlabeled samples go here too
    out_dir: str = "runs/finetune"  # run folder: one sub-folder per run, summary.md, grids
    runs: str = "feedback,control,gold"  # fine-tuning runs, comma-separated (RUNS in finetune.py)
    rounds: int = 2  # rounds of feedback, each on fresh samples of the current model (1: paper)
    model_t_min: int = 500  # own samples teach timesteps >= this only (0: every t, the paper)
    labels_per_round: int = 500  # new labels by stage 1's labeler in each round after the first
    unlabeled_per_category: int = 1000  # own samples per category and round (paper: 16K in all)
    beta: float = 0.1  # weight of the pretraining loss, Eq. 2 (paper: 1; see docs/results.md)
    model_fraction: float = 0.5  # fraction of each batch from D_model (paper: half)
    balance: bool = True  # rescale weights per (category, number) group (losses.balance_groups)
    steps: int = 1000  # fine-tuning steps per run, split evenly over its rounds
    batch_size: int = 128  # images per step, D_model and D_pre together
    lr: float = 5e-4  # peak AdamW learning rate (warmup, then cosine decay to 0)
    warmup_steps: int = 50  # linear warmup steps
    weight_decay: float = 0.01  # AdamW weight decay
    ema_decay: float = 0.995  # EMA of the fine-tuned weights (starts at the pretrained EMA)
    p_uncond: float = 0.1  # caption dropout on every row, as in pretraining (guidance needs it)
    guidance_scale: float = 3.0  # sampling for the unlabeled set and the evaluation
    num_inference_steps: int = 25  # DDIM steps
    eval_samples_per_prompt: int = 16  # samples per fixed evaluation prompt (88 prompts)
    best_of_n: int = 4  # best-of-n baseline: n samples of the pretrained model, keep the best
    fd_net_steps: int = 600  # training steps of the FD feature network (cached in runs/fd)
    loss_backend: str = "auto"  # Eq. 2's weighted MSE: auto, torch or cuda (fused kernel)
    device: str = "auto"  # auto, cpu or cuda
    threads: int = 0  # torch CPU threads (0: torch's default)

    def __post_init__(self):
        LoopConfig.__post_init__(self)
        unknown = [r for r in self.runs.split(",") if r not in RUNS]
        require(not unknown, f"--runs: unknown run(s) {unknown}; valid runs: {', '.join(RUNS)}")
        require(self.loss_backend in BACKENDS, f"--loss_backend must be one of {BACKENDS}")
        check_range(self, "model_fraction", 0, 1, open_lo=True)
        check_range(self, "p_uncond", 0, 1, open_hi=True)
        check_range(self, "beta unlabeled_per_category guidance_scale threads", 0)
        check_range(self, "rounds", 1)
        check_range(self, "model_t_min", 0, NUM_TRAIN_TIMESTEPS, open_hi=True)
        check_range(self, "labels_per_round", 0, 4 * self.unlabeled_per_category)
        require(self.steps >= self.rounds, f"--steps ({self.steps}) must be at least --rounds "
                f"({self.rounds}): the steps are split over the rounds")
        check_range(self, "best_of_n eval_samples_per_prompt num_inference_steps fd_net_steps", 1)


PRESETS = {
    "smoke": dict(unet_dir="runs/smoke/unet", reward_dir="runs/smoke/reward",
                  feedback_dir="runs/smoke/feedback", out_dir="runs/smoke/finetune",
                  unlabeled_per_category=8, labels_per_round=8, steps=10, rounds=2,
                  batch_size=16, num_inference_steps=5,
                  eval_samples_per_prompt=1, best_of_n=2, warmup_steps=2, fd_net_steps=30),
    "cpu": dict(),
    "gpu": dict(unet_dir="runs/gpu/unet", reward_dir="runs/gpu/reward",  # the cpu preset at 32 px
                feedback_dir="data/feedback_gpu", out_dir="runs/gpu/finetune"),
}


@dataclasses.dataclass
class Inputs:
    """What stages 0-2 made, loaded and checked before any work is done."""
    pretrained: torch.nn.Module  # stage 0's model (EMA weights)
    pre: dict  # stage 0's config
    corpus: WebCorpus  # D_pre: stage 0's web corpus
    reward: torch.nn.Module  # stage 2's reward model r_phi
    clip: torch.nn.Module  # our CLIP, to train the reward again in later rounds
    stage2: dict  # stage 2's config: the reward's training settings, stage 1's flip rate
    stage1: tuple  # the labeled feedback set (load_feedback): rows, images, judge verdicts


def build_d_model(cfg: FinetuneConfig, inputs: Inputs, device) -> DModel:
    """Round 1's D_model (the paper's): stage 1's labeled set plus unlabeled samples of the
    pretrained model (sampled once, resumable, by rank 0), every image scored by the reward."""
    fb = Path(cfg.feedback_dir)
    records = feedback_records("seen", cfg.unlabeled_per_category, cfg.seed + seeds.UNLABELED)
    if distributed.is_main():
        collect(inputs.pretrained, fb / "unlabeled", records, flip_rate=0.0, labeler="none",
                num_inference_steps=cfg.num_inference_steps, guidance_scale=cfg.guidance_scale)
    distributed.barrier()  # under torchrun the other ranks read what rank 0 sampled
    return load_d_model(inputs.stage1, fb / "unlabeled", inputs.reward, device)


def next_round_d_model(folder: Path, k: int, run: Run, model, labels: list, cfg: FinetuneConfig,
                       inputs: Inputs, reward, device):
    """D_model of round k >= 2: fresh samples of the current model on the seen feedback prompts;
    stage 1's labeler labels cfg.labels_per_round of them (appended to `labels`, every label so
    far); a reward run trains the reward again on all of them (Eq. 1, stage 2's settings).
    Returns (D_model, the reward that scored it)."""
    records = feedback_records("seen", cfg.unlabeled_per_category,
                               seeds.round_seed(cfg.seed, k) + seeds.UNLABELED)
    picked = set((np.arange(cfg.labels_per_round) * len(records)) // max(1, cfg.labels_per_round)
                 if cfg.labels_per_round else [])  # evenly over the four categories
    stage2 = inputs.stage2
    sampling = dict(num_inference_steps=cfg.num_inference_steps, guidance_scale=cfg.guidance_scale)
    if distributed.is_main():  # under torchrun rank 0 samples and labels, the others wait
        collect(model, folder / "labeled", [r for i, r in enumerate(records) if i in picked],
                flip_rate=stage2["flip_rate"], **sampling)
        collect(model, folder / "unlabeled", [r for i, r in enumerate(records) if i not in picked],
                flip_rate=0.0, labeler="none", **sampling)
    distributed.barrier()
    labeled = load_feedback(folder / "labeled", "python finetune.py")
    labels.append(labeled[:2])
    if run.weights == "reward" and cfg.labels_per_round:
        if distributed.is_main() and not (cfg.resume and (folder / "reward.pt").exists()):
            names = {f.name for f in dataclasses.fields(RewardTrainConfig)}
            rcfg = RewardTrainConfig(**{**{n: stage2[n] for n in names},
                                        "seed": seeds.round_seed(stage2["seed"], k)})
            rows = [r for rs, _ in labels for r in rs]
            images = np.concatenate([im for _, im in labels])  # (N, H, W, 3) every label so far
            reward = train_reward_model(inputs.clip.to(device), rows, images, rcfg, stage2["lam"],
                                        device)
            save_checkpoint(folder / "reward.pt", {
                "model": reward.state_dict(), "lam": stage2["lam"],
                "clip_config": dataclasses.asdict(inputs.clip.cfg), "config": stage2})
        distributed.barrier()
        reward = load_reward(folder, "python finetune.py")  # what rank 0 trained (or resumed)
    return load_d_model(labeled, folder / "unlabeled", reward, device), reward


def finetune(folder: Path, run: Run, start, inputs: Inputs, d_model: DModel, cfg: FinetuneConfig,
             device, mse):
    """One fine-tuning run of Eq. 2 from the weights of `start` (D_pre: stage 0's web corpus),
    checkpointed in folder. Returns (EMA model, finished)."""
    beta = cfg.beta if run.beta is None else run.beta
    t_min = cfg.model_t_min if run.t_min is None else run.t_min
    n_model = 0 if run.weights is None else round(cfg.batch_size * cfg.model_fraction)
    if n_model:
        keep = d_model.labeled | run.unlabeled  # (N,) bool
        x_all, ids_all = d_model.x[keep].to(device), d_model.ids[keep]  # images on the device
        w_all = getattr(d_model, run.weights)[keep]  # (N',) reward scores or gold labels
        if cfg.balance if run.balance is None else run.balance:
            w_all = balance_groups(w_all, [g for g, k in zip(d_model.group, keep) if k])
    n_pre = cfg.batch_size - n_model

    def make_batch(step: int) -> Batch:
        rng = seeds.finetune_batch(cfg.seed, step)
        x0, ids = inputs.corpus.batch(rng, n_pre)  # D_pre: (n_pre, 3, H, W), (n_pre, L)
        weights = torch.ones(n_pre)  # the control: D_pre alone
        if n_model:
            idx = torch.from_numpy(rng.integers(0, len(x_all), n_model))
            x0 = torch.cat([x_all[idx.to(device)], x0])  # (B, 3, H, W): [D_model; D_pre]
            ids = torch.cat([ids_all[idx], ids])
            weights = eq2_weights(w_all[idx], n_pre, beta)  # (B,)
        # Caption dropout on every row, D_model too, as in pretraining. Guidance samples with
        # eps_u + s (eps_c - eps_u): were only the conditional model to move toward D_model,
        # that move (its artifacts too) would come out s times larger.
        drop_captions(ids, rng, cfg.p_uncond)
        return Batch(x0.contiguous(memory_format=torch.channels_last), ids, weights, n_model,
                     t_min)

    model = copy.deepcopy(start).to(device, memory_format=torch.channels_last)
    model.requires_grad_(True)  # start may be an EMA copy, whose weights are frozen
    carry = {"model_config": dataclasses.asdict(start.cfg), "config": inputs.pre}  # tune again
    ema_model, curve, finished = train(model, cfg, make_batch, folder / "ckpt.pt",
                                       f"finetune {folder.parent.name}/{folder.name}", carry, mse)
    if finished and distributed.is_main():
        atomic_write_text(folder / "loss_curve.json", json.dumps(curve))
    return ema_model, finished


class Clock:
    """Wall-clock seconds of stage 3's phases, added up over runs and rounds: where the time
    goes (metrics.json, summary.md)."""

    def __init__(self):
        self.seconds, self.last = {}, time.time()

    def lap(self, phase: str):
        """Charge the time since the last lap to `phase`."""
        now = time.time()
        self.seconds[phase] = self.seconds.get(phase, 0.0) + now - self.last
        self.last = now


def run_rounds(name: str, run: Run, inputs: Inputs, d_model: DModel, cfg: FinetuneConfig, device,
               mse, evaluator, clock: Clock):
    """The rounds of one run (one round: the paper's method), each evaluated. Round k lives in
    out_dir/name/round{k}: its samples, labels, reward, checkpoint and evaluation. --stop_after
    counts the run's steps over all rounds. Returns (model, metrics, goods, one curve point per
    round), or None if --stop_after stopped it. Under torchrun rank 0 alone evaluates (the
    others have no evaluator) and deletes stale samples."""
    rounds = run.rounds or cfg.rounds
    per_round = cfg.steps // rounds
    model, reward, points = inputs.pretrained, inputs.reward, []
    labels = [inputs.stage1[:2]]  # every label so far, as (rows, images): stage 1's, each round's
    for k in range(1, rounds + 1):
        folder = Path(cfg.out_dir) / name / f"round{k}"
        left = cfg.stop_after - (k - 1) * per_round  # steps left before --stop_after
        if cfg.stop_after and left <= 0:
            return None
        if not cfg.resume and distributed.is_main():  # an earlier run's samples must not be reused
            for sub in ("labeled", "unlabeled"):
                shutil.rmtree(folder / sub, ignore_errors=True)
        rcfg = dataclasses.replace(cfg, seed=seeds.round_seed(cfg.seed, k), steps=per_round,
                                   stop_after=left if cfg.stop_after and left < per_round else 0)
        if run.weights is not None and k > 1:
            d_model, reward = next_round_d_model(folder, k, run, model, labels, rcfg, inputs,
                                                 reward, device)
            clock.lap("D_model samples, labels, rewards")
        model, finished = finetune(folder, run, model, inputs, d_model, rcfg, device, mse)
        clock.lap("training")
        if not finished:
            return None
        if evaluator is None:
            metrics = goods = None
            continue
        metrics, goods, _ = evaluator.model(model, f"{name}/round{k}", folder / "eval.json",
                                            reuse=cfg.resume)
        clock.lap("evaluation")
        points.append({"round": k, "steps": k * per_round, **curve_point(metrics)})
    return model, metrics, goods, points


def curve_point(m: dict) -> dict:
    """What the over-optimization curve follows: the reward against the gold judge."""
    return {"reward": m["reward"], "alignment": m["alignment"]["overall"]["mean"],
            **{g: m["alignment"][g]["mean"] for g in ("seen", "unseen", "count")},
            "well_formed": m["well_formed"]["mean"], "fd": m["fd"],
            "count_breakdown": m["count_breakdown"]}


def best_of_n(pretrained, reward, records: list[dict], first: np.ndarray,
              cfg: FinetuneConfig) -> np.ndarray:
    """The paper's strong baseline: n samples of the pretrained model per record (the first
    are the evaluation's own), keep the one the reward ranks highest. Ranked by the logit: the
    sigmoid saturates at exactly 1.0, and ties would keep the first sample."""
    cands = [first] + [generate(pretrained, [{**r, "seed": r["seed"] + seeds.BEST_OF_N_STRIDE * k}
                                             for r in records],
                                cfg.num_inference_steps, cfg.guidance_scale)
                       for k in range(1, cfg.best_of_n)]
    prompts = [r["prompt"] for r in records]
    logits = torch.stack([reward.score(c, prompts, logit=True) for c in cands])  # (n, N)
    return np.stack([cands[k][i] for i, k in enumerate(logits.argmax(0).tolist())])


def main(argv=None):
    cfg = parse_config(FinetuneConfig, PRESETS, argv)
    distributed.setup()
    device = pick_device(cfg.device, cfg.threads)
    mse = resolve_loss_backend(cfg.loss_backend)
    out = check_writable(cfg.out_dir)
    t0, clock = time.time(), Clock()

    # ---- Load what the earlier stages made (each missing file names the command that makes it).
    made_by = f"python train_reward.py --preset {cfg.preset}"
    pretrained, pre = load_model(Path(cfg.unet_dir) / "ckpt.pt",
                                 f"python train_unet.py --preset {cfg.preset}")
    # channels_last: the convolutions run faster on CPU; same math.
    pretrained = pretrained.to(device, memory_format=torch.channels_last)
    reward = load_reward(Path(cfg.reward_dir), made_by)
    inputs = Inputs(pretrained, pre, WebCorpus(pre, device, Path(cfg.unet_dir) / "corpus.pt"),
                    reward, *load_stage2(cfg.reward_dir, made_by),
                    load_feedback(Path(cfg.feedback_dir) / "train", made_by))
    clock.lap("loading")
    if not distributed.is_main():  # under torchrun: train on its share of each batch, no more
        d_model = build_d_model(cfg, inputs, device)
        for name in cfg.runs.split(","):
            run_rounds(name, RUNS[name], inputs, d_model, cfg, device, mse, None, clock)
        return
    evaluator = Evaluator(cfg.eval_samples_per_prompt, cfg.num_inference_steps,
                          cfg.guidance_scale, pretrained.cfg.resolution, reward,
                          fd_cache=Path(cfg.out_dir).parent / "fd", fd_net_steps=cfg.fd_net_steps)
    metrics, goods, first = evaluator.model(pretrained, "pretrained", out / "pretrained_eval.json")
    metrics, goods = {"pretrained": metrics}, {"pretrained": goods}
    start = {"round": 0, "steps": 0, **curve_point(metrics["pretrained"])}
    clock.lap("evaluation")

    # ---- Round 1's D_model (labeled + unlabeled, scored by r), then each run's rounds.
    d_model = build_d_model(cfg, inputs, device)
    clock.lap("D_model samples, labels, rewards")
    models, curves = {"pretrained": pretrained}, {}
    for name in cfg.runs.split(","):
        result = run_rounds(name, RUNS[name], inputs, d_model, cfg, device, mse, evaluator,
                            clock)
        if result is None:
            print(f"stopped by --stop_after in run {name}; the same command with --resume true "
                  f"goes on from there")
            return
        models[name], metrics[name], goods[name], points = result
        curves[name] = [start] + points
    train_s = time.time() - t0

    # ---- The best-of-n baseline and win rates, then the report: tables, grids, plots.
    if cfg.best_of_n > 1:
        name = f"best_of_{cfg.best_of_n}"
        metrics[name], goods[name] = evaluator.images(best_of_n(pretrained, reward,
                                                                evaluator.records, first, cfg))
        clock.lap("best-of-n")
    for name in metrics:
        if name != "pretrained":
            metrics[name]["win_rate_vs_pretrained"] = win_rate(goods[name], goods["pretrained"])
        if name not in ("pretrained", "control") and "control" in goods:
            metrics[name]["win_rate_vs_control"] = win_rate(goods[name], goods["control"])
    main_run = next((r for r in ("feedback", "gold") if r in models), cfg.runs.split(",")[0])
    rows_before, rows_after = (sample_grid_rows(m, GRID_PROMPTS, 6, cfg.num_inference_steps,
                                                cfg.guidance_scale)
                               for m in (pretrained, models[main_run]))
    save_grid([r for pair in zip(rows_before, rows_after) for r in pair],
              [f"{tag}: {p}" for p in GRID_PROMPTS for tag in ("before", "after")],
              out / "before_after.png")
    alignment_bars(metrics, out / "alignment.png")
    round_curves(curves, out / "rounds.png")
    clock.lap("grids and plots")
    n_labels = {name: len(inputs.stage1[0]) + ((RUNS[name].rounds or cfg.rounds) - 1)
                * cfg.labels_per_round for name in curves if RUNS[name].weights == "reward"}
    result = {"before": metrics["pretrained"], "after": metrics[main_run], "models": metrics,
              "rounds": curves, "labels": n_labels, "seconds": round(time.time() - t0),
              "train_seconds": round(train_s), "phase_seconds": clock.seconds,
              "config": dataclasses.asdict(cfg)}
    result["win_rate"] = metrics[main_run].get("win_rate_vs_pretrained")
    if "control" in metrics:
        result["control"] = metrics["control"]
    write_metrics(out, result, report_md(metrics, curves, n_labels, cfg, main_run,
                                         result["seconds"], clock.seconds))
    print((out / "summary.md").read_text())
    print(f"report: {out / 'summary.md'}   grid: {out / 'before_after.png'}   "
          f"plots: {out / 'alignment.png'}, {out / 'rounds.png'}")


def report_md(metrics: dict, curves: dict, n_labels: dict, cfg: FinetuneConfig, main_run: str,
              seconds: float, phases: dict) -> str:
    """The results tables: alignment (per category, split), fidelity and win rates, each run's
    own settings; then every round of every run (the over-optimization curve)."""
    pct = lambda r: "-" if r is None else (f"{100 * r['win']:.1f} / {100 * r['tie']:.1f} / "
                                           f"{100 * r['loss']:.1f}")
    lines = [f"# Stage 3: reward-weighted fine-tuning (preset {cfg.preset}, "
             f"{seconds / 60:.1f} min)", "",
             "Time per phase: " + "; ".join(f"{k} {v / 60:.1f} min" for k, v in phases.items())
             + " (seconds in metrics.json).",
             "", f"Main run: `{main_run}`; {cfg.steps} steps per run, batch {cfg.batch_size} "
             f"({cfg.model_fraction:.0%} D_model). Gold-judge alignment with 95% CI "
             f"({cfg.eval_samples_per_prompt} samples per evaluation prompt):", "",
             alignment_table(metrics), "| model | weights | rounds | t_min | beta | balanced "
             "| labels | FD | diversity | win / tie / loss vs pretrained | vs control |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, m in metrics.items():
        run = RUNS.get(name)
        own = lambda value, default: default if value is None else value  # a run's own setting
        rounds = "-" if run is None else own(run.rounds, cfg.rounds)
        tuned = ("-",) * 3 if run is None or run.weights is None else (
            own(run.t_min, cfg.model_t_min), own(run.beta, cfg.beta), own(run.balance, cfg.balance))
        lines.append(f"| {name} | {run.weights if run else '-'} | {rounds} | "
                     + " | ".join(map(str, tuned)) + f" | {n_labels.get(name, '-')} | "
                     f"{m['fd']:.2f} | {m['diversity']:.2f} | "
                     f"{pct(m.get('win_rate_vs_pretrained'))} | "
                     f"{pct(m.get('win_rate_vs_control'))} |")
    groups = [f"{s}/{c}" for s in ("seen", "unseen") for c in CATEGORIES]
    lines += ["", "Seen/unseen per category:", "", "| model | " + " | ".join(groups) + " |",
              "|---|" + "---|" * len(groups)]
    for name, m in metrics.items():
        lines.append(f"| {name} | " + " | ".join(f"{100 * m['alignment'][g]['mean']:.1f}"
                                                 for g in groups) + " |")
    lines += ["", "Every round (round 0: the pretrained model). Reward: mean r_phi of stage 2's "
              "reward on the evaluation samples; count per number: good / asked (bad ones with "
              "a malformed blob):", "",
              "| run | round | steps | reward | alignment | seen | unseen | count | well-formed "
              "| FD | count per number |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, points in curves.items():
        for p in points:
            per_number = ", ".join(f"{w} {t['good']}/{t['asked']} ({t['malformed']})"
                                   for w, t in p["count_breakdown"].items())
            lines.append(f"| {name} | {p['round']} | {p['steps']} | {p['reward']:.3f} | "
                         + " | ".join(f"{100 * p[g]:.1f}" for g in ("alignment", "seen",
                                                                     "unseen", "count",
                                                                     "well_formed"))
                         + f" | {p['fd']:.1f} | {per_number} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    run(main)
