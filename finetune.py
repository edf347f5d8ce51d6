"""Stage 3: reward-weighted fine-tuning and the before/after evaluation (Lee et al. 2023, Sec. 3.3).

1. D_model: the labeled feedback images plus fresh *unlabeled* samples of the pretrained model
   on seen feedback prompts, every image weighted by the reward model's score r_phi(x, z).
   D_pre: the web corpus (pretraining data).
2. Fine-tune with Eq. 2: reward-weighted denoising loss on D_model + beta * denoising loss on
   D_pre, half of every batch from each (losses.finetune_loss), in the same training loop as
   stage 0 (train_loop.py). One change to the paper, on by default (--balance false undoes
   it): the weights are rescaled so that prompts the model rarely gets right ("three ...")
   keep their share of D_model (losses.balance_groups).
3. Two more runs make the result honest: the *control* (the same steps and optimizer on D_pre
   alone: whatever it gains is extra training, not feedback) and *gold* (the judge's labels as
   weights: a perfect reward model, the ceiling of the method).
4. Evaluate pretrained, fine-tuned, control and gold on the same prompts, seeds and sampler
   noise with the gold judge: alignment, fidelity (well-formed rate, FD), win rate, diversity,
   and the best-of-n baseline; write summary.md, metrics.json, a before/after grid and a plot
   of alignment per category.

    python finetune.py                                   # after train_reward.py
    python finetune.py --runs labeled_only,labeled_unlabeled_beta0,feedback,unbalanced,beta1 \\
        --steps 750 --eval_samples_per_prompt 8 --best_of_n 1 --out_dir runs/ablation  # Table 3
"""
import copy
import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from tiny_rlhf_t2i import seeds
from tiny_rlhf_t2i.config import UserError, check_range, parse_config, require, run
from tiny_rlhf_t2i.diffusion import to_model_space
from tiny_rlhf_t2i.evaluate import (GRID_PROMPTS, alignment_table, eval_records, generate,
                                    sample_grid_rows, score, win_rate)
from tiny_rlhf_t2i.feedback import (collect, feedback_records, load_labeled, load_rows,
                                    read_rows)
from tiny_rlhf_t2i.fidelity import (clean_references, diversity, feature_net, features,
                                    frechet_distance)
from tiny_rlhf_t2i.files import (atomic_write_text, check_writable, pick_device, save_grid,
                                 write_metrics)
from tiny_rlhf_t2i.kernels import BACKENDS, resolve_loss_backend
from tiny_rlhf_t2i.losses import balance_groups, eq2_weights
from tiny_rlhf_t2i.plots import alignment_bars
from tiny_rlhf_t2i.reward import load_reward
from tiny_rlhf_t2i.text import encode
from tiny_rlhf_t2i.train_loop import Batch, LoopConfig, drop_captions, train, web_batch
from tiny_rlhf_t2i.unet import load_model
from tiny_rlhf_t2i.world import CATEGORIES, parse


@dataclasses.dataclass(frozen=True)
class Run:
    """What one fine-tuning run trains on."""
    weights: str | None  # D_model weights: "reward" (r_phi), "gold" (the judge), None (control)
    unlabeled: bool = True  # D_model holds the unlabeled samples too (the labeled ones always)
    beta: float | None = None  # weight of the pretraining loss (None: --beta)
    balance: bool | None = None  # rescale weights per prompt group (None: --balance)


RUNS = {
    "feedback": Run("reward"),  # the paper's method
    "control": Run(None),  # same steps, D_pre only: extra training without feedback
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
    unlabeled_per_category: int = 1000  # unlabeled samples per category (paper: 16K in all)
    beta: float = 0.1  # weight of the pretraining loss, Eq. 2 (paper: 1; see docs/results.md)
    model_fraction: float = 0.5  # fraction of each batch from D_model (paper: half)
    balance: bool = True  # rescale weights per (category, number) group (losses.balance_groups)
    steps: int = 1500  # fine-tuning steps per run (the control trains as long)
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
        check_range(self, "best_of_n eval_samples_per_prompt num_inference_steps fd_net_steps", 1)


PRESETS = {
    "smoke": dict(unet_dir="runs/smoke/unet", reward_dir="runs/smoke/reward",
                  feedback_dir="runs/smoke/feedback", out_dir="runs/smoke/finetune",
                  unlabeled_per_category=8, steps=10, batch_size=16, num_inference_steps=5,
                  eval_samples_per_prompt=1, best_of_n=2, warmup_steps=2, fd_net_steps=30),
    "cpu": dict(),
    "gpu": dict(unet_dir="runs/gpu/unet", reward_dir="runs/gpu/reward",
                feedback_dir="data/feedback_gpu", out_dir="runs/gpu/finetune",
                unlabeled_per_category=4000, steps=5000, batch_size=256, best_of_n=16),
}


@dataclasses.dataclass
class DModel:
    """D_model of Eq. 2: the labeled feedback images, then the unlabeled samples."""
    x: torch.Tensor  # (N, 3, H, W) images in [-1, 1]
    ids: torch.Tensor  # (N, L) their prompts
    reward: torch.Tensor  # (N,) r_phi(x, z)
    gold: torch.Tensor  # (N,) the gold judge's verdict, 1. or 0.
    labeled: torch.Tensor  # (N,) bool: from the labeled feedback set (else unlabeled)
    group: list[str]  # "category/count" of each prompt (losses.balance_groups)


def build_d_model(cfg: FinetuneConfig, pretrained, reward, device) -> DModel:
    """Sample the unlabeled set (once, resumable), score every image with the reward."""
    fb = Path(cfg.feedback_dir)
    made_by = f"python train_reward.py --preset {cfg.preset}"
    rows, images = load_labeled(fb / "train", made_by)
    records = feedback_records("seen", cfg.unlabeled_per_category, cfg.seed + seeds.UNLABELED)
    collect(pretrained, fb / "unlabeled", records, flip_rate=0.0, labeler="none",
            num_inference_steps=cfg.num_inference_steps, guidance_scale=cfg.guidance_scale)
    u_rows, u_images = load_rows(fb / "unlabeled", "samples.jsonl", "python finetune.py")
    judged = {r["id"]: r["judge_good"]  # the rows only: their images are loaded above
              for r in read_rows(fb / "train" / "samples.jsonl", made_by)}
    unknown = [r["id"] for r in rows if r["id"] not in judged]
    if unknown:
        raise UserError(f"{fb / 'train' / 'labels.jsonl'} labels images that are not in "
                        f"its samples.jsonl ({unknown[:3]}); run `{made_by}` again")
    all_rows, all_images = rows + u_rows, np.concatenate([images, u_images])
    prompts = [r["prompt"] for r in all_rows]
    return DModel(x=to_model_space(all_images), ids=encode(prompts),
                  reward=reward.to(device).score(all_images, prompts).cpu(),
                  gold=torch.tensor([float(judged[r["id"]]) for r in rows]
                                    + [float(r["judge_good"]) for r in u_rows]),
                  labeled=torch.arange(len(all_rows)) < len(rows),
                  group=[f"{r['category']}/{parse(r['prompt']).count}" for r in all_rows])


def finetune(name: str, run: Run, pretrained, pre: dict, d_model: DModel, cfg: FinetuneConfig,
             device, mse):
    """One fine-tuning run of Eq. 2 from the pretrained weights (pre: stage 0's config, whose
    web corpus is D_pre); returns its EMA model."""
    out = Path(cfg.out_dir) / name
    beta = cfg.beta if run.beta is None else run.beta
    n_model = 0 if run.weights is None else round(cfg.batch_size * cfg.model_fraction)
    if n_model:
        keep = d_model.labeled | run.unlabeled  # (N,) bool
        x_all, ids_all = d_model.x[keep], d_model.ids[keep]
        w_all = getattr(d_model, run.weights)[keep]  # (N',) reward scores or gold labels
        if cfg.balance if run.balance is None else run.balance:
            w_all = balance_groups(w_all, [g for g, k in zip(d_model.group, keep) if k])
    n_pre = cfg.batch_size - n_model

    def make_batch(step: int) -> Batch:
        rng = seeds.finetune_batch(cfg.seed, step)
        x0, ids = web_batch(rng, n_pre, pre)  # D_pre: (n_pre, 3, H, W), (n_pre, L)
        weights = torch.ones(n_pre)  # the control: D_pre alone
        if n_model:
            idx = torch.from_numpy(rng.integers(0, len(x_all), n_model))
            x0 = torch.cat([x_all[idx], x0])  # (B, 3, H, W): [D_model; D_pre]
            ids = torch.cat([ids_all[idx], ids])
            weights = eq2_weights(w_all[idx], n_pre, beta)  # (B,)
        # Caption dropout on every row, D_model too, as in pretraining. Guidance samples with
        # eps_u + s (eps_c - eps_u): were only the conditional model to move toward D_model,
        # that move (its artifacts too) would come out s times larger.
        drop_captions(ids, rng, cfg.p_uncond)
        return Batch(x0.to(device, memory_format=torch.channels_last), ids.to(device),
                     weights.to(device), n_model)

    model = copy.deepcopy(pretrained).to(device, memory_format=torch.channels_last)
    carry = {"model_config": dataclasses.asdict(pretrained.cfg), "config": pre}  # tune again
    ema_model, curve, _ = train(model, cfg, make_batch, out / "ckpt.pt", f"finetune {name}",
                                carry, mse)
    atomic_write_text(out / "loss_curve.json", json.dumps(curve))
    return ema_model


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


def evaluate(models: dict, pretrained, reward, cfg: FinetuneConfig) -> dict:
    """Every model on the same prompts, seeds and sampler noise, judged by the gold judge:
    alignment, well-formed, FD and diversity; win rates vs the pretrained model and the control."""
    records = eval_records(cfg.eval_samples_per_prompt)
    res = pretrained.cfg.resolution
    fnet = feature_net(res, cache_dir=Path(cfg.out_dir).parent / "fd", steps=cfg.fd_net_steps)
    ref_feats = features(fnet, clean_references(records, res))

    def judge_images(images):
        m, goods, _ = score(images, records)
        f = features(fnet, images)
        m["fd"], m["diversity"] = frechet_distance(f, ref_feats), diversity(f, records)
        return m, goods

    metrics, goods, first = {}, {}, None
    for name, model in tqdm(models.items(), desc="evaluate", dynamic_ncols=True):
        images = generate(model, records, cfg.num_inference_steps, cfg.guidance_scale)
        first = images if name == "pretrained" else first
        metrics[name], goods[name] = judge_images(images)
    if cfg.best_of_n > 1:
        name = f"best_of_{cfg.best_of_n}"
        metrics[name], goods[name] = judge_images(best_of_n(pretrained, reward, records, first,
                                                            cfg))
    for name in metrics:
        if name != "pretrained":
            metrics[name]["win_rate_vs_pretrained"] = win_rate(goods[name], goods["pretrained"])
        if name not in ("pretrained", "control") and "control" in goods:
            metrics[name]["win_rate_vs_control"] = win_rate(goods[name], goods["control"])
    return metrics


def main(argv=None):
    cfg = parse_config(FinetuneConfig, PRESETS, argv)
    device = pick_device(cfg.device, cfg.threads)
    mse = resolve_loss_backend(cfg.loss_backend)
    out = check_writable(cfg.out_dir)
    t0 = time.time()

    # ---- Load what the earlier stages made (each missing file names the command that makes it).
    pretrained, pre = load_model(Path(cfg.unet_dir) / "ckpt.pt",
                                 f"python train_unet.py --preset {cfg.preset}")
    # channels_last: the convolutions run faster on CPU; same math.
    pretrained = pretrained.to(device, memory_format=torch.channels_last)
    reward = load_reward(Path(cfg.reward_dir), f"python train_reward.py --preset {cfg.preset}")

    # ---- D_model (labeled + unlabeled, scored by r), then one fine-tuning run per name.
    d_model = build_d_model(cfg, pretrained, reward, device)
    models = {"pretrained": pretrained}
    for name in cfg.runs.split(","):
        models[name] = finetune(name, RUNS[name], pretrained, pre, d_model, cfg, device, mse)
    train_s = time.time() - t0

    # ---- Evaluate, then report: tables, a before/after grid, a plot, metrics.json.
    metrics = evaluate(models, pretrained, reward, cfg)
    main_run = next((r for r in ("feedback", "gold") if r in models), cfg.runs.split(",")[0])
    rows_before, rows_after = (sample_grid_rows(m, GRID_PROMPTS, 6, cfg.num_inference_steps,
                                                cfg.guidance_scale)
                               for m in (pretrained, models[main_run]))
    save_grid([r for pair in zip(rows_before, rows_after) for r in pair],
              [f"{tag}: {p}" for p in GRID_PROMPTS for tag in ("before", "after")],
              out / "before_after.png")
    alignment_bars(metrics, out / "alignment.png")
    result = {"before": metrics["pretrained"], "after": metrics[main_run], "models": metrics,
              "seconds": round(time.time() - t0), "train_seconds": round(train_s),
              "config": dataclasses.asdict(cfg)}
    result["win_rate"] = metrics[main_run].get("win_rate_vs_pretrained")
    if "control" in metrics:
        result["control"] = metrics["control"]
    write_metrics(out, result, report_md(metrics, cfg, main_run, result["seconds"]))
    print((out / "summary.md").read_text())
    print(f"report: {out / 'summary.md'}   grid: {out / 'before_after.png'}   "
          f"plot: {out / 'alignment.png'}")


def report_md(metrics: dict, cfg: FinetuneConfig, main_run: str, seconds: float) -> str:
    """The results tables: alignment (per category, split), fidelity and win rates, each run's
    own settings."""
    pct = lambda r: "-" if r is None else (f"{100 * r['win']:.1f} / {100 * r['tie']:.1f} / "
                                           f"{100 * r['loss']:.1f}")
    lines = [f"# Stage 3: reward-weighted fine-tuning (preset {cfg.preset}, "
             f"{seconds / 60:.1f} min)",
             "", f"Main run: `{main_run}`; {cfg.steps} steps per run, batch {cfg.batch_size} "
             f"({cfg.model_fraction:.0%} D_model). Gold-judge alignment with 95% CI "
             f"({cfg.eval_samples_per_prompt} samples per evaluation prompt):", "",
             alignment_table(metrics), "| model | weights | beta | balanced | FD | diversity "
             "| win / tie / loss vs pretrained | vs control |", "|---|---|---|---|---|---|---|---|"]
    for name, m in metrics.items():
        run = RUNS.get(name)
        beta = "-" if run is None or run.weights is None else (cfg.beta if run.beta is None
                                                                else run.beta)
        balanced = "-" if run is None or run.weights is None else (
            cfg.balance if run.balance is None else run.balance)
        lines.append(f"| {name} | {run.weights if run else '-'} | {beta} | {balanced} | "
                     f"{m['fd']:.2f} | {m['diversity']:.2f} | "
                     f"{pct(m.get('win_rate_vs_pretrained'))} | "
                     f"{pct(m.get('win_rate_vs_control'))} |")
    groups = [f"{s}/{c}" for s in ("seen", "unseen") for c in CATEGORIES]
    lines += ["", "Seen/unseen per category:", "", "| model | " + " | ".join(groups) + " |",
              "|---|" + "---|" * len(groups)]
    for name, m in metrics.items():
        lines.append(f"| {name} | " + " | ".join(f"{100 * m['alignment'][g]['mean']:.1f}"
                                                 for g in groups) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    run(main)
