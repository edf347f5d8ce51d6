"""Stages 1 and 2: collect feedback and learn a reward function (Lee et al. 2023, Sec. 3.1-3.2).

1. Sample the pretrained model on prompts of the four categories (seen split only) and label
   each image good or bad: the judge stands in for the paper's people (with a small label-flip
   rate, as people disagree), or you label them yourself in a browser (--labeler human).
2. Train our CLIP on the web corpus: its encoders are what the reward stands on, and its cosine
   score is the baseline the reward must beat.
3. Train the reward model r_phi(x, z) with Eq. 1: MSE to the label + lambda * prompt
   classification on augmented prompts. A second model without the auxiliary loss shows what
   it adds.
4. Measure the three scorers on a held-out feedback set (other seeds, seen and unseen prompts,
   gold labels): pairwise accuracy, accuracy at 0.5, ROC-AUC.

    python train_reward.py                      # after python train_unet.py
    python train_reward.py --labeler human      # be the labeler yourself
"""
import dataclasses
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from tiny_rlhf_t2i.clip import ClipConfig, Clip, train_clip
from tiny_rlhf_t2i.config import config_dict, parse_config
from tiny_rlhf_t2i.diffusion import to_model_space
from tiny_rlhf_t2i.evaluate import pairwise_accuracy, roc_auc
from tiny_rlhf_t2i.feedback import (collect, feedback_records, label_summary, load_labeled,
                                    save_gallery)
from tiny_rlhf_t2i.files import load_checkpoint, pick_device, save_checkpoint, write_metrics
from tiny_rlhf_t2i.losses import reward_loss
from tiny_rlhf_t2i.reward import RewardModel, augment_prompts
from tiny_rlhf_t2i.text import encode
from tiny_rlhf_t2i.unet import load_model
from tiny_rlhf_t2i.world import CaptionNoise


@dataclasses.dataclass
class RewardConfig:
    """Stages 1-2: collect feedback, train CLIP and the reward model."""
    unet_dir: str = "runs/unet"  # stage 0 run folder (its ckpt.pt samples the feedback)
    out_dir: str = "runs/reward"  # run folder: reward.pt, clip.pt, metrics.json, summary.md
    feedback_dir: str = "data/feedback"  # where the feedback sets (images + labels) go
    seed: int = 0  # seeds sampling, label flips and training
    per_category: int = 1000  # labeled feedback images per prompt category (paper: 27K in all)
    heldout_per_category: int = 200  # held-out images per category and split (seen, unseen)
    flip_rate: float = 0.05  # probability a judge label is flipped (people disagree)
    labeler: str = "judge"  # judge: the procedural labeler; human: you, in a browser
    port: int = 8765  # port of the labeling page (--labeler human)
    guidance_scale: float = 3.0  # sampling the feedback images, as stage 0 evaluates
    num_inference_steps: int = 25  # DDIM steps for the feedback images
    clip_steps: int = 1500  # CLIP training steps on the web corpus
    clip_batch: int = 256  # CLIP batch size (in-batch negatives)
    clip_lr: float = 2e-3  # CLIP peak learning rate
    reward_steps: int = 1500  # reward-model training steps
    reward_batch: int = 128  # reward-model batch size
    reward_lr: float = 1e-3  # reward-model learning rate
    train_image_encoder: bool = False  # let the reward's image encoder adapt (paper: frozen)
    lam: float = 0.5  # lambda: weight of the prompt-classification loss (Eq. 1, paper 0.5)
    temperature: float = 2.0  # T of softmax(r / T) in prompt classification (paper 2)
    n_prompts: int = 5  # N: the true prompt and N-1 one-attribute-changed prompts
    device: str = "auto"  # auto, cpu or cuda
    threads: int = 0  # torch CPU threads (0: torch's default)


PRESETS = {
    "smoke": dict(unet_dir="runs/smoke/unet", out_dir="runs/smoke/reward",
                  feedback_dir="runs/smoke/feedback", per_category=16, heldout_per_category=8,
                  num_inference_steps=5, clip_steps=20, clip_batch=32, reward_steps=20),
    "cpu": dict(),
    "gpu": dict(unet_dir="runs/gpu/unet", out_dir="runs/gpu/reward",
                feedback_dir="data/feedback_gpu", per_category=4000, heldout_per_category=500,
                clip_steps=4000, reward_steps=4000),
}


def train_reward_model(clip: Clip, rows, images, cfg: RewardConfig, lam: float, device):
    """Eq. 1 on the labeled feedback: MSE to the label + lam * prompt classification."""
    torch.manual_seed(cfg.seed)
    model = RewardModel(clip, train_image_encoder=cfg.train_image_encoder).to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.reward_lr, weight_decay=0.01)
    x_all = to_model_space(images)  # (N, 3, H, W)
    ids_all = encode([r["prompt"] for r in rows])  # (N, L)
    y_all = torch.tensor([r["label"] for r in rows])  # (N,)
    for step in tqdm(range(cfg.reward_steps), desc=f"reward (lambda={lam})", dynamic_ncols=True):
        rng = np.random.default_rng([cfg.seed, 11, step])
        idx = torch.from_numpy(rng.integers(0, len(rows), cfg.reward_batch))
        x = x_all[idx].to(device)
        if rng.random() < 0.5:  # horizontal flip keeps every attribute a prompt can name
            x = x.flip(-1)
        for g in opt.param_groups:
            g["lr"] = cfg.reward_lr * 0.5 * (1 + np.cos(np.pi * step / cfg.reward_steps))
        img = model.image_features(x)  # (B, E)
        pred = model.head(img, model.text_features(ids_all[idx].to(device)))  # (B,)
        aug = None
        good = [int(i) for i in idx if y_all[i] == 1]
        if lam > 0 and good:
            cands = [p for i in good for p in [rows[i]["prompt"]]
                     + augment_prompts(rows[i]["prompt"], cfg.n_prompts - 1, rng)]
            txt = model.text_features(encode(cands).to(device))  # (G * N, E)
            img_good = img[(y_all[idx] == 1).to(device)].repeat_interleave(cfg.n_prompts, 0)
            aug = model.head(img_good, txt).view(len(good), cfg.n_prompts)  # (G, N)
        loss = reward_loss(pred, y_all[idx].to(device), aug, lam, cfg.temperature)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return model.eval()


def measure(scores, rows) -> dict:
    """Pairwise accuracy, accuracy at 0.5 and ROC-AUC of one scorer, per split."""
    out = {}
    for split in ("seen", "unseen"):
        m = np.array([r["split"] == split for r in rows])
        s, y = np.asarray(scores)[m], np.array([r["label"] for r in rows])[m]
        p = np.array([r["prompt"] for r in rows])[m]
        out[split] = {"pairwise_accuracy": pairwise_accuracy(s, y, p),
                      "accuracy": float(((s > 0.5) == (y == 1)).mean()),
                      "roc_auc": roc_auc(s, y)}
    return out


def main(argv=None):
    cfg = parse_config(RewardConfig, PRESETS, argv)
    if cfg.labeler not in ("judge", "human"):
        raise SystemExit(f"error: --labeler must be judge or human, not {cfg.labeler!r}")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = pick_device(cfg.device)
    out, fb = Path(cfg.out_dir), Path(cfg.feedback_dir)
    t0 = time.time()

    # ---- Stage 1: feedback on the pretrained model's samples (resumes if interrupted).
    unet = load_model(Path(cfg.unet_dir) / "ckpt.pt",
                      f"python train_unet.py --preset {cfg.preset}").to(device)
    sampling = dict(num_inference_steps=cfg.num_inference_steps, guidance_scale=cfg.guidance_scale)
    collect(unet, fb / "train", feedback_records("seen", cfg.per_category, cfg.seed),
            flip_rate=cfg.flip_rate, labeler=cfg.labeler, **sampling)
    heldout = (feedback_records("seen", cfg.heldout_per_category, cfg.seed + 1)
               + feedback_records("unseen", cfg.heldout_per_category, cfg.seed + 1))
    collect(unet, fb / "heldout", heldout, flip_rate=0.0, **sampling)  # gold labels, to measure
    if cfg.labeler == "human":
        from tiny_rlhf_t2i import label
        print("label the images in your browser; press Ctrl-C here when you are done")
        label.main([str(fb / "train"), "--port", str(cfg.port)])
    made_by = f"python train_reward.py --preset {cfg.preset}"
    rows, images = load_labeled(fb / "train", made_by)
    if len(rows) < 10:
        raise SystemExit(f"error: only {len(rows)} labeled images in {fb / 'train'}; label more")
    h_rows, h_images = load_labeled(fb / "heldout", made_by)
    save_gallery(rows, images, out / "feedback_gallery.png")
    sample_s = time.time() - t0

    # ---- Our CLIP, trained on the web corpus (cached: delete clip.pt to retrain).
    clip_cfg = ClipConfig(resolution=images.shape[1])
    if (out / "clip.pt").exists():
        clip = Clip(clip_cfg)
        clip.load_state_dict(load_checkpoint(out / "clip.pt", made_by)["model"])
        clip = clip.to(device).eval()
    else:
        clip = train_clip(clip_cfg, CaptionNoise(), cfg.clip_steps, cfg.clip_batch, cfg.clip_lr,
                          cfg.seed, device)
        save_checkpoint(out / "clip.pt", {"model": clip.state_dict(),
                                          "clip_config": dataclasses.asdict(clip_cfg)})

    # ---- Stage 2: the reward model, with and without prompt classification.
    scorers = {"clip_score": clip.score(h_images, [r["prompt"] for r in h_rows]).detach().cpu()}
    for name, lam in (("reward_no_pc", 0.0), ("reward", cfg.lam)):
        model = train_reward_model(clip, rows, images, cfg, lam, device)
        save_checkpoint(out / f"{name}.pt", {"model": model.state_dict(), "lam": lam,
                                             "clip_config": dataclasses.asdict(clip_cfg),
                                             "config": config_dict(cfg)})
        scorers[name] = model.score(h_images, [r["prompt"] for r in h_rows])

    # ---- Measurement on held-out feedback (gold labels), seen and unseen prompts.
    results = {name: measure(s.numpy(), h_rows) for name, s in scorers.items()}
    for r in results["clip_score"].values():
        r["accuracy"] = None  # a cosine has no 0.5 threshold
    metrics = {
        "label_fraction_good": label_summary(rows),
        "heldout_fraction_good": label_summary(h_rows),
        **{k: {name: {split: results[name][split][k] for split in ("seen", "unseen")}
               for name in results} for k in ("pairwise_accuracy", "accuracy", "roc_auc")},
        "seconds": round(time.time() - t0), "sampling_seconds": round(sample_s),
        "config": config_dict(cfg)}
    lf = metrics["label_fraction_good"]
    table = "| scorer | pairwise acc. seen | unseen | acc@0.5 seen | unseen | ROC-AUC seen | unseen |\n"
    table += "|---|---|---|---|---|---|---|\n"
    for name, r in results.items():
        cell = lambda v: "-" if v is None else f"{100 * v:.1f}%"
        table += (f"| {name} | {cell(r['seen']['pairwise_accuracy'])} | "
                  f"{cell(r['unseen']['pairwise_accuracy'])} | {cell(r['seen']['accuracy'])} | "
                  f"{cell(r['unseen']['accuracy'])} | {r['seen']['roc_auc']:.3f} | "
                  f"{r['unseen']['roc_auc']:.3f} |\n")
    summary = (f"# Stages 1-2: feedback and reward (preset {cfg.preset})\n\n"
               f"{lf['n']} labeled images ({cfg.labeler}, flip rate {cfg.flip_rate}); fraction good: "
               + ", ".join(f"{c} {100 * lf[c]:.0f}%" for c in ("overall", "count", "color",
                                                                "background", "combination"))
               + f" (paper: overall 46.5%, count 34%, color 70%).\n\n"
               f"Held-out feedback: {len(h_rows)} images with gold labels.\n\n{table}\n"
               f"Gallery of labeled examples: `feedback_gallery.png`. "
               f"Took {metrics['seconds'] / 60:.1f} min.\n")
    write_metrics(out, metrics, summary)
    print(summary)


if __name__ == "__main__":
    main()
