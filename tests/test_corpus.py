"""The web corpus table (corpus.WebCorpus): the very examples of corpus.web_corpus_batch, drawn
once, cached, and never trusted when the cache is of another corpus or broken."""
import dataclasses

import numpy as np
import pytest
import torch

import train_unet
from tiny_rlhf_t2i import corpus
from tiny_rlhf_t2i.config import parse_config
from tiny_rlhf_t2i.corpus import WebCorpus, caption_noise, web_corpus_batch
from tiny_rlhf_t2i.diffusion import to_model_space
from tiny_rlhf_t2i.text import encode


def _pre(*flags) -> dict:
    cfg = parse_config(train_unet.TrainConfig, train_unet.PRESETS,
                       ["--preset", "smoke", "--corpus_size", "3000", *flags])
    return dataclasses.asdict(cfg)


@pytest.mark.parametrize("flags", [[], ["--resolution", "32", "--corpus_seed", "3"]])
def test_a_batch_is_the_examples_of_web_corpus_batch(flags):
    pre = _pre(*flags)
    table = WebCorpus(pre, "cpu", workers=2)  # three chunks over two processes
    x, ids = table.batch(np.random.default_rng(1), 200)
    index = np.random.default_rng(1).integers(0, pre["corpus_size"], 200)
    images, captions = web_corpus_batch(index, caption_noise(pre), pre["resolution"],
                                        pre["corpus_seed"])
    assert torch.equal(x, to_model_space(images)) and torch.equal(ids, encode(captions))
    assert x.is_contiguous(memory_format=torch.channels_last)  # what the UNet trains on


def test_the_cache_is_read_and_rebuilt_when_stale_or_broken(tmp_path, monkeypatch):
    pre, path = _pre(), tmp_path / "corpus.pt"
    first = WebCorpus(pre, "cpu", path)
    draws = []
    build = corpus.WebCorpus._build
    monkeypatch.setattr(corpus.WebCorpus, "_build",
                        staticmethod(lambda key, workers: draws.append(key) or build(key, workers)))
    again = WebCorpus(pre, "cpu", path)  # read, not drawn
    assert draws == [] and torch.equal(again.ids, first.ids)
    other = WebCorpus(_pre("--p_undercount", "0.5"), "cpu", path)  # another corpus: drawn
    assert len(draws) == 1 and not torch.equal(other.ids, first.ids)
    path.write_bytes(path.read_bytes()[:1000])  # truncated: drawn again, and rewritten
    assert torch.equal(WebCorpus(pre, "cpu", path).ids, first.ids) and len(draws) == 2
    assert torch.equal(WebCorpus(pre, "cpu", path).ids, first.ids) and len(draws) == 2
