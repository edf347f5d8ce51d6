"""Stage 0: pretrain a text-to-image diffusion model on the web corpus.

We cannot download Stable Diffusion, so we make our own base model: a text encoder and a UNet,
trained from scratch with the usual denoising loss on renders paired with noisy, web-like
captions. Those captions (corpus.web_caption) undercount larger groups, so the pretrained model
ends up misaligned the way the paper's base model is: good at colors and backgrounds, bad at
counts and combinations. The learning rate decays to near zero, so the model ends at its plateau
and a later gain cannot be plain extra training.

    python train_unet.py                    # the cpu preset (the longest stage; README)
    python train_unet.py --preset smoke     # seconds; what the tests run
    python train_unet.py --captions clean --out_dir runs/unet_clean   # control: exact counts
    torchrun --standalone --nproc_per_node 8 train_unet.py --preset gpu   # 8 GPUs (DDP)
"""
import dataclasses
import time
from pathlib import Path

import torch

from tiny_rlhf_t2i import distributed, seeds
from tiny_rlhf_t2i.config import check_range, parse_config, require, run
from tiny_rlhf_t2i.corpus import CaptionNoise, WebCorpus
from tiny_rlhf_t2i.evaluate import (GRID_PROMPTS, alignment_table, evaluate_model, fmt,
                                    sample_grid_rows)
from tiny_rlhf_t2i.files import check_writable, pick_device, save_grid, write_metrics
from tiny_rlhf_t2i.train_loop import Batch, LoopConfig, drop_captions, train
from tiny_rlhf_t2i.unet import ModelConfig, TextToImage, model_config


@dataclasses.dataclass
class TrainConfig(ModelConfig, CaptionNoise, LoopConfig):
    """Stage 0: pretrain the text-to-image model on the web corpus."""
    preset: str = "cpu"  # the named preset these values started from (--preset)
    out_dir: str = "runs/unet"  # run folder: checkpoint, metrics.json, summary.md, grids
    captions: str = "web"  # web: noisy captions (the real setting); clean: same, counts exact
    steps: int = 7000  # optimizer steps
    batch_size: int = 128  # images per step
    lr: float = 2e-3  # peak AdamW learning rate
    warmup_steps: int = 300  # linear warmup from 0
    min_lr_frac: float = 0.01  # cosine decay ends at lr * min_lr_frac ("near zero": a plateau)
    ema_decay: float = 0.999  # EMA of the weights; the EMA model is the one that samples
    p_uncond: float = 0.1  # caption dropped (null caption) for classifier-free guidance
    min_snr_gamma: float = 0.0  # min-SNR-gamma loss weighting (losses.min_snr_weights; 0: off)
    corpus_size: int = 500_000  # examples in the fixed web corpus (example i is always the same)
    corpus_seed: int = 0  # which web corpus
    guidance_scale: float = 3.0  # classifier-free guidance scale when sampling
    num_inference_steps: int = 15  # DPM-Solver++(2M) steps when sampling
    eval_samples_per_prompt: int = 16  # samples per fixed evaluation prompt (88 prompts)
    device: str = "auto"  # auto, cpu or cuda
    threads: int = 0  # torch CPU threads (0: torch's default)

    def __post_init__(self):
        ModelConfig.__post_init__(self)
        LoopConfig.__post_init__(self)
        require(self.captions in ("web", "clean"), f"--captions must be web or clean, not "
                f"{self.captions!r}")
        check_range(self, "p_uncond", 0, 1, open_hi=True)
        check_range(self, "corpus_size eval_samples_per_prompt num_inference_steps", 1)
        check_range(self, "guidance_scale threads min_snr_gamma", 0)


PRESETS = {
    "smoke": dict(steps=30, batch_size=16, channels=16, text_dim=32, corpus_size=2000,
                  warmup_steps=5, eval_samples_per_prompt=1, num_inference_steps=5,
                  out_dir="runs/smoke/unet", ema_decay=0.9),
    "cpu": dict(),
    # bf16 autocast and torch.compile are off: at this size neither beats fp32 with TF32 and
    # channels_last (benchmarks/README.md)
    "gpu": dict(resolution=32, channels=64, text_dim=128, batch_size=256, steps=4000,
                lr=1e-3, out_dir="runs/gpu/unet"),
}


def pretrain(cfg: TrainConfig):
    """Stage 0's training: the shared loop on web batches, every weight 1.
    Returns (EMA model, loss curve, finished)."""
    device = pick_device(cfg.device, cfg.threads)
    out = check_writable(cfg.out_dir)
    pre = dataclasses.asdict(cfg)  # the web corpus: its size, seed, caption noise, resolution
    corpus = WebCorpus(pre, device, out / "corpus.pt", cfg.threads)  # stage 3's D_pre reads it too
    torch.manual_seed(cfg.seed)
    model = TextToImage(model_config(cfg)).to(device, memory_format=torch.channels_last)

    def make_batch(step: int) -> Batch:
        rng = seeds.pretrain_batch(cfg.seed, step)
        x0, ids = corpus.batch(rng, cfg.batch_size)  # (B, 3, H, W) on the device, (B, L)
        drop_captions(ids, rng, cfg.p_uncond)
        return Batch(x0, ids, torch.ones(cfg.batch_size), min_snr_gamma=cfg.min_snr_gamma)

    carry = {"model_config": dataclasses.asdict(model_config(cfg)), "config": pre}
    return train(model, cfg, make_batch, out / "ckpt.pt", "pretrain", carry)


def main(argv=None):
    cfg = parse_config(TrainConfig, PRESETS, argv)
    distributed.setup()
    t0 = time.time()
    model, curve, finished = pretrain(cfg)
    if not distributed.is_main():  # rank 0 evaluates and writes the report
        return
    if not finished:
        print(f"stopped at step {cfg.stop_after}; continue with --resume true")
        return
    train_s = time.time() - t0

    # Evaluate the pretrained model with the gold judge on the fixed evaluation prompts.
    t1 = time.time()
    metrics, records, images, goods = evaluate_model(model, cfg.eval_samples_per_prompt,
                                                     cfg.num_inference_steps, cfg.guidance_scale)
    eval_s = time.time() - t1
    out = Path(cfg.out_dir)
    rows = sample_grid_rows(model, GRID_PROMPTS, 8, cfg.num_inference_steps, cfg.guidance_scale)
    save_grid(rows, GRID_PROMPTS, out / "samples.png")
    metrics.update(train_seconds=round(train_s), eval_seconds=round(eval_s),
                   images_per_s=round(len(records) / eval_s, 1), loss_curve=curve,
                   config=dataclasses.asdict(cfg))
    examples = "\n".join(f"- `{r['prompt']}`: {'good' if r['good'] else 'bad'} ({r['reason']})"
                         for r in records[:: max(1, len(records) // 12)])
    a = metrics["alignment"]
    summary = (f"# Stage 0: pretrained model ({cfg.captions} captions, preset {cfg.preset})\n\n"
               f"{cfg.steps} steps in {train_s / 60:.1f} min; evaluation of {len(records)} samples "
               f"in {eval_s:.0f} s. Alignment with the gold judge (95% CI):\n\n"
               f"{alignment_table({'pretrained': metrics})}\n"
               f"Sample grid: `samples.png`. Some judged samples:\n\n{examples}\n")
    write_metrics(out, metrics, summary)
    print(f"overall {fmt(a['overall'])} | count {fmt(a['count'])} | color {fmt(a['color'])} | "
          f"background {fmt(a['background'])} | combination {fmt(a['combination'])} | "
          f"well-formed {fmt(metrics['well_formed'])}")
    print(f"wrote {out / 'metrics.json'}, {out / 'summary.md'} and {out / 'samples.png'}")


if __name__ == "__main__":
    run(main)
