"""The `gpu` preset's model on a GPU: training and sampling speed, and the two Eq. 2 backends.

    python benchmarks/bench_gpu_preset.py --out gpu_preset.json
    python benchmarks/bench_gpu_preset.py --out smoke.json --device cpu --smoke   # what CI runs

1. Stage 0 speed, the same model two ways: fp32 eager with contiguous tensors, and bf16
   autocast with channels_last. Steps/s are timed twice: the full step as stage 0 runs it
   (rendering the web batch on the CPU included) and the model alone (one fixed batch), so you
   can see which one bounds the run. Images/s: DDIM sampling with guidance, 25 steps.
2. The Eq. 2 loss backends in the shared training loop (train_loop.train), started from the
   model of part 1, on a stand-in D_model (web renders with uniform random weights in place of
   reward scores: we test the loss, not the reward): torch, cuda (on a CUDA device) and torch
   with another seed, whose difference is the scale of "noise".
The model sizes default to train_unet.py's gpu preset (a test checks that they agree).
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout
from tiny_rlhf_t2i import seeds  # noqa: E402
from tiny_rlhf_t2i.diffusion import Scheduler, sample  # noqa: E402
from tiny_rlhf_t2i.evaluate import eval_records  # noqa: E402
from tiny_rlhf_t2i.kernels import weighted_mse_cuda, weighted_mse_torch  # noqa: E402
from tiny_rlhf_t2i.train_loop import (Batch, LoopConfig, drop_captions, step_loss,  # noqa: E402
                                      train, web_batch)
from tiny_rlhf_t2i.unet import ModelConfig, TextToImage  # noqa: E402
from tiny_rlhf_t2i.world import CaptionNoise  # noqa: E402

GPU_PRESET = dict(resolution=32, channels=64, text_dim=128, batch_size=256, lr=1e-3)
SMOKE = dict(resolution=16, channels=16, text_dim=32, batch_size=8, lr=1e-3)


def corpus(size: dict) -> dict:
    """A stage-0 config dict for web_batch: the default web corpus at this resolution."""
    return {**dataclasses.asdict(CaptionNoise()), "captions": "web", "corpus_size": 500_000,
            "corpus_seed": 0, "resolution": size["resolution"]}


def sync_time(device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter()


def train_speed(size: dict, device, bf16: bool, steps: int, warmup: int = 3):
    """Steps/s of stage 0's step, full (data included) and model-only; returns the model."""
    fmt = torch.channels_last if bf16 else torch.contiguous_format
    torch.manual_seed(0)
    mcfg = ModelConfig(**{k: size[k] for k in ("resolution", "channels", "text_dim")})
    model = TextToImage(mcfg).to(device, memory_format=fmt).train()
    opt = torch.optim.AdamW(model.parameters(), lr=size["lr"])
    sched, pre = Scheduler(), corpus(size)
    amp = torch.autocast(device.type, torch.bfloat16) if bf16 else contextlib.nullcontext()

    def batch(i):
        rng = seeds.pretrain_batch(0, i)
        x0, ids = web_batch(rng, size["batch_size"], pre)
        drop_captions(ids, rng, 0.1)
        return Batch(x0.to(device, memory_format=fmt), ids.to(device),
                     torch.ones(len(ids), device=device))

    def step(b, i):
        with amp:
            loss = step_loss(model, sched, b, seeds.step_noise(0, i), weighted_mse_torch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        return loss.item()  # stage 0 reads the loss every step too

    for i in range(warmup):
        step(batch(i), i)
    t0 = sync_time(device)
    for i in range(warmup, warmup + steps):
        step(batch(i), i)
    full = steps / (sync_time(device) - t0)
    fixed = batch(0)
    t0 = sync_time(device)
    for i in range(steps):
        step(fixed, i)
    model_only = steps / (sync_time(device) - t0)
    return model.eval(), dict(steps_per_s=full, model_only_steps_per_s=model_only)


def sample_speed(model, device, bf16: bool, n: int) -> float:
    prompts = [r["prompt"] for r in eval_records(16)][:n]
    amp = torch.autocast(device.type, torch.bfloat16) if bf16 else contextlib.nullcontext()
    with amp, torch.no_grad():
        sample(model, prompts[:8], list(range(len(prompts[:8]))), 25, 3.0)  # warmup
        t0 = sync_time(device)
        sample(model, prompts, list(range(len(prompts))), 25, 3.0, batch_size=256)
        return len(prompts) / (sync_time(device) - t0)


def backend_curves(model, size: dict, device, out: Path, steps: int) -> dict:
    """train_loop.train with each loss backend on one stand-in D_model; the loss curves."""
    pre = corpus(size)
    x_all, ids_all = web_batch(np.random.default_rng(0), 1024, pre)  # (1024, 3, H, W), (1024, L)
    w_all = torch.rand(1024, generator=torch.Generator().manual_seed(0))  # stand-in rewards
    n_model = size["batch_size"] // 2
    backends = [("torch", weighted_mse_torch, 0), ("torch_seed1", weighted_mse_torch, 1)]
    if device.type == "cuda":
        backends.insert(1, ("cuda", weighted_mse_cuda, 0))
    curves = {}
    for name, fn, seed in backends:
        cfg = LoopConfig(seed=seed, steps=steps, batch_size=size["batch_size"], lr=5e-4,
                         warmup_steps=min(50, steps))

        def make_batch(step):
            rng = seeds.finetune_batch(seed, step)
            x0, ids = web_batch(rng, size["batch_size"] - n_model, pre)
            idx = torch.from_numpy(rng.integers(0, 1024, n_model))
            w = torch.cat([w_all[idx], torch.full((len(x0),), 0.1)])
            return Batch(torch.cat([x_all[idx], x0]).to(device), torch.cat([ids_all[idx], ids])
                         .to(device), w.to(device), n_model)

        t0 = time.time()
        tuned = TextToImage(model.cfg).to(device)
        tuned.load_state_dict(model.state_dict())
        _, curves[name], _ = train(tuned, cfg, make_batch, out / name / "ckpt.pt",
                                   f"finetune {name}", {}, fn)
        print(f"finetune {name}: {time.time() - t0:.1f} s")
    return curves


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="JSON results file")
    parser.add_argument("--device", default="cuda", help="cuda, or cpu for a smoke run")
    parser.add_argument("--smoke", action="store_true", help="tiny model and batch (CI)")
    parser.add_argument("--steps", type=int, default=100, help="timed training steps per mode")
    parser.add_argument("--ft_steps", type=int, default=150, help="fine-tuning steps per backend")
    parser.add_argument("--sample_n", type=int, default=1024, help="images timed for sampling")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: needs a CUDA device (or --device cpu --smoke)")
    size = SMOKE if args.smoke else GPU_PRESET
    result = dict(device=torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
                  torch=torch.__version__, size=size, speed={})
    model = None
    for name, bf16 in [("fp32_eager", False), ("bf16_channels_last", True)]:
        model, speed = train_speed(size, device, bf16, args.steps)
        speed["images_per_s"] = sample_speed(model, device, bf16, args.sample_n)
        result["speed"][name] = speed
        print(name, {k: round(v, 1) for k, v in speed.items()})
    model = model.float().to(memory_format=torch.contiguous_format)
    curves = backend_curves(model, size, device, args.out.parent / "ft_backends", args.ft_steps)
    base = np.array([v for _, v in curves["torch"]])
    result["loss_curves"] = curves
    for name in curves:
        if name != "torch":
            diff = float(np.max(np.abs(np.array([v for _, v in curves[name]]) - base) / base))
            result[f"max_rel_diff_{name}_vs_torch"] = diff
            print(f"loss curve, max relative difference {name} vs torch: {diff:.2e}")
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
