"""Fidelity and diversity: our FID, on features of a small fixed network trained on clean renders.

FID (Heusel et al. 2017) compares Inception features of generated and real images. We have no
Inception, so the feature network is a small CNN trained once to name the attributes of clean
renders (shape, color, count, background); its penultimate layer is the feature space. It is
trained on clean renders only and then frozen and cached, so every model is measured with the
same ruler. FD = |mu_a - mu_b|^2 + tr(C_a + C_b - 2 (C_a C_b)^(1/2)).

`shape_fit` measures shape fidelity without the judge's acceptance thresholds: how well each
blob matches the best clean render of any shape at any on-grid place and size (exactly 1 on
every clean render). A reward trained on the judge's labels can learn to please the judge with
in-between shapes; it cannot move this number without drawing cleaner shapes.
"""
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from .diffusion import to_model_space
from .files import load_checkpoint, save_checkpoint
from .judge import silhouette_fits
from .scenes import render, sample_scene
from .world import BACKGROUNDS, COLORS, MAX_COUNT, SHAPES, Spec, parse

FEATURES = 64  # feature dimension


class FeatureNet(nn.Module):
    """(B, 3, H, W) -> features (B, 64), and logits for the four attributes."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1), nn.SiLU(), nn.Conv2d(32, 64, 3, stride=2, padding=1),
            nn.SiLU(), nn.Conv2d(64, 64, 3, padding=1), nn.SiLU(),
            nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(64 * 16, FEATURES), nn.SiLU())
        self.heads = nn.ModuleList(nn.Linear(FEATURES, n) for n in
                                   (len(SHAPES), len(COLORS), MAX_COUNT, len(BACKGROUNDS)))

    def forward(self, x):
        f = self.body(x)
        return f, [h(f) for h in self.heads]


def _clean_batch(rng, n: int, resolution: int):
    scenes = [sample_scene(Spec(str(rng.choice(SHAPES)), int(rng.integers(1, MAX_COUNT + 1))), rng)
              for _ in range(n)]
    x = to_model_space(np.stack([render(s, resolution) for s in scenes]))
    y = [torch.tensor([SHAPES.index(s.shape) for s in scenes]),
         torch.tensor([list(COLORS).index(s.color) for s in scenes]),
         torch.tensor([len(s.objects) - 1 for s in scenes]),
         torch.tensor([list(BACKGROUNDS).index(s.background) for s in scenes])]
    return x, y


def feature_net(resolution: int, cache_dir="runs/fd", steps: int = 600) -> FeatureNet:
    """The cached feature network for a resolution (trained on first use, then loaded)."""
    path = Path(cache_dir) / f"feature_net_{resolution}px_{steps}steps.pt"
    torch.manual_seed(0)  # the same ruler whatever ran before it in the process
    net = FeatureNet()
    if path.exists():
        net.load_state_dict(load_checkpoint(path, "delete it; it is retrained on the next run")
                            ["model"])
        return net.eval()
    rng = np.random.default_rng(0)
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    for _ in tqdm(range(steps), desc="FD feature net", dynamic_ncols=True):
        x, ys = _clean_batch(rng, 128, resolution)
        _, logits = net(x)
        loss = sum(F.cross_entropy(lg, y) for lg, y in zip(logits, ys))
        opt.zero_grad()
        loss.backward()
        opt.step()
    save_checkpoint(path, {"model": net.state_dict()})
    return net.eval()


@torch.no_grad()
def features(net: FeatureNet, images_uint8) -> np.ndarray:
    """(N, H, W, 3) uint8 -> (N, 64) features."""
    out = [net(to_model_space(images_uint8[i:i + 512]))[0]
           for i in range(0, len(images_uint8), 512)]
    return torch.cat(out).double().numpy()


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to feature sets a (N, D) and b (M, D).
    tr((C_a C_b)^(1/2)) = tr((C_a^(1/2) C_b C_a^(1/2))^(1/2)), which is symmetric PSD."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    ca, cb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    w, v = np.linalg.eigh(ca)
    sa = (v * np.sqrt(w.clip(min=0))) @ v.T  # C_a^(1/2)
    cross = np.sqrt(np.linalg.eigvalsh(sa @ cb @ sa).clip(min=0)).sum()
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(ca) + np.trace(cb) - 2 * cross)


def clean_references(records: list[dict], resolution: int) -> np.ndarray:
    """A clean render of each evaluation record's prompt (scene drawn with the record's seed)."""
    return np.stack([render(sample_scene(parse(r["prompt"]), np.random.default_rng(r["seed"])),
                            resolution) for r in records])


def diversity(feats: np.ndarray, records: list[dict]) -> float:
    """Mean pairwise feature distance between samples of the same prompt, averaged over prompts
    (collapse to one image per prompt, a failure mode of over-optimization, gives 0)."""
    prompts = np.array([r["prompt"] for r in records])
    spreads = []
    for p in np.unique(prompts):
        f = feats[prompts == p]
        if len(f) > 1:
            d = np.sqrt(((f[:, None] - f[None]) ** 2).sum(-1))
            spreads.append(d.sum() / (len(f) * (len(f) - 1)))
    return float(np.mean(spreads)) if spreads else float("nan")  # one sample a prompt: no spread


def shape_fit(a: dict) -> list[float]:
    """For each blob of an image's analysis a = judge.analyze(image) (8-connected pixels that are
    not the most common color, the background; specks skipped), its best intersection-over-union
    with a clean render of any of the four shapes (judge.silhouette_fits). A clean render scores
    exactly 1 per object; a soft, broken or in-between shape less. Two shapes merged into one
    blob score low, as they should."""
    return [max(silhouette_fits(pixels, a["side"]).values()) for pixels in a["blobs"]]


def shape_fit_summary(analyses: list[dict]) -> dict:
    """shape_fit over a set of images (their judge.analyze): its mean, 10th percentile and
    median over all blobs, and the fraction of blobs that are exact clean shapes (IoU 1)."""
    fits = np.array([f for a in analyses for f in shape_fit(a)])
    if not len(fits):
        return {**dict.fromkeys(("mean", "p10", "median", "exact"), float("nan")), "blobs": 0}
    return {"mean": float(fits.mean()), "p10": float(np.percentile(fits, 10)),
            "median": float(np.median(fits)), "exact": float((fits >= 1.0).mean()),
            "blobs": int(len(fits))}
