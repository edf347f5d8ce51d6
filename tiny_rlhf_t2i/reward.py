"""The reward model r_phi(x, z) in [0, 1] (Lee et al. 2023, Sec. 3.2), and prompt augmentation.

Architecture, as in the paper: CLIP image and text embeddings -> MLP -> scalar. The text side
(our CLIP's text encoder) is frozen, as in the paper: 3,000-odd labeled images cannot teach a
language model, and freezing keeps the reward's notion of words the one learned from the web.
The image side is frozen too by default, as in the paper. `train_image_encoder` lets it adapt
(our CLIP learned from captions that undercount, so one might hope the labels sharpen its
features for 3 vs 4 objects); measured on held-out feedback it overfits the few thousand labels
instead: pairwise accuracy 78.6% / 61.8% (seen / unseen) trained vs 84.9% / 68.8% frozen
(both measured at commit 6a14ff2, before the augmentation named held-out shapes).
"""
import copy

import numpy as np
import torch
import torch.nn as nn

from .clip import Clip
from .diffusion import to_model_space
from .text import encode
from .world import ATTRIBUTES, perturb, parse, to_prompt


class RewardModel(nn.Module):
    def __init__(self, clip: Clip, hidden: int = 128, train_image_encoder: bool = False):
        super().__init__()
        self.image = copy.deepcopy(clip.image).requires_grad_(train_image_encoder)
        self.text = copy.deepcopy(clip.text).requires_grad_(False)
        self.text_proj = copy.deepcopy(clip.text_proj).requires_grad_(False)
        E = clip.cfg.embed_dim
        self.mlp = nn.Sequential(nn.Linear(3 * E, hidden), nn.SiLU(), nn.Linear(hidden, hidden),
                                 nn.SiLU(), nn.Linear(hidden, 1))  # the paper's 2-layer MLP

    def image_features(self, x):
        return self.image(x)  # (B, E)

    def text_features(self, ids):
        return self.text_proj(self.text(ids)[2])  # (B, E)

    def logit(self, img, txt):
        """(B, E), (B, E) -> the reward before its sigmoid, (B,). The product term lets a small
        MLP compare them."""
        return self.mlp(torch.cat([img, txt, img * txt], -1)).squeeze(-1)

    def head(self, img, txt):
        """(B, E), (B, E) -> r in [0, 1], (B,)."""
        return torch.sigmoid(self.logit(img, txt))

    def forward(self, x, ids):
        return self.head(self.image_features(x), self.text_features(ids))

    @torch.no_grad()
    def score(self, images_uint8, prompts: list[str], batch_size: int = 512) -> torch.Tensor:
        """The reward of each (image, prompt) pair, (B,): a plain function for other stages."""
        self.eval()
        device = next(self.mlp.parameters()).device
        out = []
        for i in range(0, len(prompts), batch_size):
            x = to_model_space(images_uint8[i:i + batch_size]).to(device)
            out.append(self(x, encode(prompts[i:i + batch_size]).to(device)).cpu())
        return torch.cat(out)


def augment_prompts(prompt: str, n_wrong: int, rng: np.random.Generator) -> list[str]:
    """The paper's prompt augmentation: n_wrong distinct prompts, each the true prompt with
    exactly one of the attributes it names changed. A wrong prompt may name a held-out shape:
    held-out shapes then enter training only as text that a good image does *not* show, never
    as an image or a labeled prompt. With them left out, prompt classification hurt unseen
    prompts instead of helping (held-out pairwise accuracy 68.8% vs 76.7%, README)."""
    spec = parse(prompt)
    named = [a for a in ATTRIBUTES if getattr(spec, a) is not None]
    wrong, tries = [], 0
    while len(wrong) < n_wrong and tries < 100 * n_wrong:
        tries += 1
        attr = named[int(rng.integers(len(named)))]
        text = to_prompt(perturb(spec, attr, rng))
        if text != prompt and text not in wrong:
            wrong.append(text)
    if len(wrong) < n_wrong:
        raise ValueError(f"prompt {prompt!r} has only {len(wrong)} one-attribute variants, "
                         f"{n_wrong} asked for")
    return wrong
