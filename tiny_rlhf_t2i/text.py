"""Text side: a word tokenizer over the world's vocabulary and a small transformer encoder.

The encoder plays the role of Stable Diffusion's CLIP text encoder: its token states condition
the UNet through cross-attention. `Attention` is also the UNet's cross-attention block.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from .world import VOCAB, PromptError, tokenize

PAD, NULL = "<pad>", "<null>"  # NULL is the empty caption of classifier-free guidance
TOKENS = (PAD, NULL) + VOCAB
TOKEN_ID = {w: i for i, w in enumerate(TOKENS)}
MAX_LEN = 10  # longest web caption: "an image of three purple triangles on a white background"


def encode(prompts: list[str]) -> torch.Tensor:
    """Prompts -> (B, MAX_LEN) token ids, padded. "" is the null caption (guidance's uncond).
    An unknown word raises the world's ValueError naming it and the vocabulary."""
    ids = torch.full((len(prompts), MAX_LEN), TOKEN_ID[PAD], dtype=torch.long)
    for i, p in enumerate(prompts):
        words = [NULL] if p == "" else tokenize(p)
        if len(words) > MAX_LEN:
            raise PromptError(f"prompt {p!r} has {len(words)} words; at most {MAX_LEN} fit")
        ids[i, :len(words)] = torch.tensor([TOKEN_ID[w] for w in words])
    return ids


NULL_IDS = encode([""])[0]  # (MAX_LEN,) the null caption, for condition dropout


class Attention(nn.Module):
    """Multi-head attention of queries x (B, N, dim) over a context (B, L, ctx_dim).
    key_mask (B, L) is True for real tokens; padding is never attended to."""

    def __init__(self, dim: int, ctx_dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim, bias=False)
        self.kv = nn.Linear(ctx_dim, 2 * dim, bias=False)
        self.out = nn.Linear(dim, dim)

    def forward(self, x, context, key_mask=None):
        q = rearrange(self.q(x), "b n (h d) -> b h n d", h=self.heads)
        k, v = rearrange(self.kv(context), "b l (two h d) -> two b h l d", two=2, h=self.heads)
        mask = None if key_mask is None else key_mask[:, None, None, :]  # (B, 1, 1, L)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, h, N, D/h)
        return self.out(rearrange(y, "b h n d -> b n (h d)"))


class Block(nn.Module):
    """Pre-norm transformer block: self-attention then MLP, both residual."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = Attention(dim, dim, heads)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x, mask):
        h = self.ln1(x)
        x = x + self.attn(h, h, mask)
        return x + self.mlp(self.ln2(x))


class TextEncoder(nn.Module):
    """Token ids (B, L) -> token states (B, L, dim), their mask (B, L) and a pooled state
    (B, dim)."""

    def __init__(self, dim: int = 64, layers: int = 2, heads: int = 4):
        super().__init__()
        self.embed = nn.Embedding(len(TOKENS), dim)
        self.pos = nn.Parameter(torch.randn(MAX_LEN, dim) / math.sqrt(dim))
        self.blocks = nn.ModuleList(Block(dim, heads) for _ in range(layers))
        self.ln = nn.LayerNorm(dim)

    def forward(self, ids):
        mask = ids != TOKEN_ID[PAD]  # (B, L)
        x = self.embed(ids) + self.pos[: ids.shape[1]]  # (B, L, dim)
        for block in self.blocks:
            x = block(x, mask)
        x = self.ln(x)
        pooled = (x * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)  # (B, dim)
        return x, mask, pooled
