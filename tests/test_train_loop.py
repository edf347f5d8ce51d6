"""The shared training loop: its schedule, the web batch of both stages, resume, bad settings."""
import dataclasses
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import finetune
import train_reward
import train_unet
from tiny_rlhf_t2i.config import parse_config, run
from tiny_rlhf_t2i.text import NULL_IDS, encode
from tiny_rlhf_t2i.corpus import CaptionNoise, WebCorpus, web_corpus_batch
from tiny_rlhf_t2i.train_loop import drop_captions, lr_at


def test_lr_schedule_warmup_then_cosine_to_min():
    assert lr_at(0, 1.0, 10, 110) == pytest.approx(0.1)
    assert lr_at(9, 1.0, 10, 110) == 1.0 and lr_at(10, 1.0, 10, 110) == 1.0
    assert lr_at(60, 1.0, 10, 110) == pytest.approx(0.5)  # half way through the decay
    assert lr_at(110, 1.0, 10, 110, min_frac=0.01) == pytest.approx(0.01)
    # no warmup: the reward and CLIP trainers' plain cosine decay
    assert lr_at(25, 2.0, 0, 100) == pytest.approx(1 + math.cos(math.pi / 4))


def _stage0_config(captions: str) -> dict:
    cfg = parse_config(train_unet.TrainConfig, train_unet.PRESETS,
                       ["--preset", "smoke", "--captions", captions])
    return dataclasses.asdict(cfg)


def test_web_batch_honours_clean_captions():
    """Stage 3's D_pre is built from the stage-0 config, --captions clean included: its counts
    are the true ones (stage 3 used to train a clean-caption model on undercounting captions)."""
    idx_rng = lambda: np.random.default_rng(5)  # the same examples for both
    pre = _stage0_config("clean")
    x, ids = WebCorpus(pre, "cpu").batch(idx_rng(), 64)
    indices = idx_rng().integers(0, pre["corpus_size"], 64)
    clean = CaptionNoise(p_undercount=0.0, p_vague_count=0.0)
    images, captions = web_corpus_batch(indices, clean, pre["resolution"], pre["corpus_seed"])
    assert torch.equal(ids, encode(captions)) and x.shape == (64, 3, 16, 16)
    web_ids = WebCorpus(_stage0_config("web"), "cpu").batch(idx_rng(), 64)[1]
    assert not torch.equal(web_ids, ids)  # undercounted captions differ


def test_drop_captions_replaces_rows_with_the_null_caption():
    ids = encode(["a red circle"] * 1000)
    drop_captions(ids, np.random.default_rng(0), 0.3)
    dropped = (ids == NULL_IDS).all(1)
    assert 250 < int(dropped.sum()) < 350
    assert (ids[~dropped] == encode(["a red circle"])[0]).all()


@pytest.mark.parametrize("script, argv, message", [
    (train_unet, ["--steps", "0"], "--steps must be >= 1, not 0"),
    (train_unet, ["--lr", "nan"], "--lr must be in (0, 1], not nan"),
    (train_unet, ["--warmup_steps", "-1"], "--warmup_steps must be >= 0, not -1"),
    (train_unet, ["--ema_decay", "1"], "--ema_decay must be in [0, 1), not 1.0"),
    (train_unet, ["--captions", "dirty"], "--captions must be web or clean, not 'dirty'"),
    (train_unet, ["--resolution", "20"], "--resolution must be one of (16, 32, 64), not 20"),
    (train_unet, ["--channels", "12"], "--channels must be a positive multiple of 8"),
    (train_unet, ["--prediction", "x0"], "--prediction must be epsilon or v, not 'x0'"),
    (train_unet, ["--min_snr_gamma", "-1"], "--min_snr_gamma must be >= 0, not -1.0"),
    (train_reward, ["--flip_rate", "1.5"], "--flip_rate must be in [0, 1], not 1.5"),
    (train_reward, ["--temperature", "0"], "--temperature must be > 0, not 0.0"),
    (train_reward, ["--n_prompts", "1"], "--n_prompts must be >= 2, not 1"),
    (finetune, ["--model_fraction", "0"], "--model_fraction must be in (0, 1], not 0.0"),
    (finetune, ["--beta", "-1"], "--beta must be >= 0, not -1.0"),
    (finetune, ["--runs", "feedback,bogus"], "--runs: unknown run(s) ['bogus']"),
    (finetune, ["--rounds", "0"], "--rounds must be >= 1, not 0"),
    (finetune, ["--model_t_min", "1000"], "--model_t_min must be in [0, 1000), not 1000"),
    (finetune, ["--labels_per_round", "33"], "--labels_per_round must be in [0, 32], not 33"),
    (finetune, ["--steps", "1", "--rounds", "2"], "--steps (1) must be at least --rounds (2)"),
])
def test_bad_settings_are_refused_in_one_line(script, argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run(script.main, ["--preset", "smoke", *argv])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err == f"error: {err[7:]}" and message in err and err.count("\n") == 1, err


@pytest.mark.parametrize("argv, message", [
    (["train_unet.py", "--preset", "smoke", "--steps", "0"], "--steps must be >= 1, not 0"),
    (["-m", "tiny_rlhf_t2i.sample", "two dogs"], "unknown word 'dogs'"),
    (["-m", "tiny_rlhf_t2i.sample", "a white circle on a white background"], "is invisible"),
    (["-m", "tiny_rlhf_t2i.sample", "a circle", "--ckpt", "nowhere/ckpt.pt"],
     "nowhere/ckpt.pt does not exist; run `python train_unet.py`"),
])
def test_a_user_error_is_one_line_and_exit_code_2_in_a_real_process(argv, message, tmp_path):
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, *argv], cwd=root, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1, proc.stderr
    assert message in proc.stderr and "Traceback" not in proc.stderr
