"""Our CLIP: a small contrastive image-text model trained on the web corpus.

The paper's reward model stands on frozen CLIP embeddings, and CLIP similarity is the baseline
it must beat. We have no OpenAI CLIP, so we train one the way CLIP was trained (Radford et al.
2021): symmetric InfoNCE between image and caption embeddings of web pairs. Trained on our noisy
web captions it inherits their blind spots (counts), as CLIP inherits LAION's.
"""
import dataclasses
import os

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from . import seeds
from .corpus import web_corpus_batch
from .diffusion import to_model_space
from .text import TextEncoder, encode
from .train_loop import lr_at


@dataclasses.dataclass
class ClipConfig:
    resolution: int = 16  # image side in pixels
    width: int = 64  # image-encoder channels
    text_dim: int = 64  # text-encoder width
    embed_dim: int = 64  # joint embedding size


class ImageEncoder(nn.Module):
    """(B, 3, H, W) in [-1, 1] -> (B, dim): conv stages that halve the resolution, then a
    flatten of the 4x4 map (where the objects are matters for counting, so no global pool)."""

    def __init__(self, resolution: int, width: int, dim: int):
        super().__init__()
        layers, c, r = [], 3, resolution
        while r > 4:
            layers += [nn.Conv2d(c, width, 3, padding=1), nn.GroupNorm(8, width), nn.SiLU(),
                       nn.Conv2d(width, width, 3, padding=1, stride=2), nn.SiLU()]
            c, r = width, r // 2
        self.convs = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(width * 16, 2 * dim), nn.SiLU(),
                                  nn.Linear(2 * dim, dim))

    def forward(self, x):
        return self.head(self.convs(x))


class Clip(nn.Module):
    def __init__(self, cfg: ClipConfig):
        super().__init__()
        self.cfg = cfg
        self.image = ImageEncoder(cfg.resolution, cfg.width, cfg.embed_dim)
        self.text = TextEncoder(cfg.text_dim, layers=2, heads=4)
        self.text_proj = nn.Linear(cfg.text_dim, cfg.embed_dim)
        self.log_temp = nn.Parameter(torch.tensor(2.3))  # logit scale = exp(log_temp), ~10

    def embed_images(self, x):
        return F.normalize(self.image(x), dim=-1)  # (B, E)

    def embed_text(self, ids):
        return F.normalize(self.text_proj(self.text(ids)[2]), dim=-1)  # (B, E)

    def score(self, images_uint8, prompts: list[str]) -> torch.Tensor:
        """The CLIP-score baseline: cosine similarity of each image with its prompt, (B,)."""
        device = self.log_temp.device
        img = self.embed_images(to_model_space(images_uint8).to(device))
        return (img * self.embed_text(encode(prompts).to(device))).sum(-1)


def contrastive_loss(clip: Clip, x, ids) -> torch.Tensor:
    """Symmetric InfoNCE over the batch: each image's own caption is the positive."""
    logits = clip.log_temp.exp() * clip.embed_images(x) @ clip.embed_text(ids).T  # (B, B)
    target = torch.arange(len(x), device=x.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


class WebBatches(torch.utils.data.Dataset):
    """CLIP's batch of each step, fresh web examples drawn in Python: a Dataset, so that on a
    GPU machine DataLoader workers draw the next batches while the GPU trains on this one."""

    def __init__(self, noise, resolution: int, batch_size: int, seed: int, steps: int):
        self.noise, self.resolution, self.batch_size = noise, resolution, batch_size
        self.seed, self.steps = seed, steps

    def __len__(self):
        return self.steps

    def __getitem__(self, step: int):
        rng = seeds.clip_batch(self.seed, step)
        images, captions = web_corpus_batch(rng.integers(0, 10 ** 7, self.batch_size), self.noise,
                                            self.resolution, seeds.clip_corpus_seed(self.seed))
        return to_model_space(images), encode(captions)  # (B, 3, H, W), (B, L)


def train_clip(cfg: ClipConfig, noise, steps: int, batch_size: int, lr: float, seed: int,
               device) -> Clip:
    """Train CLIP on web-corpus pairs (fresh examples each step; the corpus is large)."""
    torch.manual_seed(seed)
    clip = Clip(cfg).to(device)
    opt = torch.optim.AdamW(clip.parameters(), lr=lr, weight_decay=0.01)
    workers = min(8, (os.cpu_count() or 1) - 1) if device.type == "cuda" else 0  # CPU: in-line
    batches = torch.utils.data.DataLoader(WebBatches(noise, cfg.resolution, batch_size, seed,
                                                     steps), batch_size=None, num_workers=workers)
    for step, (x, ids) in enumerate(tqdm(batches, desc="CLIP", dynamic_ncols=True)):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, lr, 0, steps)  # cosine decay, no warmup
        loss = contrastive_loss(clip, x.to(device), ids.to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return clip.eval()
