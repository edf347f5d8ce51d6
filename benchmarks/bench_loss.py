"""Benchmark the Eq. 2 loss of Lee et al. 2023, forward + backward, three ways.

    python benchmarks/bench_loss.py --out bench_loss.json

Compares the fused CUDA kernel (tiny_rlhf_t2i.kernels.weighted_mse_cuda), the eager
PyTorch reference and torch.compile of that reference. Each time is the median over
--runs of one forward plus the grad wrt eps_hat (the training case), measured with
CUDA events. GB/s counts the bytes an ideal fused implementation moves: the forward
reads eps_hat and eps, the backward reads them again and writes grad_eps_hat, so
5 * B*C*H*W * itemsize (w and the scalar loss are negligible). That is set against
the device's copy bandwidth: (read + write) bytes / time of a large tensor .copy_.
"""

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout
from tiny_rlhf_t2i.kernels import weighted_mse_cuda, weighted_mse_torch  # noqa: E402

SHAPES = {"train": (256, 3, 32, 32), "large": (1024, 4, 128, 128)}  # large: 256 MiB per fp32 input
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def time_ms(fn, runs: int, warmup: int = 3) -> float:
    """Median wall time of fn() on the GPU, in ms, from CUDA events around each call."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def copy_bandwidth_gbs(runs: int, nbytes: int = 1 << 30) -> float:
    """Device-to-device copy bandwidth: 2 * nbytes (read + write) per .copy_."""
    src = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    ms = time_ms(lambda: dst.copy_(src), runs)
    del src, dst
    return 2 * nbytes / (ms * 1e-3) / 1e9


def fwd_bwd(loss_fn, eps_hat, eps, w):
    """One training-style step of the loss: forward, then d loss / d eps_hat only."""
    def step():
        loss = loss_fn(eps_hat, eps, w)
        return torch.autograd.grad(loss, [eps_hat])[0]
    return step


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    parser.add_argument("--runs", type=int, default=20, help="timed runs per case (median)")
    parser.add_argument("--sizes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("CUDA not available: nothing to benchmark")
        return

    copy_gbs = copy_bandwidth_gbs(args.runs)
    impls = {"cuda": weighted_mse_cuda, "eager": weighted_mse_torch}
    if not args.no_compile:
        impls["compile"] = torch.compile(weighted_mse_torch)
    rows = []
    for size in args.sizes:
        for dname, dtype in DTYPES.items():
            shape = SHAPES[size]
            eps_hat = torch.randn(shape, device="cuda", dtype=dtype,
                                  requires_grad=True)  # (B, C, H, W)
            eps = torch.randn(shape, device="cuda", dtype=dtype)  # (B, C, H, W)
            w = torch.rand(shape[0], device="cuda")  # (B,)
            ideal_bytes = 5 * eps.numel() * eps.element_size()
            # Sanity check before timing: a fast wrong answer is not a result.
            ref = weighted_mse_torch(eps_hat, eps, w)
            torch.testing.assert_close(weighted_mse_cuda(eps_hat, eps, w), ref, rtol=1e-4, atol=0)
            for impl, fn in impls.items():
                try:
                    ms = time_ms(fwd_bwd(fn, eps_hat, eps, w), args.runs)
                except Exception as e:  # e.g. torch.compile without a working Triton
                    print(f"{impl} failed on {size} {dname}: {str(e).splitlines()[0]}")
                    continue
                gbs = ideal_bytes / (ms * 1e-3) / 1e9
                rows.append(dict(size=size, shape=list(shape), dtype=dname, impl=impl, ms=ms,
                                 gbs=gbs, pct_of_copy=100 * gbs / copy_gbs))
            del eps_hat, eps, w, ref
            torch.cuda.empty_cache()

    device = torch.cuda.get_device_name()
    print(f"\n{device}, device-to-device copy: {copy_gbs:.0f} GB/s, median of {args.runs} runs\n")
    print("| size | shape | dtype | impl | fwd+bwd ms | GB/s | % of copy BW |")
    print("|---|---|---|---|---:|---:|---:|")
    for r in rows:
        print(f"| {r['size']} | {tuple(r['shape'])} | {r['dtype']} | {r['impl']} "
              f"| {r['ms']:.3f} | {r['gbs']:.0f} | {r['pct_of_copy']:.0f}% |")
    if args.out is not None:
        result = dict(device=device, torch=torch.__version__, copy_gbs=copy_gbs, runs=args.runs,
                      rows=rows)
        args.out.write_text(json.dumps(result, indent=2))
        print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
