"""Speed levers of stage 0's training step and of sampling, side by side on one device.

    python benchmarks/bench_gpu_preset.py --out benchmarks/results/h100_levers.json  # gpu preset
    python benchmarks/bench_gpu_preset.py --preset cpu --device cpu --out cpu_levers.json
    python benchmarks/bench_gpu_preset.py --preset smoke --device cpu --out smoke.json  # CI

Training runs train_loop.train itself (the loop stage 0 runs) on the preset's model and batch,
each lever on top of the ones before it that paid (one that slows the step is dropped again):
  python_data    the code before corpus.py: every web example drawn and rendered in Python, and
                 a wait for the device at every step (the loss was read each step); fp32 eager,
                 contiguous tensors
  table_data     the web corpus as a table on the device, rendered there (corpus.WebCorpus);
                 the loop reads its losses every 50 steps
  tf32           TF32 matmuls (the convolutions use TF32 already); CUDA only
  channels_last  channels-last images and weights
  bf16           bf16 autocast
  compile        torch.compile
`made` rates: the same step on one batch made in advance (the noise is still drawn each step):
what the step costs when data costs nothing. On a GPU, steps/s are timed between two of the
loop's loss reads after 50 steps, so every timed step has finished on the device; on a CPU from
the first step (but after 50 with torch.compile, which compiles at the first).
Sampling (DDIM, 25 steps, guidance): fp32 at each batch size of --sample_batches (stages 1
and 3 sample 128 at a time), then at the fastest of them tf32, bf16, bf16 + channels_last, and
bf16 + channels_last + torch.compile with CUDA graphs ("reduce-overhead").
"""
import argparse
import contextlib
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout
import train_unet  # noqa: E402
from tiny_rlhf_t2i import seeds  # noqa: E402
from tiny_rlhf_t2i.config import parse_config  # noqa: E402
from tiny_rlhf_t2i.corpus import WebCorpus, caption_noise, web_corpus_scenes  # noqa: E402
from tiny_rlhf_t2i.diffusion import sample, to_model_space  # noqa: E402
from tiny_rlhf_t2i.evaluate import eval_records  # noqa: E402
from tiny_rlhf_t2i.scenes import render  # noqa: E402
from tiny_rlhf_t2i.text import encode  # noqa: E402
from tiny_rlhf_t2i.train_loop import Batch, drop_captions, train  # noqa: E402
from tiny_rlhf_t2i.unet import TextToImage, model_config  # noqa: E402

LEVERS = ("python_data", "table_data", "tf32", "channels_last", "bf16", "compile")


def python_batch(rng, n: int, pre: dict, device):
    """The web batch as it was made before corpus.py: one example at a time in Python."""
    scenes, captions = web_corpus_scenes(rng.integers(0, pre["corpus_size"], n),
                                         caption_noise(pre), pre["corpus_seed"])
    images = np.stack([render(s, pre["resolution"]) for s in scenes])
    return to_model_space(images).to(device).contiguous(), encode(captions)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def train_rate(cfg, corpus: WebCorpus, device, levers: set, made: bool, warm: int, timed: int):
    """Stage 0's steps per second with `levers` on: timed steps [warm, warm + timed)."""
    torch.backends.cuda.matmul.allow_tf32 = "tf32" in levers
    fmt = torch.channels_last if "channels_last" in levers else torch.contiguous_format
    pre = dataclasses.asdict(cfg)
    torch.manual_seed(0)
    model = TextToImage(model_config(cfg)).to(device, memory_format=fmt)
    clock = {}

    def make_batch(step: int) -> Batch:
        if "table_data" not in levers:
            sync(device)  # the old loop read the loss, so waited for the device, every step
        clock[step] = time.perf_counter()
        rng = seeds.pretrain_batch(0, 0 if made else step)
        x0, ids = (corpus.batch(rng, cfg.batch_size) if "table_data" in levers
                   else python_batch(rng, cfg.batch_size, pre, device))
        drop_captions(ids, rng, cfg.p_uncond)
        return Batch(x0.contiguous(memory_format=fmt), ids, torch.ones(cfg.batch_size))

    if made:  # the batch is made once, up front
        fixed = make_batch(0)
        make_batch = lambda step: clock.__setitem__(step, time.perf_counter()) or fixed  # noqa
    run = dataclasses.replace(cfg, steps=warm + timed + 1, warmup_steps=10, ckpt_every_s=1e9,
                              bf16="bf16" in levers, compile="compile" in levers)
    with tempfile.TemporaryDirectory() as tmp:
        train(model, run, make_batch, Path(tmp) / "ckpt.pt", "+".join(sorted(levers)), {})
    return timed / (clock[warm + timed] - clock[warm]), model


def sample_rate(model, device, n: int, levers: set, batch: int) -> float:
    torch.backends.cuda.matmul.allow_tf32 = "tf32" in levers
    if "channels_last" in levers:
        model = model.to(memory_format=torch.channels_last)
    if "cuda_graphs" in levers:
        model = torch.compile(model, mode="reduce-overhead")
    prompts = [r["prompt"] for r in eval_records(16)][:n]
    amp = torch.autocast(device.type, torch.bfloat16) if "bf16" in levers else \
        contextlib.nullcontext()
    with amp, torch.no_grad():
        sample(model, prompts[:batch], list(range(len(prompts[:batch]))), 25, 3.0,
               batch_size=batch)  # warm up (and compile)
        sync(device)
        t0 = time.perf_counter()
        sample(model, prompts, list(range(len(prompts))), 25, 3.0, batch_size=batch)
        sync(device)
    return len(prompts) / (time.perf_counter() - t0)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="JSON results file")
    parser.add_argument("--preset", default="gpu", help="train_unet.py preset: gpu, cpu, smoke")
    parser.add_argument("--device", default="cuda", help="cuda or cpu")
    parser.add_argument("--timed", type=int, default=100, help="timed steps (a multiple of 50)")
    parser.add_argument("--sample_n", type=int, default=1024, help="images timed for sampling "
                        "(0: no sampling)")
    parser.add_argument("--sample_batches", default="128,256,1024",
                        help="sampling batch sizes timed in fp32")
    parser.add_argument("--levers", default=",".join(LEVERS), help="levers, in order")
    parser.add_argument("--corpus_cache", type=Path, help="the web corpus table's file (e.g. "
                        "runs/gpu/unet/corpus.pt, which train_unet.py then reads)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    cfg = parse_config(train_unet.TrainConfig, train_unet.PRESETS, ["--preset", args.preset])
    t0 = time.perf_counter()
    corpus = WebCorpus(dataclasses.asdict(cfg), device, args.corpus_cache)
    cuda = device.type == "cuda"
    result = dict(device=torch.cuda.get_device_name() if cuda else "cpu", torch=torch.__version__,
                  preset=args.preset, batch_size=cfg.batch_size, resolution=cfg.resolution,
                  channels=cfg.channels, corpus_seconds=time.perf_counter() - t0,
                  train_steps_per_s={}, sample_images_per_s={}, failed={})
    save = lambda: args.out.write_text(json.dumps(result, indent=2))  # noqa: E731
    args.out.parent.mkdir(parents=True, exist_ok=True)
    levers, model, best = set(), None, 0.0
    order = [lv for lv in args.levers.split(",") if cuda or lv != "tf32"]
    for lever in order:
        levers.add(lever)
        name = "+".join(lv for lv in order if lv in levers)  # what this measurement has on
        # the slow Python data path: fewer steps, timed between any two (it waits every step)
        warm = 50 if cuda or lever == "compile" else 0
        warm, timed = (5, 20) if lever == "python_data" else (warm, args.timed)
        try:
            rate, model = train_rate(cfg, corpus, device, levers, False, warm, timed)
        except Exception as e:  # e.g. torch.compile without a working compiler: say so, go on
            result["failed"][name] = repr(e)[:500]
            levers.discard(lever)
            save()
            continue
        result["train_steps_per_s"][name] = rate
        print(f"train {name}: {rate:.1f} steps/s", flush=True)
        if lever in ("python_data", order[-1]):
            made, _ = train_rate(cfg, corpus, device, levers | {"table_data"}, True, warm,
                                 args.timed)
            result["train_steps_per_s"][name + " (batch made)"] = made
            print(f"train {name}, batch made: {made:.1f} steps/s", flush=True)
        if rate < best:  # it did not pay: the next lever goes on top of the ones that did
            levers.discard(lever)
        best = max(best, rate)
        save()
    model = model.eval()
    batches = [int(b) for b in args.sample_batches.split(",")]
    samplers = [(f"fp32 batch {b}", b) for b in batches] + [
        (name, None) for name in ("tf32", "bf16", "bf16+channels_last",
                                  "bf16+channels_last+cuda_graphs")]
    rates = result["sample_images_per_s"]
    for name, batch in samplers if args.sample_n else ():
        if not cuda and ("tf32" in name or "cuda_graphs" in name):
            continue
        batch = batch or max(batches, key=lambda b: rates.get(f"fp32 batch {b}", 0))
        levers = set(name.split(" ")[0].split("+"))
        try:
            rate = sample_rate(model, device, max(args.sample_n, batch), levers, batch)
        except Exception as e:
            result["failed"]["sample " + name] = repr(e)[:500]
            save()
            continue
        name = name if "batch" in name else f"{name} batch {batch}"
        rates[name] = rate
        print(f"sample {name}: {rate:.0f} images/s", flush=True)
        save()
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
