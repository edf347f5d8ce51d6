"""The `gpu` preset on a GPU: training and sampling speed, and the two Eq. 2 loss backends.

    python benchmarks/bench_gpu_preset.py --out gpu_preset.json

1. Stage 0 speed, the same model (train_unet.py's gpu preset) two ways: fp32 eager with
   contiguous tensors, and bf16 autocast with channels_last (what the preset runs). Steps/s
   are timed twice: the full step as train_unet.py runs it (rendering the web batch on the CPU
   included) and the model alone (one fixed batch), so you can see which one bounds the run.
   Images/s: DDIM sampling with guidance, batch 256, 25 steps, no judging.
2. Stage 3's loss backends (issue: "a gpu-preset fine-tuning run with loss_backend=cuda
   matches loss_backend=torch"): finetune.finetune() at the gpu preset's batch size and model,
   started from the model trained in part 1 (untrained with --steps 0), on a stand-in D_model (web-corpus renders with
   uniform random weights in place of reward scores: we test the loss, not the reward).
   Three runs: torch, cuda, and torch with another seed; the last one is the scale of "noise".
"""
import argparse
import contextlib
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout
import finetune as ft  # noqa: E402
import train_unet  # noqa: E402
from tiny_rlhf_t2i.config import config_dict, parse_config  # noqa: E402
from tiny_rlhf_t2i.diffusion import Scheduler, denoising_loss, sample, to_model_space  # noqa: E402
from tiny_rlhf_t2i.evaluate import eval_records  # noqa: E402
from tiny_rlhf_t2i.kernels import weighted_mse_cuda, weighted_mse_torch  # noqa: E402
from tiny_rlhf_t2i.text import encode  # noqa: E402
from tiny_rlhf_t2i.unet import TextToImage  # noqa: E402
from tiny_rlhf_t2i.world import CaptionNoise, web_corpus_batch  # noqa: E402


DEVICE = torch.device("cuda")


def sync_time() -> float:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter()


def train_speed(cfg, bf16: bool, steps: int, warmup: int = 10):
    """Steps/s of train_unet's step, full (data included) and model-only; returns the model."""
    dev = DEVICE
    fmt = torch.channels_last if bf16 else torch.contiguous_format
    torch.manual_seed(0)
    model = TextToImage(train_unet.model_config(cfg)).to(dev, memory_format=fmt).train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
    sched = Scheduler()
    amp = torch.autocast(DEVICE.type, torch.bfloat16) if bf16 else contextlib.nullcontext()

    def step(x0, ids, i):
        gen = torch.Generator().manual_seed(i)
        with amp:
            loss = denoising_loss(model, sched, x0.contiguous(memory_format=fmt), ids, gen).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        return loss.item()  # train_unet.py reads the loss every step too

    for i in range(warmup):
        step(*train_unet.web_batch(cfg, i, dev), i)
    t0 = sync_time()
    for i in range(warmup, warmup + steps):
        step(*train_unet.web_batch(cfg, i, dev), i)
    full = steps / (sync_time() - t0)
    x0, ids = train_unet.web_batch(cfg, 0, dev)
    t0 = sync_time()
    for i in range(steps):
        step(x0, ids, i)
    model_only = steps / (sync_time() - t0)
    return model.eval(), dict(steps_per_s=full, model_only_steps_per_s=model_only)


def sample_speed(model, bf16: bool, n: int = 1024) -> float:
    prompts = [r["prompt"] for r in eval_records(16)][:n]
    amp = torch.autocast(DEVICE.type, torch.bfloat16) if bf16 else contextlib.nullcontext()
    with amp, torch.no_grad():
        sample(model, prompts[:256], list(range(len(prompts[:256]))), 25, 3.0)  # warmup
        t0 = sync_time()
        sample(model, prompts, list(range(len(prompts))), 25, 3.0, batch_size=256)
        return len(prompts) / (sync_time() - t0)


def backend_curves(pretrained, out: Path, steps: int) -> dict:
    """finetune.finetune() three times on one stand-in D_model; returns the loss curves."""
    res = pretrained.cfg.resolution
    images, captions = web_corpus_batch(np.arange(4096), CaptionNoise(), res)
    d_model = {"x": to_model_space(images), "ids": encode(captions),  # (4096, 3, H, W), (4096, L)
               "reward": torch.rand(4096, generator=torch.Generator().manual_seed(0)),
               "source": ["labeled"] * 4096}
    cfg = parse_config(ft.FinetuneConfig, ft.PRESETS, ["--preset", "gpu", "--steps", str(steps),
                                                       "--out_dir", str(out)])
    spec = dict(weights="reward", labeled=True, unlabeled=False)
    curves = {}
    for name, fn, seed in [("torch", weighted_mse_torch, 0), ("cuda", weighted_mse_cuda, 0),
                           ("torch_seed1", weighted_mse_torch, 1)]:
        t0 = time.time()
        ft.finetune(name, spec, pretrained, d_model, dataclasses.replace(cfg, seed=seed),
                    DEVICE, fn)
        curves[name] = json.loads((out / name / "loss_curve.json").read_text())
        print(f"finetune {name}: {time.time() - t0:.1f} s")
    return curves


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="JSON results file")
    parser.add_argument("--steps", type=int, default=100,
                        help="timed training steps per mode (0: skip part 1)")
    parser.add_argument("--ft_steps", type=int, default=150, help="fine-tuning steps per backend")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("needs a CUDA device")
    cfg = parse_config(train_unet.TrainConfig, train_unet.PRESETS, ["--preset", "gpu"])
    result = dict(device=torch.cuda.get_device_name(), torch=torch.__version__,
                  config=config_dict(cfg), speed={})
    torch.manual_seed(0)
    model = TextToImage(train_unet.model_config(cfg)).to(DEVICE)  # untrained, if --steps 0
    modes = [("fp32_eager", False), ("bf16_channels_last", True)] if args.steps else []
    for name, bf16 in modes:
        model, speed = train_speed(cfg, bf16, args.steps)
        speed["images_per_s"] = sample_speed(model, bf16)
        result["speed"][name] = speed
        print(name, {k: round(v, 1) for k, v in speed.items()})
    model.train_config = config_dict(cfg)  # finetune() reads its D_pre from the stage-0 config
    curves = backend_curves(model.float().to(memory_format=torch.contiguous_format),
                            args.out.parent / "ft_backends", args.ft_steps)
    a, b, c = (np.array([v for _, v in curves[k]]) for k in ("torch", "cuda", "torch_seed1"))
    result["loss_curves"] = curves
    result["max_rel_diff_cuda_vs_torch"] = float(np.max(np.abs(b - a) / a))
    result["max_rel_diff_seed1_vs_seed0"] = float(np.max(np.abs(c - a) / a))
    print(f"loss curve, max relative difference: cuda vs torch {result['max_rel_diff_cuda_vs_torch']:.2e}, "
          f"torch seed 1 vs seed 0 {result['max_rel_diff_seed1_vs_seed0']:.2e}")
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
