"""Every random stream of the project, in one screen: the determinism contract.

A stream is fixed by (run seed, purpose, step or index), never by how many numbers were drawn
before it, so a resumed run draws exactly what an uninterrupted one draws, two runs that differ
in one setting still see the same batches, and one sample's noise never depends on its batch.
The small integers in the numpy streams (3, 7, 11) only keep the purposes apart.
"""
import numpy as np
import torch

# ----------------------------------------------------------------------------- data
def web_example(corpus_seed: int, index: int) -> np.random.Generator:
    """Example `index` of the fixed web corpus: its scene, render and caption."""
    return np.random.default_rng([corpus_seed, int(index)])


def clip_corpus_seed(seed: int) -> int:
    """Our CLIP trains on another web corpus than the UNet (same noise, other examples)."""
    return seed + 1


# ----------------------------------------------------------------------------- training steps
def pretrain_batch(seed: int, step: int) -> np.random.Generator:
    """Stage 0: which web examples a step draws, and its caption dropout."""
    return np.random.default_rng([seed, step])


def finetune_batch(seed: int, step: int) -> np.random.Generator:
    """Stage 3: the D_pre examples, the D_model rows and the caption dropout of a step."""
    return np.random.default_rng([seed, 3, step])


def clip_batch(seed: int, step: int) -> np.random.Generator:
    return np.random.default_rng([seed, 7, step])


def reward_batch(seed: int, step: int) -> np.random.Generator:
    """Stage 2: the labeled rows, the flip and the augmented prompts of a step."""
    return np.random.default_rng([seed, 11, step])


def step_noise(seed: int, step: int) -> torch.Generator:
    """Stages 0 and 3: the timesteps t and the noise eps of a training step (drawn on the CPU)."""
    return torch.Generator().manual_seed(seed * 1_000_003 + step)


# ----------------------------------------------------------------------------- sampling
def initial_noise(sample_seed: int) -> torch.Generator:
    """x_T of one sample."""
    return torch.Generator().manual_seed(int(sample_seed))


def sampler_noise(sample_seed: int) -> torch.Generator:
    """The per-step noise of one sample when the sampler is stochastic (eta > 0)."""
    return torch.Generator().manual_seed(int(sample_seed) + 1)


# Feedback sets: image i of the set made with seed s has sample seed s * FEEDBACK_STRIDE + i;
# stage 1 makes the training set with the run seed, the held-out set with seed + HELDOUT and
# stage 3 the unlabeled set with seed + UNLABELED (so the three never share an image).
FEEDBACK_STRIDE = 1_000_000
HELDOUT, UNLABELED = 1, 2


def label_flip(sample_seed: int) -> np.random.Generator:
    """Whether the simulated person disagrees with the judge on one image."""
    return np.random.default_rng(sample_seed)


# Evaluation: sample k of evaluation prompt i. Every model sees the same seeds.
EVAL_SEED = 1234


def eval_seed(split: str, prompt_index: int, k: int) -> int:
    return EVAL_SEED + 7919 * k + 101 * prompt_index + (0 if split == "seen" else 50_000)


BEST_OF_N_STRIDE = 10 ** 7  # candidate j of best-of-n uses the evaluation seed + j * stride
GRID_SEED = 99  # column j of every stage's image grid uses seed GRID_SEED + j
