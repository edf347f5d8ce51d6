"""The reward model r_phi(x, z) in [0, 1] (Lee et al. 2023, Sec. 3.2), and prompt augmentation.

Architecture, as in the paper: CLIP image and text embeddings -> MLP -> scalar. The text side
(our CLIP's text encoder) is frozen, as in the paper: 3,000-odd labeled images cannot teach a
language model, and freezing keeps the reward's notion of words the one learned from the web.
The image side is frozen too by default, as in the paper. `train_image_encoder` lets it adapt
(our CLIP learned from captions that undercount, so one might hope the labels sharpen its
features for 3 vs 4 objects); on held-out feedback it overfits the few thousand labels instead
(docs/results.md).

Training (Eq. 1, `train_reward_model`) and its measurement (`measure`) live here too, so that
stage 2 and the benchmarks share them.
"""
import copy
import dataclasses
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from tqdm import tqdm

from . import seeds
from .clip import Clip, ClipConfig
from .config import UserError, check_range, require
from .diffusion import to_model_space
from .evaluate import pairwise_accuracy
from .files import load_checkpoint
from .losses import reward_loss
from .text import encode
from .train_loop import lr_at
from .world import ATTRIBUTES, perturb, parse, to_prompt


class RewardModel(nn.Module):
    """r_phi(x, z): frozen CLIP embeddings of image and prompt -> MLP -> a scalar reward.
    linear False: r = sigmoid(MLP) in [0, 1]; True: r = MLP, unbounded (the MSE to the 0/1
    label keeps it near [0, 1]). Why it matters: with r squashed, Eq. 1's prompt classification
    (a softmax over r / T, never near one-hot for r in [0, 1]) pushes good images' logits up for
    as long as the sigmoid has slope, and a bad pair carried into saturation with them gets no
    gradient from the MSE (its slope is about 0 there): the ranking within a prompt can invert
    (benchmarks/reward_head.py). A linear reward keeps the MSE's full gradient."""

    def __init__(self, clip: Clip, hidden: int = 128, train_image_encoder: bool = False,
                 linear: bool = False):
        super().__init__()
        self.linear = linear
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
        """(B, E), (B, E) -> r, (B,): in [0, 1], or the logit itself for a linear reward."""
        logit = self.logit(img, txt)
        return logit if self.linear else torch.sigmoid(logit)

    def prompt_scores(self, img, txt):
        """(B, E), (B, E) -> what Eq. 1's prompt classification ranks, (B,): r itself, as the
        paper writes it. Ranking by the logit instead asks the same question (the sigmoid is
        monotone) with a softmax that can be satisfied, but then its loss pushes margins, and
        the rewards saturate more, not less (benchmarks/reward_head.py)."""
        return self.head(img, txt)

    def forward(self, x, ids):
        return self.head(self.image_features(x), self.text_features(ids))

    @torch.no_grad()
    def score(self, images_uint8, prompts: list[str], logit: bool = False,
              batch_size: int = 512) -> torch.Tensor:
        """The reward of each (image, prompt) pair, (B,) (or its logit: a ranking without the
        sigmoid's ties at 1.0): a plain function for other stages."""
        self.eval()
        device = next(self.mlp.parameters()).device
        out = []
        for i in range(0, len(prompts), batch_size):
            x = to_model_space(images_uint8[i:i + batch_size]).to(device)
            img = self.image_features(x)
            txt = self.text_features(encode(prompts[i:i + batch_size]).to(device))
            out.append((self.logit(img, txt) if logit else self.head(img, txt)).cpu())
        return torch.cat(out)


def load_reward(reward_dir, made_by: str, name: str = "reward") -> RewardModel:
    """A stage-2 reward model (name: reward, stage 3's; or its twin, see stage2_rewards)."""
    path = Path(reward_dir) / f"{name}.pt"
    state = load_checkpoint(path, made_by)
    if "clip_config" not in state or "lam" not in state:
        raise UserError(f"{path} is not a reward model (a {name}.pt of train_reward.py); "
                        f"run `{made_by}` to make one")
    linear = state.get("config", {}).get("reward_head", "sigmoid") == "linear"
    model = RewardModel(Clip(ClipConfig(**state["clip_config"])), linear=linear)
    model.load_state_dict(state["model"])
    return model.eval()


def load_stage2(reward_dir, made_by: str) -> tuple[Clip, dict]:
    """Our CLIP (clip.pt) and stage 2's config as stored with reward.pt (the reward's training
    settings and stage 1's flip rate): what training the reward again on more labels needs."""
    path = Path(reward_dir) / "clip.pt"
    state = load_checkpoint(path, made_by)
    if "clip_config" not in state:
        raise UserError(f"{path} is not a CLIP checkpoint of train_reward.py; run `{made_by}`")
    clip = Clip(ClipConfig(**state["clip_config"]))
    clip.load_state_dict(state["model"])
    reward_state = load_checkpoint(Path(reward_dir) / "reward.pt", made_by)
    if "config" not in reward_state:
        raise UserError(f"{Path(reward_dir) / 'reward.pt'} is not a reward model of "
                        f"train_reward.py; run `{made_by}`")
    return clip.eval(), {**reward_state["config"], "lam": reward_state["lam"]}


@dataclasses.dataclass
class RewardTrainConfig:
    """How the reward model is trained (Eq. 1); stage 2's config extends it."""
    seed: int = 0  # seeds sampling, label flips and training
    reward_steps: int = 1500  # reward-model training steps
    reward_batch: int = 128  # reward-model batch size
    reward_lr: float = 1e-3  # reward-model learning rate (cosine decay to 0)
    train_image_encoder: bool = False  # let the reward's image encoder adapt (paper: frozen)
    # lambda 0 by default: on our sigmoid reward the paper's 0.5 can rank a prompt's pairs
    # backwards and fine-tune worse (docs/results.md, sections 20-21); its twin still trains
    lam: float = 0.0  # lambda: weight of the prompt-classification loss (Eq. 1, paper 0.5)
    temperature: float = 2.0  # T of softmax(r / T) in prompt classification (paper 2)
    n_prompts: int = 5  # N: the true prompt and N-1 one-attribute-changed prompts
    # linear ranks pairs better, but its weights fine-tuned no better (results.md, section 20)
    reward_head: str = "sigmoid"  # r = sigmoid(MLP) in [0, 1], or linear: r = MLP, unbounded

    def __post_init__(self):
        check_range(self, "reward_steps reward_batch", 1)
        check_range(self, "reward_lr temperature", 0, open_lo=True)
        check_range(self, "lam", 0)
        check_range(self, "n_prompts", 2)  # the true prompt and at least one wrong one
        require(self.reward_head in ("sigmoid", "linear"),
                f"--reward_head must be sigmoid or linear, not {self.reward_head!r}")


PAPER_LAM = 0.5  # the paper's lambda


def stage2_rewards(lam: float) -> list[tuple[str, float]]:
    """The two reward models stage 2 trains, (name, lambda): its twin, which shows what Eq. 1's
    prompt classification does (at the paper's lambda when --lam is 0, else without it), then
    `reward` at --lam, the one stage 3 uses."""
    return [("reward_pc", PAPER_LAM) if lam == 0 else ("reward_no_pc", 0.0), ("reward", lam)]


def train_reward_model(clip: Clip, rows, images, cfg: RewardTrainConfig, lam: float, device):
    """Eq. 1 on the labeled feedback: MSE to the label + lam * prompt classification."""
    torch.manual_seed(cfg.seed)
    model = RewardModel(clip, train_image_encoder=cfg.train_image_encoder,
                        linear=cfg.reward_head == "linear").to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.reward_lr, weight_decay=0.01)
    x_all = to_model_space(images)  # (N, 3, H, W)
    ids_all = encode([r["prompt"] for r in rows])  # (N, L)
    y_all = torch.tensor([r["label"] for r in rows])  # (N,)
    for step in tqdm(range(cfg.reward_steps), desc=f"reward (lambda={lam})", dynamic_ncols=True):
        rng = seeds.reward_batch(cfg.seed, step)
        idx = torch.from_numpy(rng.integers(0, len(rows), cfg.reward_batch))
        x = x_all[idx].to(device)
        if rng.random() < 0.5:  # horizontal flip keeps every attribute a prompt can name
            x = x.flip(-1)
        for g in opt.param_groups:
            g["lr"] = lr_at(step, cfg.reward_lr, 0, cfg.reward_steps)
        img = model.image_features(x)  # (B, E)
        pred = model.head(img, model.text_features(ids_all[idx].to(device)))  # (B,)
        aug = None
        good = [int(i) for i in idx if y_all[i] == 1]
        if lam > 0 and good:
            cands = [p for i in good for p in [rows[i]["prompt"]]
                     + augment_prompts(rows[i]["prompt"], cfg.n_prompts - 1, rng)]
            txt = model.text_features(encode(cands).to(device))  # (G * N, E)
            img_good = img[(y_all[idx] == 1).to(device)].repeat_interleave(cfg.n_prompts, 0)
            aug = model.prompt_scores(img_good, txt).view(len(good), cfg.n_prompts)  # (G, N)
        loss = reward_loss(pred, y_all[idx].to(device), aug, lam, cfg.temperature)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return model.eval()


def measure(scores, rows) -> dict:
    """Pairwise accuracy and accuracy at 0.5 of one scorer, per split, on gold labels."""
    out = {}
    for split in ("seen", "unseen"):
        m = np.array([r["split"] == split for r in rows])
        s, y = np.asarray(scores)[m], np.array([r["label"] for r in rows])[m]
        p = np.array([r["prompt"] for r in rows])[m]
        out[split] = {"pairwise_accuracy": pairwise_accuracy(s, y, p),
                      "accuracy": float(((s > 0.5) == (y == 1)).mean()) if m.any() else None}
    return out


def augment_prompts(prompt: str, n_wrong: int, rng: np.random.Generator) -> list[str]:
    """The paper's prompt augmentation: n_wrong distinct prompts, each the true prompt with
    exactly one of the attributes it names changed. A wrong prompt may name a held-out shape:
    held-out shapes then enter training only as text that a good image does *not* show, never
    as an image or a labeled prompt. With them left out, prompt classification hurt unseen
    prompts instead of helping (docs/results.md)."""
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
