"""Stage 3: reward-weighted fine-tuning and the before/after evaluation (Lee et al. 2023, Sec. 3.3).

1. D_model: the labeled feedback images plus fresh *unlabeled* samples of the pretrained model
   on seen feedback prompts, every image weighted by the reward model's score r_phi(x, z).
   D_pre: the web corpus (pretraining data).
2. Fine-tune with Eq. 2: reward-weighted denoising loss on D_model + beta * denoising loss on
   D_pre, half of every batch from each (losses.finetune_loss). One change to the paper, on by
   default (--balance false undoes it): the weights are rescaled so that prompts the model
   rarely gets right ("three ...") keep their share of D_model (losses.balance_groups).
3. Two more runs make the result honest: the *control* (the same steps and optimizer on D_pre
   alone: whatever it gains is extra training, not feedback) and *gold* (the judge's labels as
   weights: a perfect reward model, the ceiling of the method).
4. Evaluate pretrained, fine-tuned, control and gold on the same prompts, seeds and sampler
   noise with the gold judge: alignment, fidelity (well-formed rate, FD), win rate, diversity,
   and the best-of-n baseline; write report.md, metrics.json and a before/after grid.

    python finetune.py                                   # after train_reward.py
    python finetune.py --runs labeled_only,unlabeled,feedback,unbalanced,beta0.5,beta1,beta2 \\
        --steps 750 --eval_samples_per_prompt 8 --best_of_n 1 --out_dir runs/ablation  # Table 3
"""
import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from tiny_rlhf_t2i.clip import Clip, ClipConfig
from tiny_rlhf_t2i.config import config_dict, parse_config
from tiny_rlhf_t2i.diffusion import EMA, Scheduler, to_model_space
from tiny_rlhf_t2i.evaluate import (GRID_PROMPTS, alignment_table, eval_records, generate,
                                    sample_grid_rows, score, win_rate)
from tiny_rlhf_t2i.feedback import collect, feedback_records, load_labeled, read_jsonl
from tiny_rlhf_t2i.fidelity import (clean_references, diversity, feature_net, features,
                                    frechet_distance)
from tiny_rlhf_t2i.files import (atomic_write_text, load_checkpoint, pick_device, save_checkpoint,
                                 save_grid, write_metrics)
from tiny_rlhf_t2i.kernels import resolve_loss_backend
from tiny_rlhf_t2i.losses import balance_groups, eq2_weights, finetune_loss
from tiny_rlhf_t2i.reward import RewardModel
from tiny_rlhf_t2i.text import encode
from tiny_rlhf_t2i.unet import load_model
from tiny_rlhf_t2i.world import CaptionNoise, parse, web_corpus_batch


@dataclasses.dataclass
class FinetuneConfig:
    """Stage 3: reward-weighted fine-tuning (Eq. 2) and evaluation."""
    unet_dir: str = "runs/unet"  # stage 0 run folder (ckpt.pt: the pretrained model)
    reward_dir: str = "runs/reward"  # stage 2 run folder (reward.pt, clip.pt)
    feedback_dir: str = "data/feedback"  # stage 1 feedback sets; unlabeled samples go here too
    out_dir: str = "runs/finetune"  # run folder: one sub-folder per run, report.md, grids
    runs: str = "feedback,control,gold"  # fine-tuning runs (see RUNS in finetune.py)
    seed: int = 0  # seeds batches, noise and the unlabeled samples
    unlabeled_per_category: int = 1000  # unlabeled samples per category (paper: 16K in all)
    beta: float = 0.1  # weight of the pretraining loss, Eq. 2 (paper: 1; see README, ablation)
    model_fraction: float = 0.5  # fraction of each batch from D_model (paper: half)
    balance: bool = True  # rescale weights per (category, number) group (losses.balance_groups)
    steps: int = 1500  # fine-tuning steps per run (the control trains as long)
    batch_size: int = 128  # images per step, D_model and D_pre together
    lr: float = 5e-4  # AdamW learning rate (warmup, then cosine decay to 0)
    warmup_steps: int = 50  # linear warmup steps
    ema_decay: float = 0.995  # EMA of the fine-tuned weights (starts at the pretrained EMA)
    p_uncond: float = 0.1  # caption dropout on every row, as in pretraining (guidance needs it)
    guidance_scale: float = 3.0  # sampling for the unlabeled set and the evaluation
    num_inference_steps: int = 25  # DDIM steps
    eval_samples_per_prompt: int = 16  # samples per fixed evaluation prompt (88 prompts)
    best_of_n: int = 4  # best-of-n baseline: n samples of the pretrained model, keep the best
    fd_net_steps: int = 600  # training steps of the FD feature network (cached in runs/fd)
    loss_backend: str = "auto"  # Eq. 2's weighted MSE: auto, torch or cuda (fused kernel)
    resume: bool = False  # continue interrupted runs from their checkpoints
    device: str = "auto"  # auto, cpu or cuda
    threads: int = 0  # torch CPU threads (0: torch's default)


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

# What each run trains on. weights: "reward" (r_phi), "gold" (the judge) or None (D_pre only).
RUNS = {
    "feedback": dict(weights="reward", labeled=True, unlabeled=True),  # the paper's method
    "control": dict(weights=None),  # same steps, D_pre only: extra training without feedback
    "gold": dict(weights="gold", labeled=True, unlabeled=True),  # a perfect reward model
    "unbalanced": dict(weights="reward", labeled=True, unlabeled=True, balance=False),  # plain Eq. 2
    # The paper's Table 3: labeled only; + unlabeled; + pretraining loss (= feedback); beta.
    "labeled_only": dict(weights="reward", labeled=True, unlabeled=False, beta=0.0),
    "unlabeled": dict(weights="reward", labeled=True, unlabeled=True, beta=0.0),
    "beta0.5": dict(weights="reward", labeled=True, unlabeled=True, beta=0.5),
    "beta1": dict(weights="reward", labeled=True, unlabeled=True, beta=1.0),
    "beta2": dict(weights="reward", labeled=True, unlabeled=True, beta=2.0),
}


def load_reward(reward_dir: Path, preset: str, name: str = "reward") -> RewardModel:
    """A stage-2 reward model (name: reward, or reward_no_pc for the one without Eq. 1's PC)."""
    made_by = f"python train_reward.py --preset {preset}"
    state = load_checkpoint(reward_dir / f"{name}.pt", made_by)
    clip = Clip(ClipConfig(**state["clip_config"]))
    model = RewardModel(clip)
    model.load_state_dict(state["model"])
    return model.eval()


def finetune(name: str, spec: dict, pretrained, d_model: dict, cfg: FinetuneConfig, device,
             weighted_mse) -> torch.nn.Module:
    """One fine-tuning run of Eq. 2 from the pretrained weights; returns its EMA model."""
    out = Path(cfg.out_dir) / name
    ckpt = out / "ckpt.pt"
    beta = spec.get("beta", cfg.beta)
    if spec["weights"] is None:  # the control: every row of the batch from D_pre
        n_model, w_all = 0, None
    else:
        keep = np.array([(spec["labeled"] and s == "labeled") or (spec["unlabeled"] and
                                                                  s == "unlabeled")
                         for s in d_model["source"]])
        x_all, ids_all = d_model["x"][keep], d_model["ids"][keep]
        w_all = d_model[spec["weights"]][keep]  # (N,) reward scores or gold labels
        if spec.get("balance", cfg.balance):  # losses.balance_groups: why, and what it gains
            w_all = balance_groups(w_all, [g for g, k in zip(d_model["group"], keep) if k])
        n_model = round(cfg.batch_size * cfg.model_fraction)
    torch.manual_seed(cfg.seed)
    model = pretrained.__class__(pretrained.cfg)
    model.load_state_dict(pretrained.state_dict())
    model = model.to(device, memory_format=torch.channels_last).train()  # as pretrained: main()
    ema = EMA(model, cfg.ema_decay)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
    scheduler, step, curve, running = Scheduler(), 0, [], []
    if cfg.resume and ckpt.exists():
        state = load_checkpoint(ckpt, "python finetune.py")
        model.load_state_dict(state["model"])
        ema.model.load_state_dict(state["ema"])
        opt.load_state_dict(state["opt"])
        step, curve = state["step"], state["loss_curve"]
    if step >= cfg.steps:
        return ema.model.eval()
    pre = pretrained.train_config  # stage 0's config: D_pre is the very corpus it trained on
    noise_cfg = CaptionNoise(**{f.name: pre[f.name] for f in dataclasses.fields(CaptionNoise)})
    last = time.time()
    for step in tqdm(range(step, cfg.steps), initial=step, total=cfg.steps, desc=f"finetune {name}",
                     dynamic_ncols=True):
        rng = np.random.default_rng([cfg.seed, 3, step])
        lr_scale = min(1.0, (step + 1) / cfg.warmup_steps) * 0.5 * (1 + np.cos(np.pi * step / cfg.steps))
        for g in opt.param_groups:
            g["lr"] = cfg.lr * lr_scale
        n_pre = cfg.batch_size - n_model
        images, captions = web_corpus_batch(rng.integers(0, pre["corpus_size"], n_pre), noise_cfg,
                                            pretrained.cfg.resolution, pre["corpus_seed"])  # D_pre
        x_pre, ids_pre = to_model_space(images), encode(captions)  # (n_pre, 3, H, W), (n_pre, L)
        if n_model:
            idx = torch.from_numpy(rng.integers(0, len(x_all), n_model))
            x0 = torch.cat([x_all[idx], x_pre])  # (B, 3, H, W): [D_model; D_pre]
            ids = torch.cat([ids_all[idx], ids_pre])
            weights = eq2_weights(w_all[idx], n_pre, beta)  # (B,)
        else:
            x0, ids, weights = x_pre, ids_pre, torch.ones(n_pre)
        # Caption dropout on every row, D_model too, as in pretraining. Guidance samples with
        # eps_u + s (eps_c - eps_u): were only the conditional model to move toward D_model, that
        # move (its artifacts too) would come out s = 3 times larger (README: FD 1.43x -> 1.05x).
        drop = torch.from_numpy(rng.random(len(ids)) < cfg.p_uncond)  # (B,)
        ids[drop] = encode([""])[0]
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
        t = torch.randint(0, scheduler.num_train_timesteps, (len(x0),), generator=gen)
        noise = torch.randn(x0.shape, generator=gen)
        x0, ids, t, noise = x0.to(device), ids.to(device), t.to(device), noise.to(device)
        eps_hat = model(scheduler.add_noise(x0, noise, t), t, ids)
        loss = finetune_loss(eps_hat, noise, weights.to(device), n_model, weighted_mse)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ema.update(model)
        running.append(loss.item())
        if (step + 1) % 50 == 0:
            curve.append((step + 1, float(np.mean(running))))
            running = []
        if time.time() - last > 300 or step + 1 == cfg.steps:
            save_checkpoint(ckpt, {"model": model.state_dict(), "ema": ema.model.state_dict(),
                                   "opt": opt.state_dict(), "step": step + 1, "loss_curve": curve,
                                   "model_config": dataclasses.asdict(pretrained.cfg),
                                   "config": pre})  # stage 0's config: D_pre, if tuned again
            last = time.time()
    atomic_write_text(out / "loss_curve.json", json.dumps(curve))
    return ema.model.eval()


def main(argv=None):
    cfg = parse_config(FinetuneConfig, PRESETS, argv)
    unknown = [r for r in cfg.runs.split(",") if r not in RUNS]
    if unknown:
        raise SystemExit(f"error: unknown run(s) {unknown}; valid runs: {', '.join(RUNS)}")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = pick_device(cfg.device)
    weighted_mse = resolve_loss_backend(cfg.loss_backend)
    out, fb = Path(cfg.out_dir), Path(cfg.feedback_dir)
    t0 = time.time()

    # ---- Load what the earlier stages made (each missing file names the command that makes it).
    pretrained = load_model(Path(cfg.unet_dir) / "ckpt.pt", f"python train_unet.py --preset {cfg.preset}")
    # channels_last: the convolutions run ~10% faster on CPU (measured, 2 cores); same math.
    pretrained = pretrained.to(device, memory_format=torch.channels_last)
    reward = load_reward(Path(cfg.reward_dir), cfg.preset)
    rows, images = load_labeled(fb / "train", f"python train_reward.py --preset {cfg.preset}")

    # ---- D_model: labeled feedback + unlabeled samples of seen feedback prompts, all scored by r.
    collect(pretrained, fb / "unlabeled",
            feedback_records("seen", cfg.unlabeled_per_category, cfg.seed + 2), flip_rate=0.0,
            labeler="none", num_inference_steps=cfg.num_inference_steps,
            guidance_scale=cfg.guidance_scale)
    u_rows = read_jsonl(fb / "unlabeled" / "samples.jsonl", "python finetune.py")
    u_images = np.stack([np.asarray(Image.open(fb / "unlabeled" / r["image"]).convert("RGB"))
                         for r in u_rows])
    prompts = [r["prompt"] for r in rows] + [r["prompt"] for r in u_rows]
    all_images = np.concatenate([images, u_images])
    labeled_judge = {r["id"]: r["judge_good"] for r in
                     read_jsonl(fb / "train" / "samples.jsonl", "python train_reward.py")}
    d_model = {"x": to_model_space(all_images), "ids": encode(prompts),
               "reward": reward.to(device).score(all_images, prompts).cpu(),
               "gold": torch.tensor([float(labeled_judge[r["id"]]) for r in rows]
                                    + [float(r["judge_good"]) for r in u_rows]),
               "source": ["labeled"] * len(rows) + ["unlabeled"] * len(u_rows),
               "group": [f"{r['category']}/{parse(r['prompt']).count}" for r in rows + u_rows]}

    # ---- Fine-tune: each run starts from the pretrained weights.
    models = {"pretrained": pretrained}
    for name in cfg.runs.split(","):
        models[name] = finetune(name, RUNS[name], pretrained, d_model, cfg, device, weighted_mse)
    train_s = time.time() - t0

    # ---- Evaluate every model on the same prompts, seeds and sampler noise (gold judge).
    records = eval_records(cfg.eval_samples_per_prompt)
    res = pretrained.cfg.resolution
    fnet = feature_net(res, cache_dir=out.parent / "fd", steps=cfg.fd_net_steps)
    ref_feats = features(fnet, clean_references(records, res))
    metrics, goods, grids = {}, {}, {}
    for name, model in tqdm(models.items(), desc="evaluate", dynamic_ncols=True):
        imgs = generate(model, records, cfg.num_inference_steps, cfg.guidance_scale)
        m, goods[name], _ = score(imgs, records)
        f = features(fnet, imgs)
        m["fd"] = frechet_distance(f, ref_feats)
        m["diversity"] = diversity(f, records)
        metrics[name] = m
        grids[name] = imgs
    # Best-of-n (the paper's strong baseline): n pretrained samples, keep the highest reward.
    if cfg.best_of_n > 1:
        cands = [grids["pretrained"]] + [
            generate(pretrained, [{**r, "seed": r["seed"] + 10 ** 7 * k} for r in records],
                     cfg.num_inference_steps, cfg.guidance_scale) for k in range(1, cfg.best_of_n)]
        scores = torch.stack([reward.score(c, [r["prompt"] for r in records]) for c in cands])
        best = scores.argmax(0).numpy()  # (N,)
        imgs = np.stack([cands[k][i] for i, k in enumerate(best)])
        m, goods["best_of_n"], _ = score(imgs, records)
        f = features(fnet, imgs)
        m["fd"] = frechet_distance(f, ref_feats)
        m["diversity"] = diversity(f, records)
        metrics[f"best_of_{cfg.best_of_n}"] = m
        goods[f"best_of_{cfg.best_of_n}"] = goods.pop("best_of_n")
    for name in metrics:
        if name != "pretrained":
            metrics[name]["win_rate_vs_pretrained"] = win_rate(goods[name], goods["pretrained"])
            if "control" in goods and name != "control":
                metrics[name]["win_rate_vs_control"] = win_rate(goods[name], goods["control"])

    # ---- Report: before/after grid, tables, metrics.json.
    main_run = next((r for r in ("feedback", "unlabeled", "gold") if r in models), cfg.runs.split(",")[0])
    rows_before = sample_grid_rows(pretrained, GRID_PROMPTS, 6, cfg.num_inference_steps, cfg.guidance_scale)
    rows_after = sample_grid_rows(models[main_run], GRID_PROMPTS, 6, cfg.num_inference_steps,
                                  cfg.guidance_scale)
    save_grid([r for pair in zip(rows_before, rows_after) for r in pair],
              [f"{tag}: {p}" for p in GRID_PROMPTS for tag in ("before", "after")],
              out / "before_after.png")
    result = {"before": metrics["pretrained"], "after": metrics[main_run], "models": metrics,
              "seconds": round(time.time() - t0), "train_seconds": round(train_s),
              "config": config_dict(cfg)}
    if "control" in metrics:
        result["control"] = metrics["control"]
    if main_run in metrics and "win_rate_vs_pretrained" in metrics[main_run]:
        result["win_rate"] = metrics[main_run]["win_rate_vs_pretrained"]
    report = report_md(metrics, cfg, main_run, result["seconds"])
    write_metrics(out, result, report)
    atomic_write_text(out / "report.md", report)
    print(report)
    print(f"report: {out / 'report.md'}   grid: {out / 'before_after.png'}")


def report_md(metrics: dict, cfg: FinetuneConfig, main_run: str, seconds: float) -> str:
    """The results tables: alignment (per category, split) and fidelity, win rates."""
    lines = [f"# Stage 3: reward-weighted fine-tuning (preset {cfg.preset}, {seconds / 60:.1f} min)",
             "", f"Main run: `{main_run}`; {cfg.steps} steps, beta={cfg.beta}, "
             f"balance={cfg.balance}, batch {cfg.batch_size} "
             f"({cfg.model_fraction:.0%} D_model). Gold-judge alignment with 95% CI "
             f"({cfg.eval_samples_per_prompt} samples per evaluation prompt):", "",
             alignment_table(metrics), "| fidelity | FD | diversity | win / tie / loss vs pretrained "
             "| vs control |", "|---|---|---|---|---|"]
    for name, m in metrics.items():
        w = m.get("win_rate_vs_pretrained")
        c = m.get("win_rate_vs_control")
        f = lambda r: "-" if r is None else f"{100 * r['win']:.1f} / {100 * r['tie']:.1f} / {100 * r['loss']:.1f}"
        lines.append(f"| {name} | {m['fd']:.2f} | {m['diversity']:.2f} | {f(w)} | {f(c)} |")
    lines += ["", "Seen/unseen per category:", "", "| model | " + " | ".join(
        f"{s}/{c}" for s in ("seen", "unseen") for c in ("count", "color", "background", "combination"))
        + " |", "|---|" + "---|" * 8]
    for name, m in metrics.items():
        lines.append(f"| {name} | " + " | ".join(
            f"{100 * m['alignment'][f'{s}/{c}']['mean']:.1f}" for s in ("seen", "unseen")
            for c in ("count", "color", "background", "combination")) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
