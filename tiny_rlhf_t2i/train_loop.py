"""The denoiser's training loop, shared by stage 0 (pretraining) and stage 3 (Eq. 2).

As nanoGPT fine-tunes with the very loop it pretrains with, the two stages differ only in the
batch a step draws (`Batch`): stage 0 draws web examples, every weight 1; stage 3 draws half of
the batch from D_model, weighted by the reward, and half from D_pre (the same web corpus, built
by the same `web_batch`), weighted by beta. The schedule, AdamW, gradient clipping, EMA, loss
curve, timed atomic checkpoints and exact resume live here once.
"""
import dataclasses
import math
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm import tqdm

from . import seeds
from .config import check_range
from .diffusion import EMA, Scheduler, to_model_space
from .files import load_checkpoint, save_checkpoint
from .losses import finetune_loss, weighted_mse
from .text import NULL_IDS, encode
from .world import CaptionNoise, web_corpus_batch


@dataclasses.dataclass
class LoopConfig:
    """The optimizer, schedule and checkpointing of a training run (each stage sets defaults)."""
    seed: int = 0  # seeds the weights, the batches and the noise (seeds.py)
    steps: int = 1000  # optimizer steps
    batch_size: int = 128  # images per step
    lr: float = 1e-3  # peak AdamW learning rate
    warmup_steps: int = 100  # linear warmup from 0 (0: start at the peak)
    min_lr_frac: float = 0.0  # the cosine decay ends at lr * min_lr_frac
    weight_decay: float = 0.0  # AdamW weight decay
    ema_decay: float = 0.999  # EMA of the weights; the EMA model is the one that samples
    ckpt_every_s: float = 300.0  # seconds between checkpoints (and one at the end)
    stop_after: int = 0  # stop with a checkpoint after this many steps (0: run to the end)
    resume: bool = False  # continue from the run's checkpoint exactly where it stopped
    bf16: bool = False  # bf16 autocast (CUDA only; fp32 on CPU is the safe default)

    def __post_init__(self):
        check_range(self, "steps batch_size", 1)
        check_range(self, "warmup_steps stop_after weight_decay ckpt_every_s", 0)
        check_range(self, "lr", 0, 1, open_lo=True)
        check_range(self, "min_lr_frac", 0, 1)
        check_range(self, "ema_decay", 0, 1, open_hi=True)


def lr_at(step: int, peak: float, warmup_steps: int, total_steps: int,
          min_frac: float = 0.0) -> float:
    """The one schedule of every trainer: linear warmup to `peak`, then cosine decay to
    peak * min_frac at the last step (decayed to near zero, a model ends at its plateau)."""
    if step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return peak * (min_frac + (1 - min_frac) * 0.5 * (1 + math.cos(math.pi * progress)))


# ----------------------------------------------------------------------------- batches
@dataclasses.dataclass
class Batch:
    """One step's data: rows [0, n_model) from D_model, the rest from D_pre (Eq. 2)."""
    x0: torch.Tensor  # (B, 3, H, W) clean images in [-1, 1]
    ids: torch.Tensor  # (B, L) caption token ids (NULL for dropped captions)
    weights: torch.Tensor  # (B,) per-sample weights: rewards, then beta (stage 0: all 1)
    n_model: int = 0  # how many leading rows come from D_model
    model_t_min: int = 0  # D_model rows are noised at timesteps in [model_t_min, T) only


def caption_noise(pre: dict) -> CaptionNoise:
    """The caption noise of a stage-0 config; `captions: clean` keeps every stated count true."""
    noise = CaptionNoise(**{f.name: pre[f.name] for f in dataclasses.fields(CaptionNoise)})
    if pre.get("captions", "web") == "clean":
        noise = dataclasses.replace(noise, p_undercount=0.0, p_vague_count=0.0)
    return noise


def web_batch(rng: np.random.Generator, n: int, pre: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """n examples of the web corpus that stage 0 trained on (pre: its config), drawn with rng.
    Stage 0's batches and stage 3's D_pre both come from here. Returns (n, 3, H, W), (n, L)."""
    images, captions = web_corpus_batch(rng.integers(0, pre["corpus_size"], n), caption_noise(pre),
                                        pre["resolution"], pre["corpus_seed"])
    return to_model_space(images), encode(captions)


def drop_captions(ids: torch.Tensor, rng: np.random.Generator, p_uncond: float) -> torch.Tensor:
    """Classifier-free guidance's condition dropout: each caption becomes the null caption with
    probability p_uncond, in place. ids: (B, L)."""
    ids[torch.from_numpy(rng.random(len(ids)) < p_uncond)] = NULL_IDS
    return ids


# ----------------------------------------------------------------------------- the loop
def step_loss(model, scheduler: Scheduler, batch: Batch, gen: torch.Generator, mse) -> torch.Tensor:
    """Eq. 2 on one batch: noise every image at a random timestep, predict the noise, weight.

    With batch.model_t_min > 0 the D_model rows' timesteps are drawn from [model_t_min, T):
    Eq. 2's -log p_theta(x | z) is a sum of one denoising term per timestep, and this keeps
    only the high-noise terms for the model's own samples. Those terms decide *what* is drawn
    (how many shapes, where, which colour: a count is settled early in the chain); the low-noise
    terms decide *how* edges and corners look, and are learned from D_pre's clean renders only,
    so the soft shapes of the model's own samples are not reinforced."""
    x0 = batch.x0
    T = scheduler.num_train_timesteps
    t = torch.randint(0, T, (len(x0),), generator=gen)  # (B,)
    noise = torch.randn(x0.shape, generator=gen)  # (B, 3, H, W), drawn on the CPU: any device
    if batch.model_t_min and batch.n_model:  # drawn last: with 0 the stream is unchanged
        t[:batch.n_model] = torch.randint(batch.model_t_min, T, (batch.n_model,), generator=gen)
    t, noise = t.to(x0.device), noise.to(x0.device)
    eps_hat = model(scheduler.add_noise(x0, noise, t), t, batch.ids)
    return finetune_loss(eps_hat, noise, batch.weights, batch.n_model, mse)


def train(model, cfg: LoopConfig, make_batch: Callable[[int], Batch], ckpt_path, desc: str,
          carry: dict, mse=weighted_mse):
    """Train `model` for cfg.steps steps on make_batch(step); checkpoint to ckpt_path (with
    `carry`: the model config and stage 0's config, so the checkpoint can be loaded and tuned
    again). With cfg.resume it continues where ckpt_path stopped; the batches and noise are
    fixed by (seed, step), so a resumed run equals an uninterrupted one.
    Returns (EMA model, loss curve [(step, mean loss)], finished)."""
    device = next(model.parameters()).device
    ema = EMA(model, cfg.ema_decay)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler, step, curve, running = Scheduler(), 0, [], []
    ckpt_path = Path(ckpt_path)
    if cfg.resume and ckpt_path.exists():
        state = load_checkpoint(ckpt_path, "the same command without --resume")
        model.load_state_dict(state["model"])
        ema.model.load_state_dict(state["ema"])
        opt.load_state_dict(state["opt"])
        step, curve, running = state["step"], state["loss_curve"], state.get("running", [])
        print(f"resumed {ckpt_path} at step {step}")

    def checkpoint():
        save_checkpoint(ckpt_path, {"model": model.state_dict(), "ema": ema.model.state_dict(),
                                    "opt": opt.state_dict(), "step": step, "loss_curve": curve,
                                    "running": running, **carry})

    end = min(cfg.steps, cfg.stop_after or cfg.steps)
    amp = cfg.bf16 and device.type == "cuda"
    last_ckpt = time.time()
    bar = tqdm(total=cfg.steps, initial=step, desc=desc, dynamic_ncols=True)
    model.train()
    while step < end:
        lr = lr_at(step, cfg.lr, cfg.warmup_steps, cfg.steps, cfg.min_lr_frac)
        for group in opt.param_groups:
            group["lr"] = lr
        batch = make_batch(step)
        with torch.autocast(device.type, torch.bfloat16, enabled=amp):
            loss = step_loss(model, scheduler, batch, seeds.step_noise(cfg.seed, step), mse)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ema.update(model)
        step += 1
        running.append(loss.item())
        if step % 50 == 0 or step == cfg.steps:  # one curve point per 50 steps, and the last
            curve.append((step, float(np.mean(running))))
            running = []
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.4f}", lr=f"{lr:.1e}")
        if time.time() - last_ckpt > cfg.ckpt_every_s or step == end:
            checkpoint()
            last_ckpt = time.time()
    bar.close()
    return ema.model.eval(), curve, step >= cfg.steps
