"""The paper's losses and the evaluation metrics on hand-made inputs."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tiny_rlhf_t2i.evaluate import alignment, pairwise_accuracy, proportion_ci, win_rate
from tiny_rlhf_t2i.fidelity import frechet_distance
from tiny_rlhf_t2i.diffusion import Scheduler
from tiny_rlhf_t2i.losses import (balance_groups, eq2_weights, finetune_loss, min_snr_weights,
                                  prompt_classification_loss, reward_loss, weighted_mse)
from tiny_rlhf_t2i.train_loop import Batch, step_loss


def test_prompt_classification_loss_by_hand():
    # one good image, N = 3 prompts with rewards 0.9 (true), 0.5, 0.1; T = 2:
    # logits 0.45, 0.25, 0.05 -> loss = -0.45 + log(e^0.45 + e^0.25 + e^0.05)
    scores = torch.tensor([[0.9, 0.5, 0.1]])
    by_hand = -0.45 + math.log(math.exp(0.45) + math.exp(0.25) + math.exp(0.05))
    assert prompt_classification_loss(scores, 2.0).item() == pytest.approx(by_hand, rel=1e-6)


def test_reward_loss_is_mse_plus_lambda_ce():
    pred, label = torch.tensor([0.8, 0.3]), torch.tensor([1, 0])
    aug = torch.tensor([[0.8, 0.2, 0.4]])
    mse = ((0.8 - 1) ** 2 + 0.3 ** 2) / 2
    ce = prompt_classification_loss(aug, 2.0).item()
    assert reward_loss(pred, label, aug, 0.5, 2.0).item() == pytest.approx(mse + 0.5 * ce)
    assert reward_loss(pred, label, aug, 0.0, 2.0).item() == pytest.approx(mse)


def test_eq2_loss_by_hand():
    # batch of 4: rows 0-1 from D_model (rewards 1.0 and 0.5), rows 2-3 from D_pre (beta = 2)
    eps = torch.zeros(4, 1, 1, 2)
    eps_hat = torch.tensor([1.0, 1.0, 2.0, 0.0, 0.0, 0.0, 1.0, 3.0]).view(4, 1, 1, 2)
    l = [1.0, 2.0, 0.0, 5.0]  # per-sample mean squared errors
    w = eq2_weights(torch.tensor([1.0, 0.5]), n_pre=2, beta=2.0)
    assert w.tolist() == [1.0, 0.5, 2.0, 2.0]
    by_hand = (1.0 * l[0] + 0.5 * l[1]) / 2 + 2.0 * (l[2] + l[3]) / 2  # Eq. 2, each half averaged
    assert finetune_loss(eps_hat, eps, w, n_model=2).item() == pytest.approx(by_hand)


def test_eq2_with_unit_weights_and_beta_zero_is_the_plain_loss_on_d_model():
    torch.manual_seed(0)
    eps_hat, eps = torch.randn(6, 3, 4, 4), torch.randn(6, 3, 4, 4)
    ones = eq2_weights(torch.ones(6), n_pre=0, beta=0.0)
    assert finetune_loss(eps_hat, eps, ones, n_model=6).item() == pytest.approx(
        F.mse_loss(eps_hat, eps).item(), rel=1e-6)
    # a 50/50 batch with beta 0: only the D_model half counts, averaged over its own rows
    w = eq2_weights(torch.ones(3), n_pre=3, beta=0.0)
    assert finetune_loss(eps_hat, eps, w, n_model=3).item() == pytest.approx(
        F.mse_loss(eps_hat[:3], eps[:3]).item(), rel=1e-6)


def test_pretraining_half_contributes_when_beta_positive():
    eps_hat = torch.zeros(4, 1, 2, 2)
    eps = torch.cat([torch.zeros(2, 1, 2, 2), torch.ones(2, 1, 2, 2)])  # only D_pre has error
    w0 = eq2_weights(torch.ones(2), n_pre=2, beta=0.0)
    w1 = eq2_weights(torch.ones(2), n_pre=2, beta=1.0)
    assert finetune_loss(eps_hat, eps, w0, 2).item() == 0
    assert finetune_loss(eps_hat, eps, w1, 2).item() == pytest.approx(1.0)


def test_reward_weights_are_never_negative():
    assert eq2_weights(torch.tensor([-0.3, 0.7]), n_pre=1, beta=1.0).tolist() == [0.0,
                                                                                   pytest.approx(0.7), 1.0]


def test_min_snr_weights_by_hand_and_in_the_step_loss():
    # SNR 0.25 / 0.75 = 1/3 <= gamma: weight 1; SNR 0.9 / 0.1 = 9 > gamma 5: weight 5/9
    w = min_snr_weights(torch.tensor([0.25, 0.9]), gamma=5.0)
    torch.testing.assert_close(w, torch.tensor([1.0, 5 / 9]))
    torch.manual_seed(0)
    model = lambda x, t, ids: 0.5 * x  # noqa: E731  (any denoiser: the weighting is outside it)
    x0, ids = torch.rand(6, 3, 4, 4) * 2 - 1, torch.zeros(6, 4, dtype=torch.long)
    s = Scheduler()
    gen = lambda: torch.Generator().manual_seed(3)  # noqa: E731  (the same t and noise twice)
    g = gen()
    t, noise = torch.randint(0, 1000, (6,), generator=g), torch.randn(x0.shape, generator=g)
    expected = weighted_mse(0.5 * s.add_noise(x0, noise, t), noise,
                            min_snr_weights(s.alphas_cumprod[t], 5.0))
    weighted = Batch(x0, ids, torch.ones(6), min_snr_gamma=5.0)
    torch.testing.assert_close(step_loss(model, s, weighted, gen(), weighted_mse), expected)
    plain = step_loss(model, s, Batch(x0, ids, torch.ones(6)), gen(), weighted_mse)
    assert plain > expected  # some of the six timesteps have SNR > 5 and weigh less


def test_balance_groups_by_hand():
    # group a: 1 of 4 images good (weight 1), group b: 3 of 4 good; mean weight 0.5.
    # Each group keeps half of the total weight 4: a's one image 2.0, b's three 2/3 each.
    w = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0])
    out = balance_groups(w, ["a"] * 4 + ["b"] * 4)
    assert out.tolist() == pytest.approx([2.0, 0, 0, 0, 2 / 3, 2 / 3, 2 / 3, 0])
    # soft rewards keep their ratios inside a group; an all-zero group stays zero
    r = torch.tensor([0.8, 0.2, 0.0, 0.0, 0.5, 0.5])
    out = balance_groups(r, ["a", "a", "z", "z", "b", "b"])
    assert out[0] / out[1] == pytest.approx(4.0) and out[2:4].tolist() == [0, 0]
    assert out.sum().item() == pytest.approx(r.sum().item())
    assert out[:2].sum().item() == pytest.approx(out[4:].sum().item())


def test_perfect_model_scores_100_percent_and_ci_width():
    records = [{"category": c, "split": s} for c in ("count", "color", "background", "combination")
               for s in ("seen", "unseen") for _ in range(25)]
    a = alignment([True] * len(records), records)
    assert a["overall"]["mean"] == 1.0 and a["count"]["mean"] == 1.0 and a["unseen"]["n"] == 100
    ci = proportion_ci(50, 100)  # Wilson: 0.5 +- 1.96 * sqrt(0.25 / 100) / (1 + 1.96^2 / 100)
    half = 1.959964 * math.sqrt(0.25 / 100 + 1.959964 ** 2 / 40000) / (1 + 1.959964 ** 2 / 100)
    assert ci["mean"] == 0.5 and ci["hi"] - ci["lo"] == pytest.approx(2 * half)
    assert 0.09 < ci["hi"] - ci["lo"] < 0.2


def test_pairwise_accuracy_and_win_rate():
    scores = [0.9, 0.1, 0.5, 0.6, 0.4]
    labels = [1, 0, 1, 0, 0]
    prompts = ["a", "a", "b", "b", "b"]
    # prompt a: (0.9 > 0.1) -> 1 of 1; prompt b: 0.5 vs 0.6 (lose), 0.5 vs 0.4 (win) -> 1 of 2
    assert pairwise_accuracy(scores, labels, prompts) == pytest.approx(2 / 3)
    w = win_rate([True, True, False, False], [False, True, True, False])
    assert (w["win"], w["tie"], w["loss"]) == (0.25, 0.5, 0.25)


def test_frechet_distance_closed_form():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(20000, 3))
    b = rng.normal(size=(20000, 3)) * 2 + 1  # mean shift 1 per dim, std 2
    # |mu|^2 = 3; tr(I + 4I - 2 * 2I) = 3 -> FD = 6
    assert frechet_distance(a, b) == pytest.approx(6.0, rel=0.05)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)


def test_kl_step_weights_follow_the_per_step_kl():
    from tiny_rlhf_t2i.diffusion import Scheduler
    from tiny_rlhf_t2i.losses import kl_step_weights
    abar = Scheduler().alphas_cumprod.double()
    a = kl_step_weights(abar)
    assert a.shape == (1000,) and a.mean().item() == pytest.approx(1.0, rel=1e-5)
    # by hand at t = 5 and t = 500: w_t = beta_t / (2 alpha_t (1 - abar_t)), the same scale
    w = lambda t: (1 - abar[t] / abar[t - 1]) / (2 * abar[t] / abar[t - 1] * (1 - abar[t]))
    assert (a[5] / a[500]).item() == pytest.approx((w(5) / w(500)).item(), rel=1e-4)
    assert a.argmax().item() == 0 and a[0] > 100 * a[500]  # spent on the lowest noise
    assert a.max() == a[0]  # the last steps (beta clamped near 1) are capped at t = 0's weight


def test_anchor_loss_value_and_gradient_by_hand():
    from tiny_rlhf_t2i.losses import anchor_loss
    eps_pre = torch.zeros(2, 1, 1, 2)
    eps_hat = torch.tensor([1.0, 3.0, 2.0, 0.0]).view(2, 1, 1, 2).requires_grad_(True)
    a = torch.tensor([0.5, 2.0])
    loss = anchor_loss(eps_hat, eps_pre, a)
    # row 0: mean(1, 9) = 5, weight 0.5; row 1: mean(4, 0) = 2, weight 2 -> (2.5 + 4) / 2
    assert loss.item() == pytest.approx(3.25)
    loss.backward()  # d/d eps_hat[i, j] = a_i * 2 (eps_hat - eps_pre)[i, j] / (J * N)
    expected = torch.tensor([0.5 * 2 * 1 / 4, 0.5 * 2 * 3 / 4, 2 * 2 * 2 / 4, 0.0]).view(2, 1, 1, 2)
    torch.testing.assert_close(eps_hat.grad, expected)
    assert anchor_loss(eps_pre, eps_pre, a).item() == 0


def test_balance_leaves_a_group_with_no_good_image_alone():
    # group z: sigmoid rewards, none >= 0.5 (no image called good): plain weights, no boost.
    # groups a and b share what is left equally, by their number of images (2 each)
    r = torch.tensor([0.9, 0.1, 0.3, 0.2, 0.6, 0.6])
    out = balance_groups(r, ["a", "a", "z", "z", "b", "b"])
    assert out[2:4].tolist() == pytest.approx([0.3, 0.2])
    assert out.sum().item() == pytest.approx(r.sum().item())
    assert out[:2].sum().item() == pytest.approx(out[4:].sum().item())
    assert (out[0] / out[1]).item() == pytest.approx(9.0)
