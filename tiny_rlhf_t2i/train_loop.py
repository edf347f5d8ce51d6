"""The denoiser's training loop, shared by stage 0 (pretraining) and stage 3 (Eq. 2).

As nanoGPT fine-tunes with the very loop it pretrains with, the two stages differ only in the
batch a step draws (`Batch`): stage 0 draws web examples, every weight 1; stage 3 draws half of
the batch from D_model, weighted by the reward, and half from D_pre (the same web corpus,
corpus.WebCorpus), weighted by beta. The schedule, AdamW, gradient clipping, EMA, loss curve,
timed atomic checkpoints and exact resume live here once, and so does the speed: a step that
never waits on the GPU, DDP under torchrun (distributed.py), and opt-in bf16 autocast and
torch.compile (no preset uses them: neither paid, docs/results.md; kept for GPU experiments).
"""
import dataclasses
import math
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm import tqdm

from . import distributed, seeds
from .config import ConfigError, UserError, check_range
from .diffusion import EMA, Scheduler
from .files import load_checkpoint, load_weights, save_checkpoint
from .losses import anchor_loss, finetune_loss, min_snr_weights, weighted_mse
from .text import NULL_IDS
from .unet import ModelConfig


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
    bf16: bool = False  # bf16 autocast (no preset: no faster on a CPU or the H100, docs/results.md)
    compile: bool = False  # torch.compile the denoiser for training (no preset uses it)

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
    beta_below_cut: float | None = None  # D_pre rows' weight at t < model_t_min (None: as given)
    min_snr_gamma: float = 0.0  # every row's weight times losses.min_snr_weights (0: off)

    def rows(self, rank: int, world: int) -> torch.Tensor:
        """The rows process `rank` of `world` trains on: its share of the D_model rows and its
        share of the D_pre rows, so that the mean of the ranks' Eq. 2 losses (each half
        averaged over its own rows) is the whole batch's."""
        n_pre = len(self.x0) - self.n_model
        if self.n_model % world or n_pre % world:
            raise ConfigError(f"a batch of {self.n_model} D_model and {n_pre} D_pre rows does "
                              f"not split evenly over {world} processes; choose a --batch_size "
                              f"whose halves are multiples of {world}")
        model_rows = torch.arange(self.n_model).view(world, -1)[rank]
        pre_rows = self.n_model + torch.arange(n_pre).view(world, -1)[rank]
        return torch.cat([model_rows, pre_rows])  # (B / world,)


@dataclasses.dataclass
class Anchor:
    """Stage 3's KL anchor (losses.anchor_loss): the frozen pretrained denoiser, whose noise
    prediction on the D_model rows the fine-tuned model is kept close to."""
    model: torch.nn.Module  # the pretrained model, frozen (requires_grad False)
    weight: float  # lambda, the anchor's weight beside Eq. 2
    step_weights: torch.Tensor  # (T,) a(t): losses.kl_step_weights or all ones


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Copy a CPU tensor to the device without waiting for the GPU: a plain copy from pageable
    memory waits for every queued kernel, and then the next step's CPU work (the batch, the
    noise) no longer overlaps this step's GPU work."""
    if device.type != "cuda":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


def drop_captions(ids: torch.Tensor, rng: np.random.Generator, p_uncond: float) -> torch.Tensor:
    """Classifier-free guidance's condition dropout: each caption becomes the null caption with
    probability p_uncond, in place. ids: (B, L) on the CPU."""
    ids[torch.from_numpy(rng.random(len(ids)) < p_uncond)] = NULL_IDS
    return ids


# ----------------------------------------------------------------------------- the loop
def step_loss(model, scheduler: Scheduler, batch: Batch, gen: torch.Generator, mse,
              anchor: Anchor | None = None) -> torch.Tensor:
    """Eq. 2 on one batch: noise every image at a random timestep, predict the noise, weight.

    With batch.model_t_min > 0 the D_model rows' timesteps are drawn from [model_t_min, T):
    Eq. 2's -log p_theta(x | z) is a sum of one denoising term per timestep, and this keeps
    only the high-noise terms for the model's own samples. Those terms decide *what* is drawn
    (how many shapes, where, which colour: a count is settled early in the chain); the low-noise
    terms decide *how* edges and corners look, and are learned from D_pre's clean renders only,
    so the soft shapes of the model's own samples are not reinforced. Below the cut nothing but
    D_pre teaches, so there its rows take batch.beta_below_cut in place of beta (1: the
    low-noise steps go on being pretrained as they were, instead of at a tenth of the weight
    while the shared weights move).

    With an anchor, the D_model rows also pay lambda * anchor_loss against the frozen
    pretrained model's prediction at the same noisy input: one more forward pass (no backward)
    on those rows.

    Under torchrun the noise is drawn for the whole batch and each process keeps its rows."""
    x0, ids, weights, n_model = batch.x0, batch.ids, batch.weights, batch.n_model
    T = scheduler.num_train_timesteps
    t = torch.randint(0, T, (len(x0),), generator=gen)  # (B,)
    noise = torch.randn(x0.shape, generator=gen)  # (B, 3, H, W), drawn on the CPU: any device
    if batch.model_t_min and n_model:  # drawn last: with 0 the stream is unchanged
        t[:n_model] = torch.randint(batch.model_t_min, T, (n_model,), generator=gen)
    if batch.beta_below_cut is not None and batch.model_t_min and n_model:
        weights = weights.clone()  # (B,)
        weights[n_model:][t[n_model:] < batch.model_t_min] = batch.beta_below_cut
    if batch.min_snr_gamma:
        weights = weights * min_snr_weights(scheduler.alphas_cumprod[t], batch.min_snr_gamma)
    rank, world = distributed.rank_world()
    if world > 1:  # this process's share of the rows
        rows = batch.rows(rank, world)
        t, noise, ids, weights = t[rows], noise[rows], ids[rows], weights[rows]
        x0, n_model = x0[rows.to(x0.device)], n_model // world
    t, noise, ids = (to_device(v, x0.device) for v in (t, noise, ids))
    x_t = scheduler.add_noise(x0, noise, t)  # (B, 3, H, W)
    eps_hat = model(x_t, t, ids)  # (B, 3, H, W)
    loss = finetune_loss(eps_hat, noise, to_device(weights, x0.device), n_model, mse)
    if anchor is not None and anchor.weight and n_model:
        m = slice(0, n_model)  # the D_model rows
        with torch.no_grad():
            eps_pre = anchor.model(x_t[m], t[m], ids[m])  # (n_model, 3, H, W)
        a_t = anchor.step_weights.to(x0.device)[t[m]]  # (n_model,)
        loss = loss + anchor.weight * anchor_loss(eps_hat[m], eps_pre, a_t)
    return loss


def train(model, cfg: LoopConfig, make_batch: Callable[[int], Batch], ckpt_path, desc: str,
          carry: dict, mse=weighted_mse, anchor: Anchor | None = None):
    """Train `model` for cfg.steps steps on make_batch(step) (a Batch: images on the model's
    device, ids and weights on the CPU); checkpoint to ckpt_path (with `carry`: the model config
    and stage 0's config, so the checkpoint can be loaded and tuned again). With cfg.resume it
    continues where ckpt_path stopped; the batches and noise are fixed by (seed, step), so a
    resumed run equals an uninterrupted one. `anchor`: stage 3's KL anchor (step_loss). Under
    torchrun each process trains on its rows of every batch and rank 0 alone writes the
    checkpoint.
    Returns (EMA model, loss curve [(step, mean loss)], finished)."""
    device = next(model.parameters()).device
    ema = EMA(model, cfg.ema_decay)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler, step, curve, running = Scheduler(), 0, [], []
    ckpt_path = Path(ckpt_path)
    if cfg.resume and ckpt_path.exists():
        state = load_checkpoint(ckpt_path, "the same command without --resume")
        fix = (f"resume with the settings it was made with, or delete {ckpt_path.parent} or "
               f"choose another --out_dir to start afresh")
        made, now = state.get("model_config"), carry.get("model_config")
        if made:  # a field newer than the checkpoint has its default there
            made = dataclasses.asdict(ModelConfig(**made))
        if made and now and made != now:  # also a change that keeps every shape (--heads)
            changed = ", ".join(f"--{k} {made.get(k)}, not {now.get(k)}"
                                for k in {**made, **now} if made.get(k) != now.get(k))
            raise UserError(f"{ckpt_path} was made with other model settings ({changed}); {fix}")
        load_weights(model, state["model"], ckpt_path, fix)
        load_weights(ema.model, state["ema"], ckpt_path, fix)
        opt.load_state_dict(state["opt"])
        step, curve, running = state["step"], state["loss_curve"], state.get("running", [])
        print(f"resumed {ckpt_path} at step {step}")
    # What trains: compiled (its kernels fused, once, at the first step), then under torchrun
    # wrapped in DDP, as nanoGPT does; `model` stays the plain module that is saved.
    net = distributed.wrap(torch.compile(model) if cfg.compile else model)
    pending = []  # this step's and earlier losses, still on the device: read every 50 steps

    def checkpoint():
        running.extend(torch.stack(pending).tolist() if pending else [])
        pending.clear()
        if distributed.is_main():
            save_checkpoint(ckpt_path, {"model": model.state_dict(), "ema": ema.model.state_dict(),
                                        "opt": opt.state_dict(), "step": step, "loss_curve": curve,
                                        "running": running, **carry})

    end = min(cfg.steps, cfg.stop_after or cfg.steps)
    last_ckpt = time.time()
    model.train()
    # closed however the loop ends: a bar left open would glue an error line to its last
    # draw and be drawn again below it at exit, so the error would not be the last line
    with tqdm(total=cfg.steps, initial=step, desc=desc, dynamic_ncols=True,
              disable=not distributed.is_main()) as bar:
        while step < end:
            lr = lr_at(step, cfg.lr, cfg.warmup_steps, cfg.steps, cfg.min_lr_frac)
            for group in opt.param_groups:
                group["lr"] = lr
            batch = make_batch(step)
            with torch.autocast(device.type, torch.bfloat16, enabled=cfg.bf16):
                loss = step_loss(net, scheduler, batch, seeds.step_noise(cfg.seed, step), mse,
                                 anchor)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            ema.update(model)
            step += 1
            pending.append(distributed.mean(loss.detach()))  # the whole batch's loss
            if step % 50 == 0 or step == cfg.steps:  # one curve point per 50 steps, and the last
                running.extend(torch.stack(pending).tolist())  # the one wait for the GPU
                pending.clear()
                curve.append((step, float(np.mean(running))))
                bar.set_postfix(loss=f"{curve[-1][1]:.4f}", lr=f"{lr:.1e}")
                running = []
            bar.update(1)
            if time.time() - last_ckpt > cfg.ckpt_every_s or step == end:
                checkpoint()
                last_ckpt = time.time()
    return ema.model.eval(), curve, step >= cfg.steps
