"""Stage 0: pretrain a text-to-image diffusion model on the web corpus.

We cannot download Stable Diffusion, so we make our own base model: a text encoder and a UNet,
trained from scratch with the usual denoising loss on renders paired with noisy, web-like
captions. Those captions (world.web_caption) undercount larger groups, so the pretrained model
ends up misaligned the way the paper's base model is: good at colors and backgrounds, bad at
counts and combinations. The learning rate decays to near zero, so the model ends at its plateau
and a later gain cannot be plain extra training.

    python train_unet.py                    # the cpu preset (~35 min on 2 cores)
    python train_unet.py --preset smoke     # seconds; what the tests run
    python train_unet.py --captions clean --out_dir runs/unet_clean   # control: exact counts
"""
import dataclasses
import math
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from tiny_rlhf_t2i.config import config_dict, parse_config
from tiny_rlhf_t2i.diffusion import EMA, Scheduler, denoising_loss, to_model_space
from tiny_rlhf_t2i.evaluate import (GRID_PROMPTS, alignment_table, evaluate_model, fmt,
                                    sample_grid_rows)
from tiny_rlhf_t2i.files import (load_checkpoint, pick_device, save_checkpoint, save_grid,
                                 write_metrics)
from tiny_rlhf_t2i.text import encode
from tiny_rlhf_t2i.unet import ModelConfig, TextToImage
from tiny_rlhf_t2i.world import CaptionNoise, web_corpus_batch


@dataclasses.dataclass
class TrainConfig(ModelConfig, CaptionNoise):
    """Stage 0: pretrain the text-to-image model on the web corpus."""
    out_dir: str = "runs/unet"  # run folder: checkpoint, metrics.json, summary.md, grids
    captions: str = "web"  # web: noisy captions (the real setting); clean: same, counts exact
    seed: int = 0  # seeds the weights, the batches and the noise
    steps: int = 7000  # optimizer steps
    batch_size: int = 128  # images per step
    lr: float = 2e-3  # peak AdamW learning rate
    warmup_steps: int = 300  # linear warmup from 0
    min_lr_frac: float = 0.01  # cosine decay ends at lr * min_lr_frac ("near zero": a plateau)
    weight_decay: float = 0.0  # AdamW weight decay
    ema_decay: float = 0.999  # EMA of the weights; the EMA model is the one that samples
    p_uncond: float = 0.1  # caption dropped (null caption) for classifier-free guidance
    corpus_size: int = 500_000  # examples in the fixed web corpus (example i is always the same)
    corpus_seed: int = 0  # which web corpus
    guidance_scale: float = 3.0  # classifier-free guidance scale when sampling
    num_inference_steps: int = 25  # DDIM steps when sampling
    eval_samples_per_prompt: int = 16  # samples per fixed evaluation prompt (88 prompts)
    ckpt_every_s: float = 300.0  # seconds between checkpoints (and one at the end)
    stop_after: int = 0  # stop with a checkpoint after this many steps (0: run to the end)
    resume: bool = False  # continue from out_dir/ckpt.pt exactly where it stopped
    device: str = "auto"  # auto, cpu or cuda
    bf16: bool = False  # bf16 autocast (CUDA only; fp32 on CPU is the safe default)
    threads: int = 0  # torch CPU threads (0: torch's default)


PRESETS = {
    "smoke": dict(steps=30, batch_size=16, channels=16, text_dim=32, corpus_size=2000,
                  warmup_steps=5, eval_samples_per_prompt=1, num_inference_steps=5,
                  out_dir="runs/smoke/unet", ema_decay=0.9),
    "cpu": dict(),
    "gpu": dict(resolution=32, channels=64, text_dim=128, batch_size=256, steps=20000,
                lr=1e-3, bf16=True, out_dir="runs/gpu/unet"),
}


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warmup, then cosine decay to lr * min_lr_frac at the last step."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.lr * (cfg.min_lr_frac + (1 - cfg.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * progress)))


def model_config(cfg) -> ModelConfig:
    return ModelConfig(**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(ModelConfig)})


def web_batch(cfg: TrainConfig, step: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """The batch of a step: fixed by (seed, step), so a resumed run sees the same batches."""
    rng = np.random.default_rng([cfg.seed, step])
    noise = CaptionNoise(**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(CaptionNoise)})
    if cfg.captions == "clean":  # the same web captions, but every stated count is the true one
        noise = dataclasses.replace(noise, p_undercount=0.0, p_vague_count=0.0)
    images, captions = web_corpus_batch(rng.integers(0, cfg.corpus_size, cfg.batch_size), noise,
                                        cfg.resolution, cfg.corpus_seed)
    captions = ["" if rng.random() < cfg.p_uncond else c for c in captions]  # CFG dropout
    x0 = to_model_space(images).to(device, memory_format=torch.channels_last)  # (B, 3, H, W)
    return x0, encode(captions).to(device)  # (B, 3, H, W), (B, L)


def train(cfg: TrainConfig) -> tuple[TextToImage, dict]:
    """The training loop. Returns the EMA model and the loss curve."""
    if cfg.captions not in ("web", "clean"):
        raise SystemExit(f"error: --captions must be web or clean, not {cfg.captions!r}")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = pick_device(cfg.device)
    out = Path(cfg.out_dir)
    ckpt_path = out / "ckpt.pt"
    torch.manual_seed(cfg.seed)
    model = TextToImage(model_config(cfg)).to(device, memory_format=torch.channels_last)
    ema = EMA(model, cfg.ema_decay)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = Scheduler()
    step, curve = 0, []
    if cfg.resume:
        state = load_checkpoint(ckpt_path, f"python train_unet.py --preset {cfg.preset}")
        model.load_state_dict(state["model"])
        ema.model.load_state_dict(state["ema"])
        opt.load_state_dict(state["opt"])
        step, curve = state["step"], state["loss_curve"]
        print(f"resumed {ckpt_path} at step {step}")

    def checkpoint():
        save_checkpoint(ckpt_path, {"model": model.state_dict(), "ema": ema.model.state_dict(),
                                    "opt": opt.state_dict(), "step": step, "loss_curve": curve,
                                    "model_config": dataclasses.asdict(model_config(cfg)),
                                    "config": config_dict(cfg)})

    end = cfg.steps if not cfg.stop_after else min(cfg.steps, cfg.stop_after)
    last_ckpt, running = time.time(), []
    bar = tqdm(total=cfg.steps, initial=step, desc="pretrain", dynamic_ncols=True)
    model.train()
    while step < end:
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg)
        x0, ids = web_batch(cfg, step, device)
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)  # t and noise of a step
        with torch.autocast(device.type, torch.bfloat16, enabled=cfg.bf16 and device.type == "cuda"):
            loss = denoising_loss(model, scheduler, x0, ids, gen).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ema.update(model)
        step += 1
        running.append(loss.item())
        if step % 50 == 0 or step == end:
            curve.append((step, float(np.mean(running))))
            running = []
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.4f}", lr=f"{lr_at(step - 1, cfg):.1e}")
        if time.time() - last_ckpt > cfg.ckpt_every_s or step == end:
            checkpoint()
            last_ckpt = time.time()
    bar.close()
    return ema.model, {"loss_curve": curve, "finished": step >= cfg.steps}


def main(argv=None):
    cfg = parse_config(TrainConfig, PRESETS, argv)
    t0 = time.time()
    model, info = train(cfg)
    if not info["finished"]:
        print(f"stopped at step {cfg.stop_after}; continue with --resume")
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
                   images_per_s=round(len(records) / eval_s, 1), loss_curve=info["loss_curve"],
                   config=config_dict(cfg))
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
    main()
