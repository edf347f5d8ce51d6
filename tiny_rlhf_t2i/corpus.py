"""The web corpus of stages 0 and 3 as one table on the device, so a GPU never waits for data.

`world.web_corpus_batch` makes example i of the corpus in Python from its own random stream
(seeds.web_example): about a millisecond per example, most of it drawing the scene and the
caption, and a GPU step of the gpu preset wants 256 examples every few milliseconds. So
`WebCorpus` draws every scene and caption once (in parallel processes, cached beside stage 0's
checkpoint), keeps them as tensors on the training device, and a batch is a gather plus
`world.render_batch` there: the very images and captions of web_corpus_batch, so the CPU run's
numbers do not change (tests/test_corpus.py).
"""
import dataclasses
import multiprocessing
import os
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from . import distributed
from .diffusion import to_model_space
from .files import save_checkpoint
from .text import encode
from .world import CaptionNoise, render_batch, scene_arrays, web_corpus_scenes

CHUNK = 2000  # examples per task of the parallel build


def caption_noise(pre: dict) -> CaptionNoise:
    """The caption noise of a stage-0 config; `captions: clean` keeps every stated count true."""
    noise = CaptionNoise(**{f.name: pre[f.name] for f in dataclasses.fields(CaptionNoise)})
    if pre.get("captions", "web") == "clean":
        noise = dataclasses.replace(noise, p_undercount=0.0, p_vague_count=0.0)
    return noise


def _draw(job) -> dict[str, np.ndarray]:
    """Examples [lo, hi) of a corpus: their scenes (world.scene_arrays) and caption ids."""
    corpus_seed, noise, lo, hi = job
    scenes, captions = web_corpus_scenes(range(lo, hi), noise, corpus_seed)
    return {**scene_arrays(scenes), "ids": encode(captions).numpy().astype(np.uint8)}


class WebCorpus:
    """Every example of stage 0's web corpus (pre: its config) as tensors on `device`.
    cache: a file to keep the table in (stage 0's run folder), read instead of drawing again
    (needed under torchrun: the other ranks read what rank 0 drew)."""

    def __init__(self, pre: dict, device, cache: Path | None = None, workers: int = 0):
        self.resolution, self.device = pre["resolution"], torch.device(device)
        key = {"corpus_seed": pre["corpus_seed"], "corpus_size": pre["corpus_size"],
               **dataclasses.asdict(caption_noise(pre))}
        table = self._load(cache, key) if cache and distributed.is_main() else None
        if distributed.is_main() and table is None:
            table = self._build(key, workers or os.cpu_count() or 1)
            if cache:
                save_checkpoint(cache, {"key": key, "table": table})
        distributed.barrier()
        if not distributed.is_main():  # under torchrun: what rank 0 drew and wrote
            table = self._load(cache, key)
        self.ids = table.pop("ids")  # (N, L) uint8 caption ids; kept on the CPU for dropout
        self.scenes = {k: v.to(self.device) for k, v in table.items()}  # scene_arrays, (N, ...)

    @staticmethod
    def _load(path: Path, key: dict) -> dict | None:
        """The cached table, or None when there is none or it is of another corpus or broken
        (a cache: it is drawn again, never trusted)."""
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            return state["table"] if state["key"] == key else None
        except Exception:  # missing, truncated, another format: draw the corpus again
            return None

    @staticmethod
    def _build(key: dict, workers: int) -> dict[str, torch.Tensor]:
        noise = CaptionNoise(**{f.name: key[f.name] for f in dataclasses.fields(CaptionNoise)})
        n = key["corpus_size"]
        jobs = [(key["corpus_seed"], noise, lo, min(n, lo + CHUNK)) for lo in range(0, n, CHUNK)]
        bar = tqdm(total=n, desc="web corpus", dynamic_ncols=True)
        parts = []
        # fork: the workers only run numpy, so a parent that already holds a CUDA context is fine
        with multiprocessing.get_context("fork").Pool(min(workers, len(jobs))) as pool:
            for part in pool.imap(_draw, jobs):  # in order: row i is example i
                parts.append(part)
                bar.update(len(part["ids"]))
        bar.close()
        return {k: torch.from_numpy(np.concatenate([p[k] for p in parts])) for k in parts[0]}

    def batch(self, rng: np.random.Generator, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """n examples drawn with rng, as train_loop's batches want them: images (n, 3, H, W) in
        [-1, 1] on the device (channels_last in memory), caption ids (n, L) on the CPU."""
        index = torch.from_numpy(rng.integers(0, len(self.ids), n))  # (n,) example numbers
        rows = {k: v[index.to(self.device)] for k, v in self.scenes.items()}
        images = render_batch(rows, self.resolution, self.device)  # (n, H, W, 3) uint8
        return to_model_space(images), self.ids[index].long()
