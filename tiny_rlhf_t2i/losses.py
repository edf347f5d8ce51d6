"""The paper's two losses, each in one short function (Lee et al. 2023).

Eq. 1, reward learning:  L(phi) = E[(y - r_phi(x, z))^2]
                                 + lambda * E_{y=1}[ -log softmax_j(r_phi(x, z_j) / T)_{true} ]
Eq. 2, fine-tuning:      L(theta) = E_{D_model}[ -r_phi(x, z) log p_theta(x | z) ]
                                   + beta * E_{D_pre}[ -log p_theta(x | z) ]
with -log p_theta replaced by the epsilon-prediction denoising loss (Ho et al. 2020, Eq. 14).
Stage 0's pretraining loss is Eq. 2 with no D_model rows and every weight 1.
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


def eq2_weights(rewards: torch.Tensor, n_pre: int, beta: float) -> torch.Tensor:
    """Per-sample weights of a batch [D_model half; D_pre half]: the rewards, then beta.
    Rewards are clamped at 0: a negative weight would *maximize* the likelihood of bad images."""
    return torch.cat([rewards.clamp(min=0), torch.full((n_pre,), beta, device=rewards.device)])


def balance_groups(weights: torch.Tensor, groups: list[str]) -> torch.Tensor:
    """Rescale D_model weights (N,) so that each group of prompts holds a share of the total
    weight equal to its share of the images, whatever its success rate. Not in the paper.

    Why: with plain Eq. 2 a group the pretrained model rarely gets right ("three ...") holds a
    tiny share of the total weight and one it already gets right ("four ...") a large one, so
    fine-tuning mostly repeats what the model can already do. Within a group the weights keep
    their ratios and the total weight is unchanged (beta keeps its meaning); a group whose
    weights are all 0 stays at 0 and its share goes to the others. A good image of a rare group
    may weigh several times 1 (with gold weights, a good "three" weighs the inverse of that
    group's success rate, several times a color prompt's)."""
    masks = [torch.tensor([h == g for h in groups]) for g in set(groups)]  # one (N,) per group
    live = [m for m in masks if weights[m].sum() > 0]
    if not live:  # every weight is 0: nothing to rescale
        return weights.clone()
    per_image = weights.sum() / sum(int(m.sum()) for m in live)  # weight per image
    out = torch.zeros_like(weights)
    for m in live:
        out[m] = weights[m] / weights[m].sum() * m.sum() * per_image
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
