"""Optional CUDA kernel for the reward-weighted denoising loss (Eq. 2 of Lee et al. 2023).

    loss = (1 / B) * sum_b w_b * mean_j (eps_hat[b, j] - eps[b, j])^2

`weighted_mse_torch` is the plain PyTorch reference (losses.weighted_mse: the kernel depends
on the core, never the other way round). `weighted_mse_cuda` computes the
same thing with one fused forward kernel and one fused backward kernel
(weighted_mse.cu), so the (B, C, H, W) difference and its square are never written
to memory. The extension is compiled with torch.utils.cpp_extension.load on the
first call, never at import, so this module imports fine without CUDA or nvcc.
`resolve_loss_backend` picks one of the two from a config string.

Why only one kernel: the reward model's prompt-classification cross-entropy runs
over (B, N) logits with a handful of classes, so it is bound by launch overhead,
not by memory or arithmetic, and a custom kernel cannot win much; the DDIM update
is a 3-input elementwise op that torch.compile already fuses into one kernel.
Even for this loss, torch.compile of the reference should come close (see
benchmarks/bench_loss.py); the hand-written kernel is mostly here to be read.
"""

from pathlib import Path

import torch

from ..losses import weighted_mse as weighted_mse_torch

BACKENDS = ("auto", "torch", "cuda")
_SRC_DIR = Path(__file__).resolve().parent
_ext = None  # the compiled extension module, once built
_build_error = None  # one-line reason the build failed, once it has


def _first_error_line(message: str) -> str:
    """The first line of a build log that looks like an error (torch's own header first)."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    for line in lines[1:]:  # lines[0] is usually "Error building extension '...'"
        if "error" in line.lower():
            return line
    return lines[0] if lines else "unknown error"


def _load_extension():
    """Build (first call only; cached on disk by torch) and return the extension."""
    global _ext, _build_error
    if not torch.cuda.is_available():
        raise RuntimeError("CUDA loss kernel unavailable: no CUDA device "
                           "(torch.cuda.is_available() is False)")
    if _ext is None and _build_error is None:
        from torch.utils.cpp_extension import load  # imported here: only needed to build

        try:
            _ext = load(
                name="tiny_rlhf_t2i_weighted_mse",
                sources=[str(_SRC_DIR / "weighted_mse.cpp"), str(_SRC_DIR / "weighted_mse.cu")],
                extra_cuda_cflags=["-O3"],  # no --use_fast_math: keep parity with the reference
            )
        except Exception as e:  # a compiler error, missing nvcc, CUDA version mismatch, ...
            _build_error = f"CUDA loss kernel build failed: {_first_error_line(str(e))}"
    if _build_error is not None:
        raise RuntimeError(_build_error)
    return _ext


class _WeightedMSE(torch.autograd.Function):
    """Autograd wrapper: the forward saves per_sample (B,) so that d/dw_b = per_sample_b / B."""

    @staticmethod
    def forward(ctx, eps_hat, eps, w):
        ext = _load_extension()
        if w.shape != (eps_hat.shape[0],):
            raise ValueError(f"w must have shape ({eps_hat.shape[0]},), got {tuple(w.shape)}")
        # The kernels index rows of N = C*H*W consecutive elements, hence .contiguous().
        eps_hat, eps = eps_hat.contiguous(), eps.contiguous()  # (B, C, H, W)
        w32 = w.detach().float().contiguous()  # (B,)
        loss, per_sample = ext.forward(eps_hat, eps, w32)  # (), (B,)
        ctx.save_for_backward(eps_hat, eps, w32, per_sample)
        ctx.w_dtype = w.dtype
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        eps_hat, eps, w32, per_sample = ctx.saved_tensors
        need_hat, need_eps, need_w = ctx.needs_input_grad
        grad_hat = grad_eps = grad_w = None
        g = grad_loss.float().reshape(1).contiguous()  # stays on the device: no sync
        if need_hat or need_eps:
            grad_hat, grad_eps = _load_extension().backward(g, eps_hat, eps, w32, need_hat,
                                                            need_eps)
        if need_w:
            grad_w = (g * per_sample / eps_hat.shape[0]).to(ctx.w_dtype)  # (B,)
        return grad_hat, grad_eps, grad_w


def weighted_mse_cuda(eps_hat: torch.Tensor, eps: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Eq. 2 of Lee et al. 2023 with the fused CUDA kernels; same contract as weighted_mse_torch.

    eps_hat, eps: (B, C, H, W) CUDA tensors of one dtype (fp32, bf16 or fp16).
    w: (B,) weights, any float dtype. Returns an fp32 scalar; grads come back in the
    input dtypes. Builds the extension on the first call (RuntimeError if it can't).
    """
    return _WeightedMSE.apply(eps_hat, eps, w)


def _cuda_unavailable_reason():
    """None if the fused kernel can be used here, else a short reason why not."""
    try:
        _load_extension()
    except RuntimeError as e:
        return str(e)
    return None


def resolve_loss_backend(name: str):
    """Map a config string to a loss function and print one line saying which and why.

    "torch" -> weighted_mse_torch; "cuda" -> weighted_mse_cuda (RuntimeError if it
    can't be used); "auto" -> cuda when a device is present and the build works,
    else torch.
    """
    if name not in BACKENDS:
        raise ValueError(f"unknown loss backend {name!r}; valid names: {', '.join(BACKENDS)}")
    if name == "torch":
        print("loss backend: torch (requested)")
        return weighted_mse_torch
    reason = _cuda_unavailable_reason()
    if name == "cuda" and reason is not None:
        raise RuntimeError(f"loss backend 'cuda' requested but {reason}")
    if reason is None:
        why = "requested" if name == "cuda" else "auto: CUDA device found, fused kernel built"
        print(f"loss backend: cuda ({why})")
        return weighted_mse_cuda
    print(f"loss backend: torch (auto: {reason})")
    return weighted_mse_torch


__all__ = ["BACKENDS", "weighted_mse_torch", "weighted_mse_cuda", "resolve_loss_backend"]
