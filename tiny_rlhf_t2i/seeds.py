"""Every random stream of the project, in one screen: the determinism contract.

A stream is fixed by (run seed, purpose, step or index), never by how many numbers were drawn
before it, so a resumed run draws exactly what an uninterrupted one draws, two runs that differ
in one setting still see the same batches, and one sample's noise never depends on its batch.
The small integers in the numpy streams (3, 7, 11) only keep the purposes apart.
"""
import numpy as np
import torch


def web_example(corpus_seed: int, index: int):  # example `index` of the fixed web corpus
    return np.random.default_rng([corpus_seed, int(index)])


def clip_corpus_seed(seed: int) -> int:  # our CLIP trains on other web examples than the UNet
    return seed + 1


def pretrain_batch(seed: int, step: int):  # stage 0: a step's web examples, caption dropout
    return np.random.default_rng([seed, step])


def finetune_batch(seed: int, step: int):  # stage 3: D_pre examples, D_model rows, dropout
    return np.random.default_rng([seed, 3, step])


def clip_batch(seed: int, step: int):  # CLIP's web examples of a step
    return np.random.default_rng([seed, 7, step])


def reward_batch(seed: int, step: int):  # stage 2: labeled rows, flip, augmented prompts
    return np.random.default_rng([seed, 11, step])


def step_noise(seed: int, step: int):  # stages 0 and 3: timesteps t and noise eps of a step
    return torch.Generator().manual_seed(seed * 1_000_003 + step)


def round_seed(seed: int, k: int) -> int:  # stage 3's round k (k = 1, 2, ...) runs with this seed
    return seed + 1000 * (k - 1)  # round 1 keeps the run's seed: one round is the paper's run


def initial_noise(sample_seed: int):  # x_T of one sample
    return torch.Generator().manual_seed(int(sample_seed))


def sampler_noise(sample_seed: int):  # per-step noise of one sample when eta > 0
    return torch.Generator().manual_seed(int(sample_seed) + 1)


def label_flip(sample_seed: int):  # whether the simulated person disagrees with the judge
    return np.random.default_rng(sample_seed)


# Feedback sets: image i of the set made with seed s has sample seed s * FEEDBACK_STRIDE + i.
# Stage 1 makes the training set with the run's seed, the held-out set with seed + HELDOUT, and
# stage 3 the set of round k with round_seed(seed, k) + UNLABELED, so no two share an image.
FEEDBACK_STRIDE = 1_000_000
HELDOUT, UNLABELED = 1, 2

EVAL_SEED = 1234  # sample k of evaluation prompt i: eval_seed(split, i, k), for every model
BEST_OF_N_STRIDE = 10 ** 7  # candidate j of best-of-n: the evaluation seed + j * stride
GRID_SEED = 99  # column j of every stage's image grid: GRID_SEED + j
# The FD ruler (fidelity.py) is trained with seed 0; the clean reference render of an evaluation
# record is drawn with that record's seed.


VAL_OFFSET = 10 ** 12  # validation samples: the evaluation's prompts, seeds past every other stream


HELDOUT_SEED = 4321  # sample k of held-out prompt i (stage 3's round selection): heldout_seed(i, k)


def heldout_seed(prompt_index: int, k: int) -> int:  # past every evaluation and feedback seed
    return 2 * VAL_OFFSET + HELDOUT_SEED + 7919 * k + 101 * prompt_index


def eval_seed(split: str, prompt_index: int, k: int, val: bool = False) -> int:
    return (EVAL_SEED + 7919 * k + 101 * prompt_index + (0 if split == "seen" else 50_000)
            + (VAL_OFFSET if val else 0))
