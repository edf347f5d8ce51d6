"""Diffusion: closed forms, samplers on a Gaussian world, guidance, learning, checkpoints."""
import dataclasses
import math

import pytest
import torch
import torch.nn as nn

from tiny_rlhf_t2i import seeds
from tiny_rlhf_t2i.config import UserError
from tiny_rlhf_t2i.diffusion import Scheduler, guided_eps, sample
from tiny_rlhf_t2i.files import load_checkpoint, save_checkpoint
from tiny_rlhf_t2i.losses import weighted_mse
from tiny_rlhf_t2i.text import encode
from tiny_rlhf_t2i.train_loop import Batch, step_loss
from tiny_rlhf_t2i.unet import ModelConfig, TextToImage

TINY = ModelConfig(channels=16, text_dim=32, channel_mults="1,2")


def test_add_noise_matches_closed_form():
    s = Scheduler()
    abar = s.alphas_cumprod
    assert abar[0] > 0.999 and abar[-1] < 1e-4 and (abar[1:] < abar[:-1]).all()
    x0, eps = torch.randn(3, 3, 4, 4), torch.randn(3, 3, 4, 4)
    t = torch.tensor([0, 500, 999])
    xt = s.add_noise(x0, eps, t)
    for i, ti in enumerate(t):
        a = abar[ti].item()
        assert torch.allclose(xt[i], math.sqrt(a) * x0[i] + math.sqrt(1 - a) * eps[i], atol=1e-6)


class GaussianEps(nn.Module):
    """The exact epsilon-predictor for data x0 ~ N(mu, std^2) per pixel:
    E[eps | x_t] = sqrt(1 - abar) (x_t - sqrt(abar) mu) / (abar std^2 + 1 - abar)."""

    def __init__(self, mu, std):
        super().__init__()
        self.mu, self.std = mu, std
        self.cfg = ModelConfig(resolution=16)
        self.dummy = nn.Parameter(torch.zeros(1))
        self.abar = Scheduler().alphas_cumprod

    def forward(self, x, t, ids):
        a = self.abar[t].view(-1, 1, 1, 1)
        return (1 - a).sqrt() * (x - a.sqrt() * self.mu) / (a * self.std ** 2 + 1 - a)


@pytest.mark.parametrize("eta, steps", [(0.0, 500), (1.0, 1000)])  # DDIM, DDPM
def test_samplers_reproduce_a_gaussian(eta, steps):
    model = GaussianEps(mu=0.3, std=0.2)
    x = sample(model, ["a circle"] * 32, list(range(32)), num_inference_steps=steps,
               guidance_scale=1.0, eta=eta, solver="ddim")  # (32, 3, 16, 16): 24k draws
    assert abs(x.mean().item() - 0.3) < 0.005
    assert abs(x.std().item() - 0.2) < 0.005


def test_ddim_error_shrinks_with_more_steps():
    """Deterministic DDIM is a first-order ODE solver: too few steps shrink the variance."""
    model = GaussianEps(mu=0.3, std=0.2)
    err = [abs(sample(model, ["a circle"] * 8, list(range(8)), num_inference_steps=n,
                      guidance_scale=1.0, solver="ddim").std().item() - 0.2)
           for n in (25, 100, 400)]
    assert err[0] > err[1] > err[2]


def test_dpm_solver_2m_starts_as_ddim_and_converges_at_second_order():
    """On the Gaussian world the probability-flow ODE has a closed form: each pixel keeps its
    z-score, (x_t - sqrt(abar) mu) / sqrt(abar std^2 + 1 - abar), from x_T to x_0."""
    s = Scheduler()
    x, eps = torch.randn(2, 3, 4, 4), 0.1 * torch.randn(2, 3, 4, 4)
    torch.testing.assert_close(s.step_2m(eps, 900, 800, x)[0], s.step(eps, 900, 800, x)[0])
    mu, std = 0.0, 0.2  # x0 far inside [-1, 1]: clipping never acts
    model = GaussianEps(mu, std)
    x_T = torch.stack([torch.randn(3, 16, 16, generator=seeds.initial_noise(i)) for i in range(4)])
    a_T = s.alphas_cumprod[-1]
    exact = mu + std * (x_T - a_T.sqrt() * mu) / (a_T * std ** 2 + 1 - a_T).sqrt()
    err = {(solver, n): (sample(model, ["a circle"] * 4, list(range(4)), num_inference_steps=n,
                                guidance_scale=1.0, solver=solver) - exact).pow(2).mean().sqrt()
           for solver in ("ddim", "dpm++2m") for n in (20, 40)}
    assert 0.4 < err["ddim", 40] / err["ddim", 20] < 0.6  # first order: error ~ 1 / steps
    assert err["dpm++2m", 40] < err["dpm++2m", 20] / 4  # second order: ~ 1 / steps^2 or better
    assert err["dpm++2m", 40] < err["ddim", 40] / 4
    with pytest.raises(ValueError, match="solver must be ddim or dpm\\+\\+2m, not 'dpm'"):
        sample(model, ["a circle"], [0], solver="dpm")
    with pytest.raises(ValueError, match="eta > 0 \\(stochastic sampling\\) needs solver='ddim'"):
        sample(model, ["a circle"], [0], eta=1.0)


def test_sampling_is_reproducible_per_seed_whatever_the_batch():
    torch.manual_seed(0)
    model = TextToImage(TINY)
    a = sample(model, ["a red circle", "two squares"], [7, 8], num_inference_steps=3)
    b = sample(model, ["two squares"], [8], num_inference_steps=3)
    assert torch.allclose(a[1], b[0], atol=1e-5)


def test_guidance_scale_one_is_the_conditional_prediction_and_w_extrapolates():
    torch.manual_seed(0)
    model = TextToImage(TINY).eval()
    nn.init.normal_(model.conv_out.weight, std=0.1)  # zero-initialized: make the output nonzero
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([10, 900])
    ids, null = encode(["a red circle", "two squares"]), encode(["", ""])
    with torch.no_grad():
        cond, uncond = model(x, t, ids), model(x, t, null)
        assert torch.allclose(guided_eps(model, x, t, ids, null, 1.0), cond, atol=1e-6)
        assert torch.allclose(guided_eps(model, x, t, ids, null, 3.0),
                              uncond + 3.0 * (cond - uncond), atol=1e-5)
        assert not torch.allclose(cond, uncond)


def test_a_v_network_returns_the_epsilon_of_its_v():
    # eps = sqrt(abar) v + sqrt(1 - abar) x_t: with the true v of (x_0, eps) it is eps exactly
    torch.manual_seed(0)
    model = TextToImage(dataclasses.replace(TINY, prediction="v"))
    s = Scheduler()
    x0, eps = torch.rand(4, 3, 16, 16) * 2 - 1, torch.randn(4, 3, 16, 16)
    t = torch.tensor([0, 300, 650, 999])
    abar = s.alphas_cumprod[t].view(-1, 1, 1, 1)
    v = abar.sqrt() * eps - (1 - abar).sqrt() * x0  # (4, 3, 16, 16)
    model.conv_out.forward = lambda h: v  # the network's output, whatever its input
    out = model(s.add_noise(x0, eps, t), t, encode(["a red circle"] * 4))
    torch.testing.assert_close(out, eps, atol=1e-5, rtol=1e-5)
    assert "abar" not in model.state_dict()  # the schedule is fixed: checkpoints stay as they were


def test_an_epsilon_network_is_unchanged_and_a_v_network_starts_at_the_skip():
    # conv_out starts at zero: an epsilon network predicts 0, a v network sqrt(1 - abar) x_t
    torch.manual_seed(0)
    x, t, ids = torch.randn(2, 3, 16, 16), torch.tensor([10, 990]), encode(["two squares"] * 2)
    abar = Scheduler().alphas_cumprod[t].view(-1, 1, 1, 1)
    assert TextToImage(TINY)(x, t, ids).abs().max() == 0
    torch.testing.assert_close(TextToImage(dataclasses.replace(TINY, prediction="v"))(x, t, ids),
                               (1 - abar).sqrt() * x)
    with pytest.raises(UserError, match="--prediction must be epsilon or v"):
        ModelConfig(prediction="x0")


def test_small_model_overfits_one_batch():
    torch.manual_seed(0)
    model = TextToImage(TINY)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    x0 = torch.rand(4, 3, 16, 16) * 2 - 1
    ids = encode(["a red circle", "two squares", "a blue circle", "four diamonds"])
    s = Scheduler()
    losses = []
    for step in range(120):
        gen = torch.Generator().manual_seed(0)  # the same t and noise every step: one batch
        loss = step_loss(model, s, Batch(x0, ids, torch.ones(4)), gen, weighted_mse)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.1 * losses[0]


def test_a_stochastic_sample_does_not_depend_on_its_batch():
    """Same (prompt, seed) -> same image with eta > 0 too, alone or in a batch: its per-step
    noise comes from the sample's own generator, not from one generator per batch."""
    eta = 1.0
    torch.manual_seed(0)
    model = TextToImage(TINY)
    prompts, sample_seeds = ["a red circle", "two squares", "a circle"], [5, 6, 7]
    ddpm = dict(num_inference_steps=4, eta=eta, solver="ddim")
    together = sample(model, prompts, sample_seeds, **ddpm)
    for i in range(3):
        alone = sample(model, prompts[i:i + 1], sample_seeds[i:i + 1], **ddpm)
        assert torch.equal(alone[0], together[i])
    split = sample(model, prompts, sample_seeds, batch_size=2, **ddpm)
    assert torch.equal(split, together)


def test_checkpoint_round_trip_and_clear_errors(tmp_path):
    torch.manual_seed(0)
    model = TextToImage(TINY)
    path = save_checkpoint(tmp_path / "ckpt.pt", {"model": model.state_dict()})
    copy = TextToImage(TINY)
    copy.load_state_dict(load_checkpoint(path, "python train_unet.py")["model"])
    x, t, ids = torch.randn(1, 3, 16, 16), torch.tensor([3]), encode(["a circle"])
    assert torch.equal(model(x, t, ids), copy(x, t, ids))
    with pytest.raises(UserError, match=r"missing.pt does not exist; run `python train_unet.py`"):
        load_checkpoint(tmp_path / "missing.pt", "python train_unet.py")
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="bad.pt is corrupt"):
        load_checkpoint(tmp_path / "bad.pt", "python train_unet.py")


class Payload:
    """Unpickling this runs code: it creates a file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_checkpoint_carrying_code_is_refused_and_never_run(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"model": {}, "x": Payload(marker)}, tmp_path / "evil.pt")
    with pytest.raises(UserError, match="evil.pt holds more than tensors.*refused"):
        load_checkpoint(tmp_path / "evil.pt", "python train_unet.py")
    assert not marker.exists()


def test_unknown_word_in_a_prompt_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown word 'dog'.*vocabulary"):
        encode(["a dog"])
