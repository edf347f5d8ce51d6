"""The web corpus of stages 0 and 3: random scenes, their noisy captions, a table on the device.

The web corpus (`web_caption`) pairs renders with noisy captions: attributes dropped, counts made
vague, and large groups *systematically* undercounted. That noise is what makes the pretrained
model misaligned on counts, as LAION captions make Stable Diffusion bad at counting.

`web_corpus_batch` makes example i of the corpus in Python from its own random stream
(seeds.web_example): about a millisecond per example, most of it drawing the scene and the
caption, and a GPU step of the gpu preset wants 256 examples every few milliseconds. So
`WebCorpus` draws every scene and caption once (in parallel processes, cached beside stage 0's
checkpoint), keeps them as tensors on the training device, so a GPU never waits for data, and a
batch is a gather plus `scenes.render_batch` there: the very images and captions of
web_corpus_batch, so the CPU run's numbers do not change (tests/test_corpus.py).
"""
import dataclasses
import multiprocessing
import os
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from . import distributed, seeds
from .diffusion import to_model_space
from .files import save_checkpoint
from .scenes import Scene, render_batch, sample_scene, scene_arrays
from .text import encode
from .world import MAX_COUNT, PLURAL, SHAPES, VAGUE, Spec, _article, _number_word


# ----------------------------------------------------------------------------- web captions
@dataclasses.dataclass
class CaptionNoise:
    """How web-like (noisy) the pretraining captions are. All rates are probabilities."""
    p_drop_color: float = 0.3  # the caption does not mention the objects' color
    p_drop_background: float = 0.4  # the caption does not mention the background
    p_vague_count: float = 0.2  # a count >= 2 becomes "some"/"several"/"many" or a bare plural
    p_undercount: float = 0.7  # a group of >= undercount_from objects is captioned one too few
    undercount_from: int = 3  # smallest group that people (and alt-texts) undercount


PHRASINGS = ("{np}", "a photo of {np}", "a picture of {np}", "an image of {np}")
PHRASINGS_BG = ("{np} on a {bg} background", "a photo of {np} on a {bg} background",
                "a {bg} background with {np}", "an image of {np} on a {bg} background")


def web_caption(scene: Scene, noise: CaptionNoise, rng: np.random.Generator) -> str:
    """A noisy, web-like caption of a scene (README, "The world and the judge").

    Why *systematic* undercounting: classifier-free guidance sharpens the most likely image for a
    caption, so random count noise that leaves the true count most likely is fixed by guidance and
    by more training. Undercounting larger groups makes "three" mostly mean four objects in the
    data itself, which only feedback can correct."""
    n = len(scene.objects)
    stated = n - 1 if n >= noise.undercount_from and rng.random() < noise.p_undercount else n
    color = None if rng.random() < noise.p_drop_color else scene.color
    if stated >= 2 and rng.random() < noise.p_vague_count:
        vague = rng.choice(VAGUE + ("",))
        words = [str(vague)] if vague else []
    else:
        words = [_article(Spec(scene.shape, 1, color))] if stated == 1 else [_number_word(stated)]
    words += [color] if color else []
    words += [scene.shape if stated == 1 else PLURAL[scene.shape]]
    np_ = " ".join(words)
    if rng.random() < noise.p_drop_background:
        return str(rng.choice(PHRASINGS)).format(np=np_)
    return str(rng.choice(PHRASINGS_BG)).format(np=np_, bg=scene.background)


def web_scene(rng: np.random.Generator, noise: CaptionNoise, shapes=SHAPES) -> tuple[Scene, str]:
    """One pretraining pair: a random scene (every shape, seen and unseen, as LAION holds every
    object) and its web caption. Drawing these is most of the cost of a web example; rendering
    is the rest."""
    spec = Spec(str(rng.choice(shapes)), int(rng.integers(1, MAX_COUNT + 1)))
    scene = sample_scene(spec, rng)
    return scene, web_caption(scene, noise, rng)


def web_corpus_scenes(indices, noise: CaptionNoise, corpus_seed: int = 0):
    """The scenes and captions of examples `indices` of the (finite, fixed) web corpus: example
    i is always the same, whatever the batch or the run (its own stream, seeds.web_example)."""
    scenes, captions = zip(*(web_scene(seeds.web_example(corpus_seed, int(i)), noise)
                             for i in indices))
    return list(scenes), list(captions)


def web_corpus_batch(indices, noise: CaptionNoise, resolution: int, corpus_seed: int = 0):
    """Examples `indices` of the web corpus, rendered: ((B, H, W, 3) uint8, [caption] * B).
    `WebCorpus` serves the same examples from a table, for a GPU."""
    scenes, captions = web_corpus_scenes(indices, noise, corpus_seed)
    return render_batch(scene_arrays(scenes), resolution).numpy(), captions


# ----------------------------------------------------------------------------- the device table
CHUNK = 2000  # examples per task of the parallel build


def caption_noise(pre: dict) -> CaptionNoise:
    """The caption noise of a stage-0 config; `captions: clean` keeps every stated count true."""
    noise = CaptionNoise(**{f.name: pre[f.name] for f in dataclasses.fields(CaptionNoise)})
    if pre.get("captions", "web") == "clean":
        noise = dataclasses.replace(noise, p_undercount=0.0, p_vague_count=0.0)
    return noise


def _draw(job) -> dict[str, np.ndarray]:
    """Examples [lo, hi) of a corpus: their scenes (scene_arrays) and caption ids."""
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
        parts = []
        # fork: the workers only run numpy, so a parent that already holds a CUDA context is fine
        with (multiprocessing.get_context("fork").Pool(min(workers, len(jobs))) as pool,
              tqdm(total=n, desc="web corpus", dynamic_ncols=True) as bar):
            for part in pool.imap(_draw, jobs):  # in order: row i is example i
                parts.append(part)
                bar.update(len(part["ids"]))
        return {k: torch.from_numpy(np.concatenate([p[k] for p in parts])) for k in parts[0]}

    def batch(self, rng: np.random.Generator, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """n examples drawn with rng, as train_loop's batches want them: images (n, 3, H, W) in
        [-1, 1] on the device (channels_last in memory), caption ids (n, L) on the CPU."""
        index = torch.from_numpy(rng.integers(0, len(self.ids), n))  # (n,) example numbers
        rows = {k: v[index.to(self.device)] for k, v in self.scenes.items()}
        images = render_batch(rows, self.resolution, self.device)  # (n, H, W, 3) uint8
        return to_model_space(images), self.ids[index].long()
