"""Stages 1 and 2: collect feedback and learn a reward function (Lee et al. 2023, Sec. 3.1-3.2).

1. Sample the pretrained model on prompts of the four categories (seen split only) and label
   each image good or bad: the judge stands in for the paper's people (with a small label-flip
   rate, as people disagree), or you label them yourself in a browser (--labeler human).
2. Train our CLIP on the web corpus: its encoders are what the reward stands on, and its cosine
   score is the baseline the reward must beat.
3. Train the reward model r_phi(x, z) with Eq. 1: MSE to the label + lambda * prompt
   classification on augmented prompts. A twin shows what the auxiliary loss does: stage 3's
   reward has lambda 0 by default (with our sigmoid reward the paper's 0.5 can invert the
   ranking within a prompt: docs/results.md), the twin the paper's 0.5.
4. Measure the three scorers on a held-out feedback set (other seeds, seen and unseen prompts,
   gold labels): pairwise accuracy and accuracy at 0.5.

    python train_reward.py                      # after python train_unet.py
    python train_reward.py --labeler human      # be the labeler yourself
"""
import dataclasses
import time
from pathlib import Path

from tiny_rlhf_t2i import seeds
from tiny_rlhf_t2i.clip import ClipConfig, Clip, train_clip
from tiny_rlhf_t2i.config import UserError, check_range, parse_config, require, run
from tiny_rlhf_t2i.corpus import CaptionNoise
from tiny_rlhf_t2i.feedback import (collect, feedback_records, label_summary, load_labeled,
                                    save_gallery)
from tiny_rlhf_t2i.files import (check_writable, load_checkpoint, pick_device, save_checkpoint,
                                 write_metrics)
from tiny_rlhf_t2i.reward import (RewardTrainConfig, measure, stage2_rewards,
                                  train_reward_model)
from tiny_rlhf_t2i.unet import load_model


@dataclasses.dataclass
class RewardConfig(RewardTrainConfig):
    """Stages 1-2: collect feedback, train CLIP and the reward model."""
    preset: str = "cpu"  # the named preset these values started from (--preset)
    unet_dir: str = "runs/unet"  # stage 0 run folder (its ckpt.pt samples the feedback)
    out_dir: str = "runs/reward"  # run folder: reward.pt, clip.pt, metrics.json, summary.md
    feedback_dir: str = "data/feedback"  # where the feedback sets (images + labels) go
    per_category: int = 1000  # labeled feedback images per prompt category (paper: 27K in all)
    heldout_per_category: int = 200  # held-out images per category and split (seen, unseen)
    flip_rate: float = 0.05  # probability a judge label is flipped (people disagree)
    labeler: str = "judge"  # judge: the procedural labeler; human: you, in a browser
    port: int = 8765  # port of the labeling page (--labeler human)
    guidance_scale: float = 3.0  # sampling the feedback images, as stage 0 evaluates
    num_inference_steps: int = 15  # DPM-Solver++(2M) steps for the feedback images
    clip_steps: int = 1500  # CLIP training steps on the web corpus
    clip_batch: int = 256  # CLIP batch size (in-batch negatives)
    clip_lr: float = 2e-3  # CLIP peak learning rate
    device: str = "auto"  # auto, cpu or cuda
    threads: int = 0  # torch CPU threads (0: torch's default)

    def __post_init__(self):
        RewardTrainConfig.__post_init__(self)
        require(self.labeler in ("judge", "human"), f"--labeler must be judge or human, not "
                f"{self.labeler!r}")
        check_range(self, "flip_rate", 0, 1)
        check_range(self, "per_category heldout_per_category clip_steps num_inference_steps", 1)
        check_range(self, "clip_batch", 2)  # in-batch negatives
        check_range(self, "clip_lr", 0, 1, open_lo=True)
        check_range(self, "guidance_scale threads", 0)


PRESETS = {
    "smoke": dict(unet_dir="runs/smoke/unet", out_dir="runs/smoke/reward",
                  feedback_dir="runs/smoke/feedback", per_category=16, heldout_per_category=8,
                  num_inference_steps=5, clip_steps=20, clip_batch=32, reward_steps=20),
    "cpu": dict(),
    "gpu": dict(unet_dir="runs/gpu/unet", out_dir="runs/gpu/reward",
                feedback_dir="data/feedback_gpu"),  # the cpu preset's sizes at 32 px
}


def collect_feedback(cfg: RewardConfig, device):
    """Stage 1: sample the pretrained model on feedback prompts and label the images (resumes
    if interrupted). Returns the labeled training set and the gold-labeled held-out set."""
    fb = Path(cfg.feedback_dir)
    unet, _ = load_model(Path(cfg.unet_dir) / "ckpt.pt",
                         f"python train_unet.py --preset {cfg.preset}")
    unet = unet.to(device)
    sampling = dict(num_inference_steps=cfg.num_inference_steps, guidance_scale=cfg.guidance_scale)
    collect(unet, fb / "train", feedback_records("seen", cfg.per_category, cfg.seed),
            flip_rate=cfg.flip_rate, labeler=cfg.labeler, **sampling)
    heldout = [r for split in ("seen", "unseen") for r in
               feedback_records(split, cfg.heldout_per_category, cfg.seed + seeds.HELDOUT)]
    collect(unet, fb / "heldout", heldout, flip_rate=0.0, **sampling)  # gold labels, to measure
    if cfg.labeler == "human":
        from tiny_rlhf_t2i import label
        print("label the images in your browser; press Ctrl-C here when you are done")
        label.main([str(fb / "train"), "--port", str(cfg.port)])
    made_by = f"python train_reward.py --preset {cfg.preset}"
    rows, images = load_labeled(fb / "train", made_by)
    if len(rows) < 10:
        raise UserError(f"only {len(rows)} labeled images in {fb / 'train'}; label more")
    return rows, images, *load_labeled(fb / "heldout", made_by)


def clip_model(cfg: RewardConfig, out: Path, resolution: int, device) -> Clip:
    """Our CLIP, trained on the web corpus as CLIP learned from LAION's captions (cached in
    out/clip.pt: delete it to retrain)."""
    clip_cfg = ClipConfig(resolution=resolution)
    if (out / "clip.pt").exists():
        clip = Clip(clip_cfg)
        clip.load_state_dict(load_checkpoint(out / "clip.pt", "python train_reward.py")["model"])
        return clip.to(device).eval()
    clip = train_clip(clip_cfg, CaptionNoise(), cfg.clip_steps, cfg.clip_batch, cfg.clip_lr,
                      cfg.seed, device)
    save_checkpoint(out / "clip.pt", {"model": clip.state_dict(),
                                      "clip_config": dataclasses.asdict(clip_cfg)})
    return clip


def main(argv=None):
    cfg = parse_config(RewardConfig, PRESETS, argv)
    device = pick_device(cfg.device, cfg.threads)
    out = check_writable(cfg.out_dir)
    t0 = time.time()

    # ---- Stage 1: feedback on the pretrained model's samples.
    rows, images, h_rows, h_images = collect_feedback(cfg, device)
    save_gallery(rows, images, out / "feedback_gallery.png")
    sample_s = time.time() - t0

    # ---- Stage 2: the reward model on our CLIP, and its twin with(out) prompt classification.
    clip = clip_model(cfg, out, images.shape[1], device)
    clip_s = time.time() - t0 - sample_s  # 0 when clip.pt was there already
    h_prompts = [r["prompt"] for r in h_rows]
    scorers = {"clip_score": clip.score(h_images, h_prompts).detach().cpu()}
    for name, lam in stage2_rewards(cfg.lam):
        model = train_reward_model(clip, rows, images, cfg, lam, device)
        save_checkpoint(out / f"{name}.pt", {"model": model.state_dict(), "lam": lam,
                                             "clip_config": dataclasses.asdict(clip.cfg),
                                             "config": dataclasses.asdict(cfg)})
        scorers[name] = model.score(h_images, h_prompts)

    # ---- Measurement on held-out feedback (gold labels), seen and unseen prompts.
    results = {name: measure(s.numpy(), h_rows) for name, s in scorers.items()}
    for r in results["clip_score"].values():
        r["accuracy"] = None  # a cosine has no 0.5 threshold
    metrics = {
        "label_fraction_good": label_summary(rows),
        "heldout_fraction_good": label_summary(h_rows),
        **{k: {name: {split: results[name][split][k] for split in ("seen", "unseen")}
               for name in results} for k in ("pairwise_accuracy", "accuracy")},
        "seconds": round(time.time() - t0), "sampling_seconds": round(sample_s),
        "clip_seconds": round(clip_s), "config": dataclasses.asdict(cfg)}
    write_metrics(out, metrics, summary_md(cfg, metrics, results, len(h_rows)))
    print((out / "summary.md").read_text())


def summary_md(cfg: RewardConfig, metrics: dict, results: dict, n_heldout: int) -> str:
    cell = lambda v: "-" if v is None else f"{100 * v:.1f}%"
    table = "| scorer | pairwise acc. seen | unseen | acc@0.5 seen | unseen |\n" + "|---" * 5 + "|\n"
    for name, r in results.items():
        table += (f"| {name} | {cell(r['seen']['pairwise_accuracy'])} | "
                  f"{cell(r['unseen']['pairwise_accuracy'])} | {cell(r['seen']['accuracy'])} | "
                  f"{cell(r['unseen']['accuracy'])} |\n")
    lf = metrics["label_fraction_good"]
    good = ", ".join(f"{c} {100 * lf[c]:.0f}%" for c in ("overall", "count", "color",
                                                         "background", "combination"))
    return (f"# Stages 1-2: feedback and reward (preset {cfg.preset})\n\n"
            f"{lf['n']} labeled images ({cfg.labeler}, flip rate {cfg.flip_rate}); fraction "
            f"good: {good} (paper: overall 46.5%, count 34%, color 70%).\n\n"
            f"Held-out feedback: {n_heldout} images with gold labels.\n\n{table}\n"
            f"Gallery of labeled examples: `feedback_gallery.png`. "
            f"Took {metrics['seconds'] / 60:.1f} min.\n")


if __name__ == "__main__":
    run(main)
