"""The text-to-image denoiser: a small conditional UNet plus its text encoder, in one module.

`TextToImage(x_t, t, ids)` predicts the noise epsilon in x_t. The network itself outputs epsilon
(`prediction` "epsilon") or v = sqrt(abar_t) eps - sqrt(1 - abar_t) x_0 (Salimans & Ho 2022), which
forward turns into epsilon, so every sampler and loss sees the same kind of prediction.
Residual blocks with GroupNorm see the time embedding (sinusoidal, plus the pooled text);
cross-attention to the text's token states sits at the low resolutions, where a query pixel
covers a whole object, as in Stable Diffusion's UNet.
"""
import dataclasses
import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from .config import UserError, require
from .diffusion import Scheduler
from .text import Attention, TextEncoder
from .world import RESOLUTIONS


@dataclasses.dataclass
class ModelConfig:
    """Size of the text-to-image model (saved in every checkpoint)."""
    resolution: int = 16  # image side in pixels
    channels: int = 32  # UNet width at full resolution
    channel_mults: str = "1,2,2"  # width multiplier per level; each level halves the resolution
    attn_from_level: int = 1  # cross-attention at this level and below (0 = full resolution)
    text_dim: int = 64  # text-encoder width
    text_layers: int = 2  # text-encoder transformer blocks
    heads: int = 4  # attention heads (text encoder and cross-attention)
    prediction: str = "epsilon"  # what the network outputs: epsilon, or v (returned as epsilon)

    def __post_init__(self):
        require(self.prediction in ("epsilon", "v"), f"--prediction must be epsilon or v, not "
                f"{self.prediction!r}")
        levels = len(self.channel_mults.split(","))
        require(self.resolution in RESOLUTIONS, f"--resolution must be one of {RESOLUTIONS}, "
                f"not {self.resolution}")
        require(self.resolution % 2 ** (levels - 1) == 0, f"--resolution {self.resolution} "
                f"cannot be halved {levels - 1} times (--channel_mults {self.channel_mults})")
        require(self.channels > 0 and self.channels % 8 == 0, f"--channels must be a positive "
                f"multiple of 8 (GroupNorm's 8 groups), not {self.channels}")
        require(self.heads > 0 and self.text_dim > 0 and self.text_dim % self.heads == 0,
                f"--text_dim {self.text_dim} must be a positive multiple of --heads {self.heads}")


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding of integer timesteps (B,) -> (B, dim), as in the Transformer/DDPM."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(half, device=t.device) / half)
    angles = t.float()[:, None] * freqs[None]  # (B, half)
    return torch.cat([angles.sin(), angles.cos()], dim=1)


class ResBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, t_dim: int):
        super().__init__()
        self.norm1, self.conv1 = nn.GroupNorm(8, c_in), nn.Conv2d(c_in, c_out, 3, padding=1)
        self.t_proj = nn.Linear(t_dim, c_out)
        self.norm2, self.conv2 = nn.GroupNorm(8, c_out), nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x, temb):
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.t_proj(temb)[:, :, None, None]  # (B, C, 1, 1) broadcast over pixels
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


class CrossAttention(nn.Module):
    """Every pixel attends to the prompt's token states (residual)."""

    def __init__(self, channels: int, text_dim: int, heads: int):
        super().__init__()
        self.norm = nn.GroupNorm(8, channels)
        self.attn = Attention(channels, text_dim, heads)

    def forward(self, x, text, text_mask):
        q = rearrange(self.norm(x), "b c h w -> b (h w) c")  # every pixel is a query token
        return x + rearrange(self.attn(q, text, text_mask), "b (h w) c -> b c h w", h=x.shape[2])


class Level(nn.Module):
    """Two residual blocks at one resolution, each followed by cross-attention if enabled."""

    def __init__(self, c_in: int, c_out: int, t_dim: int, text_dim: int, heads: int, attn: bool):
        super().__init__()
        self.res = nn.ModuleList([ResBlock(c_in, c_out, t_dim), ResBlock(c_out, c_out, t_dim)])
        self.attn = nn.ModuleList(CrossAttention(c_out, text_dim, heads) for _ in range(2)) \
            if attn else None

    def forward(self, x, temb, text, text_mask):
        for i, res in enumerate(self.res):
            x = res(x, temb)
            if self.attn is not None:
                x = self.attn[i](x, text, text_mask)
        return x


class TextToImage(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        chs = [cfg.channels * int(m) for m in cfg.channel_mults.split(",")]
        t_dim = 4 * cfg.channels
        self.text = TextEncoder(cfg.text_dim, cfg.text_layers, cfg.heads)
        self.t_mlp = nn.Sequential(nn.Linear(cfg.channels, t_dim), nn.SiLU(),
                                   nn.Linear(t_dim, t_dim))
        self.text_to_t = nn.Linear(cfg.text_dim, t_dim)  # pooled prompt joins the time embedding
        self.conv_in = nn.Conv2d(3, chs[0], 3, padding=1)
        args = dict(t_dim=t_dim, text_dim=cfg.text_dim, heads=cfg.heads)
        self.down, self.up = nn.ModuleList(), nn.ModuleList()
        c_prev = chs[0]
        for i, c in enumerate(chs):
            self.down.append(Level(c_prev, c, attn=i >= cfg.attn_from_level, **args))
            c_prev = c
        self.mid = Level(c_prev, c_prev, attn=True, **args)
        for i, c in reversed(list(enumerate(chs))):
            self.up.append(Level(c_prev + c, c, attn=i >= cfg.attn_from_level, **args))
            c_prev = c
        self.norm_out, self.conv_out = nn.GroupNorm(8, c_prev), nn.Conv2d(c_prev, 3, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)  # start as "predict zero noise": stable first steps
        nn.init.zeros_(self.conv_out.bias)
        # abar_t, for the v -> epsilon conversion; not saved (the schedule is fixed)
        self.register_buffer("abar", Scheduler().alphas_cumprod, persistent=False)  # (T,)

    def forward(self, x, t, ids):
        """x: (B, 3, H, W) noisy images, t: (B,) timesteps, ids: (B, L) token ids
        -> predicted noise eps (B, 3, H, W). With prediction "v" the network's output v gives
        eps = sqrt(abar_t) v + sqrt(1 - abar_t) x_t: at high noise, where eps is nearly x_t
        itself, the skip term carries x_t and the network only predicts the image's part."""
        text, text_mask, pooled = self.text(ids)  # (B, L, D), (B, L), (B, D)
        temb = self.t_mlp(timestep_embedding(t, self.cfg.channels)) + self.text_to_t(pooled)
        h = self.conv_in(x)
        skips = []
        for i, level in enumerate(self.down):
            h = level(h, temb, text, text_mask)
            skips.append(h)
            if i < len(self.down) - 1:
                h = F.avg_pool2d(h, 2)  # (B, C, H/2, W/2)
        h = self.mid(h, temb, text, text_mask)
        for i, level in enumerate(self.up):
            if i > 0:
                h = F.interpolate(h, scale_factor=2, mode="nearest")
            h = level(torch.cat([h, skips.pop()], dim=1), temb, text, text_mask)
        out = self.conv_out(F.silu(self.norm_out(h)))  # (B, 3, H, W)
        if self.cfg.prediction == "epsilon":
            return out
        abar = self.abar[t].view(-1, 1, 1, 1)  # (B, 1, 1, 1)
        return abar.sqrt() * out + (1 - abar).sqrt() * x


class PretrainedBelowCut(nn.Module):
    """Stage 3's model: the fine-tuned denoiser at t >= cut and the pretrained one below.
    The model's own samples teach only the high-noise steps (t >= finetune's model_t_min, at
    or above this cut; train_loop.step_loss), which decide what is drawn (how many shapes,
    where, which colour); the lowest-noise steps draw edges and corners, and no feedback is
    about them. Yet the shared weights move there too, although only D_pre teaches them, and
    the fine-tuned model's low-noise steps draw shapes halfway between two; the pretrained
    model draws them as pretraining left them. Same call as TextToImage; a sampling step has
    one t, so one of the two models runs."""

    def __init__(self, tuned: TextToImage, pretrained: TextToImage, cut: int):
        super().__init__()
        self.tuned, self.pretrained, self.cut = tuned, pretrained, cut
        self.cfg = tuned.cfg

    def forward(self, x, t, ids):
        """x: (B, 3, H, W), t: (B,), ids: (B, L) -> eps (B, 3, H, W), each row from the model
        that owns its timestep."""
        high = t >= self.cut  # (B,)
        if high.all() or not high.any():
            return (self.tuned if high.all() else self.pretrained)(x, t, ids)
        eps = torch.empty_like(x)
        eps[high] = self.tuned(x[high], t[high], ids[high])
        eps[~high] = self.pretrained(x[~high], t[~high], ids[~high])
        return eps


def model_config(cfg) -> ModelConfig:
    """The ModelConfig part of a larger config (stage 0's TrainConfig is one)."""
    return ModelConfig(**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(ModelConfig)})


def load_model(path, made_by: str = "python train_unet.py",
               weights: str = "ema") -> tuple[nn.Module, dict]:
    """A trained model from a checkpoint (its EMA weights by default) and the stage-0 config it
    carries (stage 3 reads its web corpus from it), with a one-line error naming the command
    that makes the file when it is missing, corrupt, of another kind, or holds weights of
    another size than its model_config says. A stage-3 checkpoint that names the pretrained
    model and a cut comes back as PretrainedBelowCut (the pretrained model read from its path)."""
    from .files import load_checkpoint, load_weights
    state = load_checkpoint(path, made_by)
    if "model_config" not in state:
        raise UserError(f"{path} is not a text-to-image checkpoint (a ckpt.pt of "
                        f"train_unet.py or finetune.py); run `{made_by}` to make one")
    model = TextToImage(ModelConfig(**state["model_config"]))
    load_weights(model, state[weights], path, f"run `{made_by}` to make it again")
    below = state.get("pretrained_below")  # a stage-3 model: {"ckpt": stage 0's, "cut": t}
    if below:
        pretrained, _ = load_model(below["ckpt"], "python train_unet.py")
        model = PretrainedBelowCut(model, pretrained, below["cut"])
    return model.eval(), state["config"]
