"""Diffusion: the noise schedule, `add_noise`, DPM-Solver++(2M) (every stage's sampler) and
DDIM/DDPM sampling with classifier-free guidance, and the EMA of the weights. Names follow
diffusers' schedulers. The training loss is in losses.py (Eq. 2) and train_loop.py
(`step_loss`).

Notation (Ho et al. 2020): alphas_cumprod[t] = abar_t, x_t = sqrt(abar_t) x_0 + sqrt(1-abar_t) eps.
"""
import copy
import math

import torch

from . import seeds
from .text import encode

NUM_TRAIN_TIMESTEPS = 1000


class Scheduler:
    """Cosine schedule (Nichol & Dhariwal 2021): better than linear for tiny images, whose
    content a linear schedule destroys within the first few hundred steps."""

    def __init__(self, num_train_timesteps: int = NUM_TRAIN_TIMESTEPS):
        self.num_train_timesteps = T = num_train_timesteps
        s = 0.008
        steps = torch.arange(T + 1, dtype=torch.float64)
        f = torch.cos((steps / T + s) / (1 + s) * math.pi / 2) ** 2
        betas = (1 - f[1:] / f[:-1]).clamp(max=0.999)
        self.alphas_cumprod = torch.cumprod(1 - betas, 0).float()  # (T,)
        self.timesteps = torch.arange(T - 1, -1, -1)

    def add_noise(self, original_samples, noise, timesteps):
        """q(x_t | x_0): sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps."""
        abar = self.alphas_cumprod.to(original_samples.device)[timesteps].view(-1, 1, 1, 1)
        return abar.sqrt() * original_samples + (1 - abar).sqrt() * noise

    def set_timesteps(self, num_inference_steps: int):
        """Evenly spaced timesteps from T-1 down to 0 (`self.timesteps`)."""
        T = self.num_train_timesteps
        self.timesteps = torch.linspace(T - 1, 0, num_inference_steps).round().long()

    def step(self, model_output, timestep: int, prev_timestep: int, sample, eta: float = 0.0,
             noise=None):
        """One DDIM update x_t -> x_prev (Song et al. 2021, Eq. 12). eta=0: deterministic DDIM;
        eta=1 on every timestep: exactly the DDPM ancestral sampler (posterior variance beta~_t),
        with `noise` (shaped like sample) the fresh Gaussian noise of that step.
        Returns (prev_sample, pred_original_sample), the latter clipped to [-1, 1] as images are."""
        abar_t = self.alphas_cumprod[timestep]
        abar_prev = self.alphas_cumprod[prev_timestep] if prev_timestep >= 0 else torch.tensor(1.0)
        x0 = ((sample - (1 - abar_t).sqrt() * model_output) / abar_t.sqrt()).clamp(-1, 1)
        model_output = (sample - abar_t.sqrt() * x0) / (1 - abar_t).sqrt()  # eps of the clipped x0
        sigma = eta * ((1 - abar_prev) / (1 - abar_t) * (1 - abar_t / abar_prev)).sqrt()
        direction = (1 - abar_prev - sigma ** 2).clamp(min=0).sqrt() * model_output
        prev = abar_prev.sqrt() * x0 + direction
        if eta > 0:
            prev = prev + sigma * noise
        return prev, x0

    def step_2m(self, model_output, timestep: int, prev_timestep: int, sample, last=None):
        """One DPM-Solver++(2M) update x_t -> x_prev (Lu et al. 2022b, Eq. 11 and Alg. 2): with
        lambda = log(sqrt(abar) / sqrt(1 - abar)) and h = lambda_prev - lambda_t,
            x_prev = sqrt((1 - abar_prev) / (1 - abar_t)) x_t + sqrt(abar_prev) (1 - e^-h) D,
        D = x0 on the first step (exactly DDIM), later D = (1 + 1/2r) x0 - (1/2r) x0_last with
        r = h_last / h: x0 extrapolated through the last step's, second order in h. The step
        into t = 0 stays first order (D = x0): evenly spaced timesteps make it the longest in
        lambda, where extrapolating overshoots; the step to t = -1 returns x0, as DDIM's does.
        last: (x0, h) of the previous step, or None. Returns (prev_sample, (x0, h))."""
        abar_t = self.alphas_cumprod[timestep]
        x0 = ((sample - (1 - abar_t).sqrt() * model_output) / abar_t.sqrt()).clamp(-1, 1)
        if prev_timestep < 0:
            return x0, None
        abar_prev = self.alphas_cumprod[prev_timestep]
        h = 0.5 * (torch.log(abar_prev / (1 - abar_prev)) - torch.log(abar_t / (1 - abar_t)))
        d = x0 if last is None or prev_timestep == 0 else x0 + (x0 - last[0]) * h / (2 * last[1])
        prev = (((1 - abar_prev) / (1 - abar_t)).sqrt() * sample
                + abar_prev.sqrt() * (1 - torch.exp(-h)) * d)
        return prev, (x0, h)


def guided_eps(model, x, t, ids, null_ids, guidance_scale: float):
    """Classifier-free guidance (Ho & Salimans 2022): eps_u + w (eps_c - eps_u), in one
    batched call."""
    if guidance_scale == 1.0:
        return model(x, t, ids)
    eps = model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([ids, null_ids]))
    cond, uncond = eps.chunk(2)
    return uncond + guidance_scale * (cond - uncond)


def per_sample_noise(generators, shape) -> torch.Tensor:
    """(B, *shape) noise on the CPU, row b from generators[b]: a sample's noise never depends on
    its batch or device."""
    return torch.stack([torch.randn(shape, generator=g) for g in generators])


@torch.no_grad()
def sample(model, prompts: list[str], sample_seeds: list[int], num_inference_steps: int = 15,
           guidance_scale: float = 3.0, eta: float = 0.0, batch_size: int | None = None,
           solver: str = "dpm++2m"):
    """Text -> images in [-1, 1], (B, 3, H, W). solver "dpm++2m" (every stage's sampler):
    DPM-Solver++(2M) (`Scheduler.step_2m`), second order: fewer steps than DDIM; "ddim": eta=0 is
    DDIM, eta=1 with num_inference_steps=1000 is DDPM. Same (prompt, seed) -> same image,
    whatever the batch (to the last bit but in a batch of a few images, where the CPU's kernels
    round differently). batch_size None: 64 on a CPU (with guidance, 128 rows a pass: their
    activations stay in the cores' caches, which larger batches overflow; benchmarks/README.md),
    128 on a GPU."""
    if len(prompts) != len(sample_seeds):
        raise ValueError(f"{len(prompts)} prompts but {len(sample_seeds)} seeds")
    if solver not in ("ddim", "dpm++2m"):
        raise ValueError(f"solver must be ddim or dpm++2m, not {solver!r}")
    if eta > 0 and solver != "ddim":
        raise ValueError("eta > 0 (stochastic sampling) needs solver='ddim'")
    model.eval()
    device = next(model.parameters()).device
    batch_size = batch_size or (64 if device.type == "cpu" else 128)
    res = model.cfg.resolution
    scheduler = Scheduler()
    scheduler.set_timesteps(num_inference_steps)
    out = []
    for i in range(0, len(prompts), batch_size):
        ids = encode(prompts[i:i + batch_size]).to(device)
        null = encode([""] * len(ids)).to(device)
        batch_seeds = sample_seeds[i:i + batch_size]
        x = per_sample_noise([seeds.initial_noise(s) for s in batch_seeds], (3, res, res))
        x = x.to(device)  # x_T: (B, 3, H, W)
        gens = [seeds.sampler_noise(s) for s in batch_seeds] if eta > 0 else None
        steps, last = scheduler.timesteps.tolist(), None
        for t, prev_t in zip(steps, steps[1:] + [-1]):
            tt = torch.full((len(x),), t, device=device, dtype=torch.long)
            eps = guided_eps(model, x, tt, ids, null, guidance_scale)
            if solver == "dpm++2m":
                x, last = scheduler.step_2m(eps, t, prev_t, x, last)
                continue
            noise = per_sample_noise(gens, x.shape[1:]).to(device) if gens else None
            x, _ = scheduler.step(eps, t, prev_t, x, eta=eta, noise=noise)
        out.append(x.clamp(-1, 1).cpu())
    return torch.cat(out)


def to_uint8(images: torch.Tensor):
    """(B, 3, H, W) in [-1, 1] -> numpy (B, H, W, 3) uint8."""
    return ((images.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()


def to_model_space(images) -> torch.Tensor:
    """(B, H, W, 3) uint8, numpy or torch -> (B, 3, H, W) float in [-1, 1], on the same device
    (channels_last in memory: a view of the channels-last pixels)."""
    return torch.as_tensor(images).permute(0, 3, 1, 2).float() / 127.5 - 1


class EMA:
    """Exponential moving average of the weights; the EMA copy is the one that samples."""

    def __init__(self, model, decay: float):
        self.decay = decay
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model):
        # one fused kernel for every tensor on a GPU (a loop of lerp_ calls is hundreds of tiny
        # launches per step); on the CPU, the same lerp per tensor
        torch._foreach_lerp_(list(self.model.parameters()),
                             [p.detach() for p in model.parameters()], 1 - self.decay)
