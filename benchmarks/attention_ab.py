"""Attention written out (softmax(Q K^T / sqrt(d)) V) against torch's fused
scaled_dot_product_attention, which text.Attention calls: the speed of stage 0's training step
and of the evaluation's sampling on this CPU, and how far the outputs differ.

    python benchmarks/attention_ab.py --out benchmarks/results/cpu_attention_ab.json

The cross-attention's keys are a prompt's few tokens, so each call is many tiny matrix products;
the fused kernel tiles for long sequences. The two forms alternate, block by block, so a host
whose speed drifts within minutes slows both alike; the record holds every block's rate and
the median of the per-pair ratios. Nothing here changes the committed code: the written-out form
is patched into text.Attention for its blocks only.
"""
import argparse
import contextlib
import statistics
import sys
import time
from pathlib import Path

import torch
from einops import rearrange

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout
from stage3_seeds import write_record  # noqa: E402
from tiny_rlhf_t2i import text  # noqa: E402
from tiny_rlhf_t2i.diffusion import Scheduler, sample  # noqa: E402
from tiny_rlhf_t2i.evaluate import eval_records  # noqa: E402
from tiny_rlhf_t2i.losses import weighted_mse  # noqa: E402
from tiny_rlhf_t2i.train_loop import Batch, step_loss  # noqa: E402
from tiny_rlhf_t2i.unet import ModelConfig, TextToImage  # noqa: E402


def written_out(self, x, context, key_mask=None):
    """text.Attention.forward with the attention written out: the same math, other rounding."""
    q = rearrange(self.q(x), "b n (h d) -> b h n d", h=self.heads)  # (B, h, N, d)
    k, v = rearrange(self.kv(context), "b l (two h d) -> two b h l d", two=2, h=self.heads)
    scores = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5  # (B, h, N, L)
    if key_mask is not None:
        scores = scores.masked_fill(~key_mask[:, None, None, :], float("-inf"))
    y = scores.softmax(-1) @ v  # (B, h, N, d)
    return self.out(rearrange(y, "b h n d -> b n (h d)"))


@contextlib.contextmanager
def attention(form: str):
    fused = text.Attention.forward
    if form == "written_out":
        text.Attention.forward = written_out
    try:
        yield
    finally:
        text.Attention.forward = fused


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=6, help="timed blocks per form")
    parser.add_argument("--train_steps", type=int, default=10, help="training steps per block")
    parser.add_argument("--sample_n", type=int, default=256, help="images per sampling block")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = ModelConfig()  # the cpu preset's model
    model = TextToImage(cfg).to(memory_format=torch.channels_last)
    torch.nn.init.normal_(model.conv_out.weight, std=0.02)  # else the output is zero (init)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    records = eval_records(16)[:args.sample_n]
    # Stage 0's batch size; the attention's cost depends on the shapes and the captions'
    # lengths, not on what the images show, so evaluation prompts stand in for web captions.
    gen = torch.Generator().manual_seed(0)
    x0 = (torch.rand(128, 3, cfg.resolution, cfg.resolution, generator=gen) * 2 - 1
          ).contiguous(memory_format=torch.channels_last)  # (128, 3, H, W)
    ids = text.encode([records[i % len(records)]["prompt"] for i in range(0, 128 * 11, 11)])
    batch, scheduler = Batch(x0, ids, torch.ones(128)), Scheduler()

    def train_block():
        t0 = time.perf_counter()
        for _ in range(args.train_steps):
            loss = step_loss(model, scheduler, batch, gen, weighted_mse)
            opt.zero_grad()
            loss.backward()
            opt.step()
        return args.train_steps / (time.perf_counter() - t0)

    def sample_block():
        t0 = time.perf_counter()
        sample(model, [r["prompt"] for r in records], [r["seed"] for r in records],
               num_inference_steps=15, guidance_scale=3.0)
        return len(records) / (time.perf_counter() - t0)

    # How far apart: one forward pass of the same model and batch in both forms.
    t = torch.randint(0, 1000, (128,), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        outs = {}
        for form in ("fused", "written_out"):
            with attention(form):
                outs[form] = model(x0, t, ids)
    diff = float((outs["fused"] - outs["written_out"]).abs().max())

    rates = {f"{job} {form}": [] for job in ("train", "sample")
             for form in ("fused", "written_out")}
    for job, block in (("train", train_block), ("sample", sample_block)):
        for form in ("fused", "written_out"):  # warm both once
            with attention(form):
                block()
        for _ in range(args.blocks):
            for form in ("fused", "written_out"):
                with attention(form):
                    rates[f"{job} {form}"].append(block())
    ratio = {job: statistics.median(w / f for f, w in zip(rates[f"{job} fused"],
                                                         rates[f"{job} written_out"]))
             for job in ("train", "sample")}
    results = {"train_steps_per_s": {f: rates[f"train {f}"] for f in ("fused", "written_out")},
               "sample_images_per_s": {f: rates[f"sample {f}"] for f in ("fused", "written_out")},
               "median_speedup": ratio, "max_abs_output_difference": diff,
               "batch": 128, "sample_n": len(records), "threads": args.threads}
    for job, r in ratio.items():
        print(f"{job}: written-out / fused, median of {args.blocks} pairs: {r:.3f}")
    print(f"largest difference of one forward pass's outputs: {diff:.2e}")
    if args.out:
        write_record(args.out, results, args.threads)


if __name__ == "__main__":
    main()
