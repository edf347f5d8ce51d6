"""Bad input, as a new user gives it: every case ends in exit code 2 and one line on stderr that
names the problem, with no traceback and no file written or changed.

Cases are (script, argv, what the line must say). Paths in argv are templates: {smoke} is the
smoke-sized pipeline of tests/conftest.py, {tmp} this test's folder, {bad} a folder of broken
inputs that `bad_files` makes before the snapshot of files is taken.
"""
import errno
import json
import os
import pickle
import shutil
import warnings
from pathlib import Path

import pytest
import torch

import finetune
import train_reward
import train_unet
from tiny_rlhf_t2i import sample
from tiny_rlhf_t2i.config import run

U = ["--preset", "smoke"]
FT = [*U, "--unet_dir", "{smoke}/unet", "--reward_dir", "{smoke}/reward", "--out_dir",
      "{tmp}/ft", "--feedback_dir"]  # + a feedback folder
CASES = [
    # ---- configs: stage 0
    (train_unet, [*U, "--steps", "0"], "--steps must be >= 1, not 0"),
    (train_unet, [*U, "--steps", "-5"], "--steps must be >= 1, not -5"),
    (train_unet, [*U, "--steps", "abc"], "argument --steps: invalid int value: 'abc'"),
    (train_unet, [*U, "--bogus", "1"], "unrecognized arguments: --bogus 1"),
    (train_unet, ["--preset", "huge"], "argument --preset: invalid choice: 'huge'"),
    (train_unet, [*U, "--batch_size", "0"], "--batch_size must be >= 1, not 0"),
    (train_unet, [*U, "--lr", "nan"], "--lr must be in (0, 1], not nan"),
    (train_unet, [*U, "--lr", "-1"], "--lr must be in (0, 1], not -1.0"),
    (train_unet, [*U, "--warmup_steps", "-1"], "--warmup_steps must be >= 0, not -1"),
    (train_unet, [*U, "--weight_decay", "-0.1"], "--weight_decay must be >= 0, not -0.1"),
    (train_unet, [*U, "--ema_decay", "1"], "--ema_decay must be in [0, 1), not 1.0"),
    (train_unet, [*U, "--min_lr_frac", "1.5"], "--min_lr_frac must be in [0, 1], not 1.5"),
    (train_unet, [*U, "--captions", "dirty"], "--captions must be web or clean, not 'dirty'"),
    (train_unet, [*U, "--resolution", "20"], "--resolution must be one of (16, 32, 64), not 20"),
    (train_unet, [*U, "--channels", "12"], "--channels must be a positive multiple of 8"),
    (train_unet, [*U, "--corpus_size", "0"], "--corpus_size must be >= 1, not 0"),
    (train_unet, [*U, "--p_uncond", "1"], "--p_uncond must be in [0, 1), not 1.0"),
    (train_unet, [*U, "--guidance_scale", "nan"], "--guidance_scale must be >= 0, not nan"),
    (train_unet, [*U, "--threads", "-1"], "--threads must be >= 0, not -1"),
    (train_unet, [*U, "--num_inference_steps", "0"], "--num_inference_steps must be >= 1"),
    (train_unet, [*U, "--device", "tpu"], "--device must be auto, cpu or cuda, not 'tpu'"),
    (train_unet, [*U, "--resume", "maybe"], "expected true or false, got 'maybe'"),
    # ---- configs: stages 1-2
    (train_reward, [*U, "--flip_rate", "1.5"], "--flip_rate must be in [0, 1], not 1.5"),
    (train_reward, [*U, "--flip_rate", "-0.1"], "--flip_rate must be in [0, 1], not -0.1"),
    (train_reward, [*U, "--temperature", "0"], "--temperature must be > 0, not 0.0"),
    (train_reward, [*U, "--n_prompts", "1"], "--n_prompts must be >= 2, not 1"),
    (train_reward, [*U, "--lam", "-1"], "--lam must be >= 0, not -1.0"),
    (train_reward, [*U, "--reward_steps", "0"], "--reward_steps must be >= 1, not 0"),
    (train_reward, [*U, "--reward_head", "relu"],
     "--reward_head must be sigmoid or linear, not 'relu'"),
    (train_reward, [*U, "--reward_lr", "0"], "--reward_lr must be > 0, not 0.0"),
    (train_reward, [*U, "--per_category", "0"], "--per_category must be >= 1, not 0"),
    (train_reward, [*U, "--labeler", "robot"], "--labeler must be judge or human, not 'robot'"),
    (train_reward, [*U, "--clip_batch", "1"], "--clip_batch must be >= 2, not 1"),
    (train_reward, [*U, "--clip_lr", "0"], "--clip_lr must be in (0, 1], not 0.0"),
    # ---- configs: stage 3
    (finetune, [*U, "--model_fraction", "0"], "--model_fraction must be in (0, 1], not 0.0"),
    (finetune, [*U, "--model_fraction", "1.5"], "--model_fraction must be in (0, 1], not 1.5"),
    (finetune, [*U, "--beta", "-1"], "--beta must be >= 0, not -1.0"),
    (finetune, [*U, "--runs", "feedback,bogus"], "--runs: unknown run(s) ['bogus']"),
    (finetune, [*U, "--rounds", "0"], "--rounds must be >= 1, not 0"),
    (finetune, [*U, "--model_t_min", "1000"], "--model_t_min must be in [0, 1000), not 1000"),
    (finetune, [*U, "--model_t_min", "-1"], "--model_t_min must be in [0, 1000), not -1"),
    (finetune, [*U, "--model_t_min", "200"], "--pretrained_below (300) must be in [0, "
                                              "--model_t_min (200)]"),
    (finetune, [*U, "--labels_per_round", "33"], "--labels_per_round must be in [0, 32]"),
    (finetune, [*U, "--steps", "1", "--rounds", "2"], "--steps (1) must be at least --rounds"),
    (finetune, [*U, "--loss_backend", "fast"], "--loss_backend must be one of"),
    (finetune, [*U, "--best_of_n", "0"], "--best_of_n must be >= 1, not 0"),
    (finetune, [*U, "--eval_samples_per_prompt", "0"], "--eval_samples_per_prompt must be >= 1"),
    (finetune, [*U, "--unlabeled_per_category", "-1"], "--unlabeled_per_category must be >= 0"),
    # ---- prompts (the sample CLI)
    (sample, [""], "empty prompt"),
    (sample, ["two three circles"], "names more than one count"),
    (sample, ["two red"], "must name exactly one shape, found none"),
    (sample, ["a white circle on a white background"], "is invisible"),
    (sample, ["two dogs"], "unknown word 'dogs'"),
    (sample, ["a circle", "--n", "0"], "--n and --steps must be at least 1"),
    (sample, ["a circle", "--steps", "0"], "--n and --steps must be at least 1"),
    (sample, ["a circle", "--guidance-scale", "nan"], "--guidance-scale >= 0"),
    (sample, ["a circle", "--n", "x"], "argument --n: invalid int value: 'x'"),
    # ---- checkpoints
    (sample, ["a circle", "--ckpt", "{tmp}/none.pt"], "none.pt does not exist"),
    (sample, ["a circle", "--ckpt", "{smoke}/reward/reward.pt"], "is not a"),
    (sample, ["a circle", "--ckpt", "{smoke}/reward/clip.pt"], "is not a"),
    (sample, ["a circle", "--ckpt", "{bad}/garbage.pt"], "garbage.pt"),
    (sample, ["a circle", "--ckpt", "{bad}/empty.pt"], "empty.pt"),
    (sample, ["a circle", "--ckpt", "{bad}/half.pt"], "half.pt"),
    (sample, ["a circle", "--ckpt", "{bad}/payload.pt"], "payload.pt"),
    (sample, ["a circle", "--ckpt", "{bad}/resized.pt"],
     "resized.pt was made with other model settings (size mismatch for"),
    (train_unet, [*U, "--channels", "32", "--resume", "true", "--out_dir", "{bad}/unet_16"],
     "ckpt.pt was made with other model settings (--channels 16, not 32); resume with the "
     "settings it was made with, or delete"),
    (train_unet, [*U, "--heads", "2", "--resume", "true", "--out_dir", "{bad}/unet_16"],
     "ckpt.pt was made with other model settings (--heads 4, not 2)"),  # the same shapes
    # a checkpoint from before --prediction existed predicts epsilon
    (train_unet, [*U, "--prediction", "v", "--resume", "true", "--out_dir", "{bad}/unet_old"],
     "ckpt.pt was made with other model settings (--prediction epsilon, not v)"),
    (train_reward, [*U, "--unet_dir", "{tmp}/nowhere", "--out_dir", "{tmp}/r", "--feedback_dir",
                    "{tmp}/fb"], "ckpt.pt does not exist; run `python train_unet.py"),
    (train_reward, [*U, "--unet_dir", "{bad}/reward_as_unet", "--out_dir", "{tmp}/r",
                    "--feedback_dir", "{tmp}/fb"], "is not a"),
    (finetune, [*U, "--unet_dir", "{smoke}/unet", "--reward_dir", "{smoke}/unet",
                "--out_dir", "{tmp}/ft", "--feedback_dir", "{smoke}/feedback"],
     "reward.pt does not exist; run `python train_reward.py"),
    (finetune, [*U, "--unet_dir", "{smoke}/unet", "--reward_dir", "{bad}/unet_as_reward",
                "--out_dir", "{tmp}/ft", "--feedback_dir", "{smoke}/feedback"],
     "is not a reward model"),
    # ---- feedback files
    (finetune, [*FT, "{tmp}/no_feedback"], "labels.jsonl does not exist; run `python "
                                           "train_reward.py"),
    (finetune, [*FT, "{bad}/fb_true"], "label must be 0 or 1, not True"),
    (finetune, [*FT, "{bad}/fb_unknown"], "id 's0_999999' is not in the folder's samples.jsonl"),
    (finetune, [*FT, "{bad}/fb_json"], "labels.jsonl"),
    (finetune, [*FT, "{bad}/fb_missing_image"], "missing or corrupt"),
    (train_reward, [*U, "--unet_dir", "{smoke}/unet", "--out_dir", "{tmp}/r", "--feedback_dir",
                    "{bad}/fb_extra"], "id 's0_999999' is not in the folder's samples.jsonl"),
    (train_reward, [*U, "--unet_dir", "{smoke}/unet", "--out_dir", "{tmp}/r", "--feedback_dir",
                    "{bad}/fb_empty"], "labels.jsonl is empty while samples.jsonl has 64 images; "
                                       "delete it to have the judge label them, or label them "
                                       "in your browser: python -m tiny_rlhf_t2i.label"),
    # ---- run folders
    (train_unet, [*U, "--out_dir", "{bad}/a_file"], "cannot write to the run folder"),
    (train_unet, [*U, "--out_dir", "{bad}/a_file/run"], "cannot write to the run folder"),
    (train_reward, [*U, "--unet_dir", "{smoke}/unet", "--out_dir", "{bad}/a_file",
                    "--feedback_dir", "{tmp}/fb"], "cannot write to the run folder"),
    (finetune, [*U, "--unet_dir", "{smoke}/unet", "--reward_dir", "{smoke}/reward",
                "--out_dir", "{bad}/a_file", "--feedback_dir", "{smoke}/feedback"],
     "cannot write to the run folder"),
    (sample, ["a circle", "--ckpt", "{smoke}/unet/ckpt.pt", "--out", "{bad}/a_file"],
     "--out must be a folder, but"),
    (sample, ["a circle", "--ckpt", "{smoke}/unet/ckpt.pt", "--out", "{bad}/a_file/grids"],
     "a_file is a file"),
]


class _Payload:
    def __reduce__(self):  # unpickling this would write a file: it must never run
        return (Path.write_text, (Path("/tmp/tiny_rlhf_t2i_payload_ran"), "ran"))


@pytest.fixture(scope="module")
def bad_files(smoke_run, tmp_path_factory):
    """Broken inputs, made once: corrupt checkpoints, checkpoints of the wrong kind or size,
    broken feedback folders, a file where a run folder should be."""
    bad = tmp_path_factory.mktemp("bad")
    (bad / "garbage.pt").write_bytes(b"not a checkpoint at all" * 10)
    (bad / "empty.pt").write_bytes(b"")
    real = (smoke_run / "unet" / "ckpt.pt").read_bytes()
    (bad / "half.pt").write_bytes(real[:len(real) // 2])
    (bad / "payload.pt").write_bytes(pickle.dumps({"model": _Payload()}))
    (bad / "reward_as_unet").mkdir()
    shutil.copy(smoke_run / "reward" / "reward.pt", bad / "reward_as_unet" / "ckpt.pt")
    shutil.copytree(smoke_run / "reward", bad / "unet_as_reward")
    shutil.copy(smoke_run / "unet" / "ckpt.pt", bad / "unet_as_reward" / "reward.pt")
    state = torch.load(smoke_run / "unet" / "ckpt.pt", weights_only=True)
    state["model_config"]["channels"] = 32  # the weights are of --channels 16
    torch.save(state, bad / "resized.pt")
    shutil.copytree(smoke_run / "unet", bad / "unet_16")  # a stage-0 run (smoke: --channels 16)
    shutil.copytree(smoke_run / "unet", bad / "unet_old")
    state = torch.load(smoke_run / "unet" / "ckpt.pt", weights_only=True)
    del state["model_config"]["prediction"]  # as written before the field existed
    torch.save(state, bad / "unet_old" / "ckpt.pt")
    (bad / "a_file").write_text("")
    for name, edit in (("fb_true", "true"), ("fb_unknown", "unknown"), ("fb_json", "json"),
                       ("fb_missing_image", "image"), ("fb_extra", "extra"),
                       ("fb_empty", "empty")):
        shutil.copytree(smoke_run / "feedback" / "train", bad / name / "train")
        path = bad / name / "train" / "labels.jsonl"
        rows = [json.loads(r) for r in path.read_text().splitlines()]
        if edit == "true":
            rows[0]["label"] = True
        if edit == "unknown":
            rows[0]["id"] = "s0_999999"
        if edit == "image":
            (bad / name / "train" / rows[0]["image"]).unlink()
        if edit == "extra":  # a label of an image file that samples.jsonl does not list
            rows.append({**rows[0], "id": "s0_999999"})
        if edit == "empty":  # 0 bytes: a person's labels file, emptied
            rows = []
        lines = [json.dumps(r) for r in rows]
        if edit == "json":
            lines[1] = lines[1][:-5]
        path.write_text("".join(line + "\n" for line in lines))
    return bad


def _files(*roots) -> dict:
    return {p: (p.stat().st_size, p.stat().st_mtime_ns) for root in roots
            for p in Path(root).rglob("*") if p.is_file()}


@pytest.mark.parametrize("script, argv, message", CASES,
                         ids=[f"{i:02d}-{c[0].__name__.split('.')[-1]}" for i, c in
                              enumerate(CASES)])
def test_bad_input_is_one_line_exit_2_and_changes_nothing(script, argv, message, smoke_run,
                                                          bad_files, tmp_path, capsys):
    argv = [a.format(smoke=smoke_run, tmp=tmp_path, bad=bad_files) for a in argv]
    before = _files(smoke_run, bad_files, tmp_path)
    with pytest.raises(SystemExit) as exit_info, warnings.catch_warnings():
        warnings.simplefilter("error")  # a warning would be a second line on stderr
        run(script.main, argv)
    captured = capsys.readouterr()
    err = captured.err
    assert exit_info.value.code == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert message in err and "Traceback" not in err, err
    assert _files(smoke_run, bad_files, tmp_path) == before  # nothing written or changed
    assert not Path("/tmp/tiny_rlhf_t2i_payload_ran").exists()


@pytest.mark.parametrize("resume", [False, True])
def test_a_full_disk_while_stage0_saves_is_one_line_naming_the_file(resume, smoke_run, tmp_path,
                                                                      monkeypatch, capsys):
    """The disk fills while stage 0 writes its checkpoint, in a fresh run and in a resume:
    exit 2 and one line naming the file, the last line of stderr (the progress bar above it is
    closed first, not glued to its start and drawn again below it at exit); the previous
    checkpoint is intact and no temporary file is left."""
    out = tmp_path / "unet"
    out.mkdir()
    shutil.copy(smoke_run / "unet" / "corpus.pt", out)  # the web corpus, not drawn again
    if resume:
        shutil.copy(smoke_run / "unet" / "ckpt.pt", out)  # 30 steps: 2 more, then the save
    before = _files(out)

    def full_disk(fd):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(SystemExit) as exit_info:
        run(train_unet.main, [*U, "--out_dir", str(out), "--steps", "32" if resume else "2",
                              "--resume", str(resume).lower()])
    monkeypatch.undo()
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    kept = " (the previous one is intact)" if resume else ""
    assert err.splitlines()[-1].startswith(f"error: could not write {out / 'ckpt.pt'}{kept}: "
                                           f"No space left on device; free disk space"), err
    assert err.count("error") == 1 and "Traceback" not in err, err
    assert _files(out) == before  # the checkpoint of a resume intact, no temporary file


def test_there_are_at_least_sixty_cases():
    assert len(CASES) >= 60
