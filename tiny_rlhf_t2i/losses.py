"""The paper's two losses, each in one short function (Lee et al. 2023).

Eq. 1, reward learning:  L(phi) = E[(y - r_phi(x, z))^2]
                                 + lambda * E_{y=1}[ -log softmax_j(r_phi(x, z_j) / T)_{true} ]
Eq. 2, fine-tuning:      L(theta) = E_{D_model}[ -r_phi(x, z) log p_theta(x | z) ]
                                   + beta * E_{D_pre}[ -log p_theta(x | z) ]
with -log p_theta replaced by the epsilon-prediction denoising loss (Ho et al. 2020, Eq. 14).
Stage 0's pretraining loss is Eq. 2 with no D_model rows and every weight 1.
Beside Eq. 2, not in the paper: the anchor, lambda * E_{D_model} KL(p_theta || p_pre) per
denoising step, which keeps the fine-tuned model close to the frozen pretrained one (DPOK,
Fan et al. 2023).
"""
import torch
import torch.nn.functional as F


# ------------------------------------------------------------------ Eq. 1: the reward model
def prompt_classification_loss(scores: torch.Tensor, temperature: float) -> torch.Tensor:
    """Auxiliary loss of Eq. 1: scores (B, N) = r(x, z_j) for the true prompt (column 0) and
    N-1 prompts with one attribute changed; cross-entropy of softmax(scores / T) to column 0."""
    target = torch.zeros(scores.shape[0], dtype=torch.long, device=scores.device)
    return F.cross_entropy(scores / temperature, target)


def reward_loss(pred: torch.Tensor, label: torch.Tensor, aug_scores: torch.Tensor | None,
                lam: float, temperature: float) -> torch.Tensor:
    """Eq. 1: MSE to the binary label (B,) + lambda * prompt classification on good images.
    aug_scores: (G, N) scores of the G good images against their N candidate prompts."""
    loss = F.mse_loss(pred, label.float())
    if lam > 0 and aug_scores is not None and len(aug_scores):
        loss = loss + lam * prompt_classification_loss(aug_scores, temperature)
    return loss


# ------------------------------------------------------------------ Eq. 2: fine-tuning
def weighted_mse(eps_hat: torch.Tensor, eps: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """sum_b w_b * mean_j (eps_hat[b, j] - eps[b, j])^2 / B, an fp32 scalar: the reference that
    the optional fused CUDA kernel (kernels/) replaces.
    eps_hat, eps: (B, C, H, W) predicted and true noise, any float dtype; w: (B,) weights >= 0."""
    per_sample = (eps_hat.float() - eps.float()).pow(2).flatten(1).mean(1)  # (B,)
    return (w.float() * per_sample).sum() / eps_hat.shape[0]  # ()


def min_snr_weights(abar: torch.Tensor, gamma: float) -> torch.Tensor:
    """Min-SNR-gamma loss weighting (Hang et al. 2023, Eq. 13), as a weight on the epsilon loss.
    abar: (B,) -> (B,). Every denoising loss is a weighted x_0 loss: eps-MSE = SNR_t x_0-MSE
    with SNR_t = abar_t / (1 - abar_t). Min-SNR weighs the x_0 loss by min(SNR_t, gamma): the
    low-noise steps (large SNR), whose gradients fight the high-noise steps', weigh less, and on
    the epsilon loss that is min(SNR_t, gamma) / SNR_t. The v loss weighted by
    min(SNR_t, gamma) / (SNR_t + 1), the paper's v form, is this same loss."""
    snr = abar / (1 - abar)
    return snr.clamp(max=gamma) / snr


def eq2_weights(rewards: torch.Tensor, n_pre: int, beta: float) -> torch.Tensor:
    """Per-sample weights of a batch [D_model half; D_pre half]: the rewards, then beta.
    Rewards are clamped at 0: a negative weight would *maximize* the likelihood of bad images."""
    return torch.cat([rewards.clamp(min=0), torch.full((n_pre,), beta, device=rewards.device)])


def kl_step_weights(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """The weight of ||eps_theta - eps_pre||^2 in the KL between two models' denoising steps at
    each timestep, (T,), scaled to mean 1 over t (so the anchor's lambda means the same for any
    weighting).

    Derivation. A DDPM reverse step is p(x_{t-1} | x_t) = N(mu(x_t, t), sigma_t^2 I) with
        mu = (x_t - beta_t / sqrt(1 - abar_t) * eps(x_t, t)) / sqrt(alpha_t),
    alpha_t = 1 - beta_t = abar_t / abar_{t-1}. Two models that share sigma_t differ only in
    their means, so
        KL(p_theta || p_pre) = ||mu_theta - mu_pre||^2 / (2 sigma_t^2)
                             = beta_t^2 / (2 sigma_t^2 alpha_t (1 - abar_t)) ||eps_theta - eps_pre||^2
    and with sigma_t^2 = beta_t (Ho et al. 2020's choice) the weight is
        w_t = beta_t / (2 alpha_t (1 - abar_t)),
    about 1 / (2 (t + 1)) at the lowest noise and tiny in the middle: the KL is
    spent on the lowest-noise steps, which draw edges and corners. The cosine schedule's last
    steps have beta_t -> 0.999 (clamped), where w_t grows without bound although our few-step
    sampler never takes such a step: w is capped at the first step's weight."""
    abar = alphas_cumprod.double()
    abar_prev = torch.cat([abar.new_ones(1), abar[:-1]])
    beta = 1 - abar / abar_prev  # (T,)
    w = beta / (2 * (1 - beta) * (1 - abar))  # (T,)
    w = w.clamp(max=w[0].item())
    return (w / w.mean()).float()


def anchor_loss(eps_hat: torch.Tensor, eps_pre: torch.Tensor,
                step_weights: torch.Tensor) -> torch.Tensor:
    """The KL anchor to the pretrained model on the D_model rows, an fp32 scalar:
        (1/N) sum_i a(t_i) * mean_j (eps_hat[i, j] - eps_pre[i, j])^2
    eps_hat: (N, C, H, W) the fine-tuned model's noise prediction at (x_t, t, z) of an own
    sample; eps_pre: (N, C, H, W) the frozen pretrained model's at the same input; step_weights:
    (N,) a(t_i), the per-step KL's weight (kl_step_weights). Each own sample's
    KL is summed over the steps of its chain; drawing t uniformly estimates that sum, as the
    denoising loss estimates -log p. It is 0 while the model equals the pretrained one, and,
    unlike the reward-weighted term, it is the same for good and bad samples."""
    per_sample = (eps_hat.float() - eps_pre.float()).pow(2).flatten(1).mean(1)  # (N,)
    return (step_weights.float() * per_sample).mean()  # ()


def balance_groups(weights: torch.Tensor, groups: list[str]) -> torch.Tensor:
    """Rescale D_model weights (N,) so that each group of prompts holds a share of the total
    weight equal to its share of the images, whatever its success rate. Not in the paper.

    Why: with plain Eq. 2 a group the pretrained model rarely gets right ("three ...") holds a
    tiny share of the total weight and one it already gets right ("four ...") a large one, so
    fine-tuning mostly repeats what the model can already do. Within a group the weights keep
    their ratios and the total weight is unchanged (beta keeps its meaning). Only a group that
    holds at least one image its weights call good (w >= 0.5) is rescaled: a group with none
    keeps its plain weights, and its share goes to the others. Without that guard a hopeless
    group's share would go to whichever of its bad images the reward ranks highest (a sigmoid
    reward is never exactly 0), often malformed ones. A good image of a rare group may weigh
    several times 1 (with gold weights, a good "three" weighs the inverse of that group's
    success rate, several times a color prompt's)."""
    masks = [torch.tensor([h == g for h in groups]) for g in sorted(set(groups))]  # (N,) each
    live = [m for m in masks if (weights[m] >= 0.5).any()]
    if not live:  # no image is called good: nothing to rescale
        return weights.clone()
    out = weights.clone()
    mass = sum(weights[m].sum() for m in live)  # what the live groups share
    n_live = sum(int(m.sum()) for m in live)
    for m in live:
        out[m] = weights[m] / weights[m].sum() * mass * int(m.sum()) / n_live
    return out


def finetune_loss(eps_hat: torch.Tensor, eps: torch.Tensor, weights: torch.Tensor,
                  n_model: int, mse=weighted_mse) -> torch.Tensor:
    """Eq. 2 on one batch whose first n_model rows come from D_model and the rest from D_pre.

    eps_hat, eps: (B, C, H, W); weights: (B,) from `eq2_weights`. Each expectation of Eq. 2 is
    a mean over its own half, so with n_model = n_pre = B/2 the loss is
        (1/n_model) sum_i r_i l_i + beta (1/n_pre) sum_j l_j = 2 * weighted_mse(eps_hat, eps, w)
    where weighted_mse = sum_b w_b l_b / B (`mse`: the reference, or the fused CUDA kernel)."""
    B = eps_hat.shape[0]
    n_pre = B - n_model
    if n_model == 0 or n_pre == 0:  # one half only (e.g. the control: D_pre alone)
        return mse(eps_hat, eps, weights)
    # rescale so each half is averaged over its own size even when the split is not 50/50
    scale = torch.cat([torch.full((n_model,), B / (2 * n_model)),
                       torch.full((n_pre,), B / (2 * n_pre))]).to(weights)
    return 2 * mse(eps_hat, eps, weights * scale)
