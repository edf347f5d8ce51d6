"""Tests for tiny_rlhf_t2i.kernels: the Eq. 2 loss (Lee et al. 2023) and its CUDA kernel.

CPU tests always run. CUDA tests need a device. The nvcc-only build test is slow
(tens of seconds) and runs only with RUN_SLOW=1.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from tiny_rlhf_t2i import kernels
from tiny_rlhf_t2i.kernels import resolve_loss_backend, weighted_mse_cuda, weighted_mse_torch

KERNEL_DIR = Path(kernels.__file__).resolve().parent
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def reference(eps_hat, eps, w):
    """Private copy of the Eq. 2 reference, so a change to the package can't hide a bug."""
    per_sample = (eps_hat.float() - eps.float()).pow(2).flatten(1).mean(1)  # (B,)
    return (w.float() * per_sample).sum() / eps_hat.shape[0]


# ---------------------------------------------------------------- CPU: always run


def test_import_does_not_build():
    # A fresh interpreter in which any attempt to compile raises: importing must not try.
    code = (
        "import torch.utils.cpp_extension as c\n"
        "def boom(*a, **k): raise AssertionError('compiled at import')\n"
        "c.load = c.load_inline = boom\n"
        "import tiny_rlhf_t2i.kernels as k\n"
        "assert k._ext is None\n"
    )
    root = str(KERNEL_DIR.parents[1])
    env = {**os.environ, "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}
    subprocess.run([sys.executable, "-c", code], check=True, env=env)


def test_auto_falls_back_to_torch_without_cuda(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_loss_backend("auto") is weighted_mse_torch
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1 and "torch" in lines[0] and "no CUDA device" in lines[0]


def test_cuda_backend_raises_clearly_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match="no CUDA device") as info:
        resolve_loss_backend("cuda")
    assert "\n" not in str(info.value)


def test_build_failure_is_one_clear_line(monkeypatch, capsys):
    # Pretend a GPU exists but nvcc fails: "cuda" must name the compiler error, "auto" fall back.
    import torch.utils.cpp_extension as cpp_extension

    def failing_load(*args, **kwargs):
        raise RuntimeError("Error building extension 'x': [1/3] nvcc ...\n"
                           "weighted_mse.cu(9): error: bad thing\nmore compiler output")

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(cpp_extension, "load", failing_load)
    monkeypatch.setattr(kernels, "_ext", None)
    monkeypatch.setattr(kernels, "_build_error", None)
    with pytest.raises(RuntimeError, match=r"build failed: weighted_mse.cu\(9\): error: bad thing$"):
        resolve_loss_backend("cuda")
    assert resolve_loss_backend("auto") is weighted_mse_torch
    assert "bad thing" in capsys.readouterr().out


def test_autograd_wiring_with_a_fake_extension(monkeypatch):
    # The Python half of weighted_mse_cuda on CPU: an extension stand-in that follows
    # the binding's contract and the kernels' formulas, checked against the reference.
    class FakeExt:
        def forward(self, eps_hat, eps, w32):
            assert eps_hat.is_contiguous() and eps.is_contiguous() and w32.dtype == torch.float32
            per_sample = (eps_hat.float() - eps.float()).pow(2).flatten(1).mean(1)  # (B,)
            return (w32 * per_sample).sum() / eps_hat.shape[0], per_sample

        def backward(self, g, eps_hat, eps, w32, need_hat, need_eps):
            B, N = eps_hat.shape[0], eps_hat[0].numel()
            scale = (2 * g * w32 / (N * B)).view(B, *[1] * (eps_hat.dim() - 1))
            grad = scale * (eps_hat.float() - eps.float())
            return (grad.to(eps_hat.dtype) if need_hat else None,
                    (-grad).to(eps.dtype) if need_eps else None)

    monkeypatch.setattr(kernels, "_load_extension", lambda: FakeExt())
    g = torch.Generator().manual_seed(0)
    base = torch.randn(3, 2, 5, 4, generator=g, dtype=torch.float64)
    inputs = [base.transpose(2, 3), torch.randn(3, 2, 4, 5, generator=g, dtype=torch.float64),
              torch.rand(3, generator=g, dtype=torch.float16)]
    leaves = [t.clone().requires_grad_() for t in inputs]
    ref_leaves = [t.clone().requires_grad_() for t in inputs]
    loss, ref = weighted_mse_cuda(*leaves), reference(*ref_leaves)
    torch.testing.assert_close(loss, ref)
    for got, want in zip(torch.autograd.grad(2 * loss, leaves), torch.autograd.grad(2 * ref, ref_leaves)):
        assert got.dtype == want.dtype
        torch.testing.assert_close(got, want)


def test_torch_backend_and_bad_name(capsys):
    assert resolve_loss_backend("torch") is weighted_mse_torch
    assert len(capsys.readouterr().out.strip().splitlines()) == 1
    with pytest.raises(ValueError, match="auto, torch, cuda"):
        resolve_loss_backend("triton")


def test_weighted_mse_torch_by_hand():
    # B = 2 samples of shape (1, 1, 2), weights [1, 0.5]:
    #   sample 0: eps_hat - eps = [1 - 0, 2 - 0]  -> squares [1, 4]  -> mean 2.5
    #   sample 1: eps_hat - eps = [0 - 1, 4 - 0]  -> squares [1, 16] -> mean 8.5
    #   loss = (1 * 2.5 + 0.5 * 8.5) / 2 = (2.5 + 4.25) / 2 = 3.375
    eps_hat = torch.tensor([[1.0, 2.0], [0.0, 4.0]]).view(2, 1, 1, 2)
    eps = torch.tensor([[0.0, 0.0], [1.0, 0.0]]).view(2, 1, 1, 2)
    loss = weighted_mse_torch(eps_hat, eps, torch.tensor([1.0, 0.5]))
    assert loss.dtype == torch.float32 and loss.shape == ()
    assert loss.item() == 3.375


def test_weighted_mse_torch_unit_weights_is_mse():
    g = torch.Generator().manual_seed(0)
    eps_hat, eps = torch.randn(2, 4, 3, 8, 8, generator=g)
    for dtype in (torch.float32, torch.bfloat16):
        a, b = eps_hat.to(dtype), eps.to(dtype)
        expected = F.mse_loss(a.float(), b.float())  # equal N per sample -> mean of means
        torch.testing.assert_close(weighted_mse_torch(a, b, torch.ones(4)), expected)


# ---------------------------------------------------------------- CUDA parity

SHAPES = [(3, 3, 7, 5), (1, 4, 16, 16), (5, 1, 1, 1), (2, 3, 64, 64), (4, 4, 8, 8), (7, 3, 9, 1)]
# (rtol, atol) for a grad of this dtype. Low-precision grads are fp32 values rounded
# once, so kernel and reference may land one ulp apart; the loss is always fp32.
TOLS = {torch.float32: (1e-6, 1e-9), torch.bfloat16: (1e-2, 1e-7), torch.float16: (1e-3, 1e-7)}


def _inputs(shape, dtype, w_dtype=torch.float32, seed=0, zero_some_w=False):
    g = torch.Generator(device="cuda").manual_seed(seed)
    eps_hat = torch.randn(shape, generator=g, device="cuda").to(dtype)
    eps = torch.randn(shape, generator=g, device="cuda").to(dtype)
    w = torch.rand(shape[0], generator=g, device="cuda")
    if zero_some_w:
        w[::2] = 0
    return eps_hat, eps, w.to(w_dtype)


def _check(eps_hat, eps, w, dtype):
    """Loss and grads wrt all three inputs of the kernel vs the reference."""
    leaves = [t.detach().clone().requires_grad_() for t in (eps_hat, eps, w)]
    ref_leaves = [t.detach().clone().requires_grad_() for t in (eps_hat, eps, w)]
    loss, ref = weighted_mse_cuda(*leaves), reference(*ref_leaves)
    assert loss.dtype == torch.float32 and loss.shape == ()
    torch.testing.assert_close(loss, ref, rtol=1e-6 if dtype == torch.float32 else 1e-5, atol=1e-9)
    grads = torch.autograd.grad(loss * 3.0, leaves)  # a non-unit upstream grad
    ref_grads = torch.autograd.grad(ref * 3.0, ref_leaves)
    for got, want, leaf in zip(grads, ref_grads, leaves):
        assert got.dtype == leaf.dtype and got.shape == leaf.shape
        rtol, atol = TOLS[leaf.dtype]  # grads come back in each input's own dtype
        torch.testing.assert_close(got, want, rtol=rtol, atol=atol)


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", SHAPES)
def test_cuda_parity(shape, dtype):
    _check(*_inputs(shape, dtype), dtype)


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_zero_weights_and_half_weights(dtype):
    _check(*_inputs((6, 3, 7, 5), dtype, w_dtype=torch.float16, zero_some_w=True), dtype)
    eps_hat, eps, w = _inputs((3, 2, 4, 4), dtype)
    assert weighted_mse_cuda(eps_hat, eps, torch.zeros_like(w)).item() == 0.0


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_non_contiguous_and_misaligned(dtype):
    eps_hat, eps, w = _inputs((4, 3, 16, 16), dtype)
    _check(eps_hat.transpose(2, 3), eps.transpose(2, 3), w, dtype)
    _check(eps_hat[:, :, ::2], eps[:, :, 1::2], w, dtype)  # strided views
    # Storage offset by one element: no row starts 16-byte aligned -> scalar path only.
    flat_hat = torch.randn(eps_hat.numel() + 1, device="cuda").to(dtype)
    flat_eps = torch.randn(eps.numel() + 1, device="cuda").to(dtype)
    _check(flat_hat[1:].view(eps_hat.shape), flat_eps[1:].view(eps.shape), w, dtype)


@needs_cuda
def test_cuda_only_some_grads():
    eps_hat, eps, w = _inputs((3, 3, 7, 5), torch.float32)
    eps_hat.requires_grad_()
    loss = weighted_mse_cuda(eps_hat, eps, w)  # typical training call: only eps_hat
    (g,) = torch.autograd.grad(loss, [eps_hat])
    ref_hat = eps_hat.detach().clone().requires_grad_()
    (ref,) = torch.autograd.grad(reference(ref_hat, eps, w), [ref_hat])
    torch.testing.assert_close(g, ref, rtol=1e-6, atol=1e-9)


@needs_cuda
def test_auto_picks_cuda_on_a_gpu(capsys):
    assert resolve_loss_backend("auto") is weighted_mse_cuda
    assert "cuda" in capsys.readouterr().out


# ---------------------------------------------------------------- slow: nvcc alone


def _nvcc():
    found = shutil.which("nvcc")
    return found or ("/usr/local/cuda/bin/nvcc" if Path("/usr/local/cuda/bin/nvcc").exists() else None)


@pytest.mark.skipif(os.environ.get("RUN_SLOW") != "1", reason="slow: set RUN_SLOW=1")
@pytest.mark.skipif(_nvcc() is None, reason="needs nvcc")
def test_nvcc_compiles_kernel(tmp_path):
    from torch.utils.cpp_extension import include_paths

    # The same defines torch passes to nvcc, so the explicit fp16/bf16 conversions are tested.
    no_implicit = ["-D__CUDA_NO_HALF_OPERATORS__", "-D__CUDA_NO_HALF_CONVERSIONS__",
                   "-D__CUDA_NO_BFLOAT16_CONVERSIONS__", "-D__CUDA_NO_HALF2_OPERATORS__"]
    cmd = [_nvcc(), "-c", str(KERNEL_DIR / "weighted_mse.cu"), "-o", str(tmp_path / "weighted_mse.o"),
           "-std=c++20", "-O3", *no_implicit, *(f"-I{p}" for p in include_paths())]
    result = subprocess.run(cmd, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "weighted_mse.o").stat().st_size > 0
