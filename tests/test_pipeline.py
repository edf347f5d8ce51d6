"""The three scripts end to end at smoke size, resume equivalence, and missing-input errors."""
import json

import numpy as np
import pytest
import torch

import finetune
import train_reward
import train_unet
from tiny_rlhf_t2i.config import UserError, parse_config
from tiny_rlhf_t2i.unet import ModelConfig, TextToImage, load_model


def test_resumed_run_equals_uninterrupted_run(tmp_path):
    def run(out, **kw):
        cfg = parse_config(train_unet.TrainConfig, train_unet.PRESETS,
                           ["--preset", "smoke", "--out_dir", str(out)]
                           + [f"--{k}={v}" for k, v in kw.items()])
        train_unet.pretrain(cfg)
        return torch.load(out / "ckpt.pt", weights_only=True)

    straight = run(tmp_path / "a", steps=60)  # 60: the curve has a point at 50 and at the end
    run(tmp_path / "b", steps=60, stop_after=30)  # interrupted, with a checkpoint
    assert torch.load(tmp_path / "b" / "ckpt.pt", weights_only=True)["step"] == 30
    resumed = run(tmp_path / "b", steps=60, resume="true")
    assert resumed["step"] == straight["step"] == 60
    assert resumed["loss_curve"] == straight["loss_curve"] and len(straight["loss_curve"]) == 2
    for key in ("model", "ema"):
        for name, value in straight[key].items():
            assert torch.equal(value, resumed[key][name]), f"{key}.{name} differs after resume"


def test_missing_checkpoint_names_the_command(tmp_path):
    with pytest.raises(UserError, match=r"ckpt.pt does not exist; run `python train_unet.py"):
        train_reward.main(["--preset", "smoke", "--unet_dir", str(tmp_path / "none"),
                           "--out_dir", str(tmp_path / "r"), "--feedback_dir", str(tmp_path / "f")])


def test_smoke_pipeline_end_to_end(smoke_run):
    tmp_path = smoke_run
    m0 = json.loads((tmp_path / "unet" / "metrics.json").read_text())
    for key in ("overall", "count", "color", "background", "combination", "seen", "unseen"):
        assert 0 <= m0["alignment"][key]["mean"] <= 1
    assert "well_formed" in m0 and (tmp_path / "unet" / "samples.png").exists()
    # Stage 3's D_pre is read from the checkpoint: the smoke corpus, not the cpu preset's.
    _, pre = load_model(tmp_path / "unet" / "ckpt.pt")
    assert pre["corpus_size"] == 2000 and pre["p_undercount"] == 0.7

    m1 = json.loads((tmp_path / "reward" / "metrics.json").read_text())
    assert set(m1["pairwise_accuracy"]) == {"clip_score", "reward_pc", "reward"}
    assert set(m1["pairwise_accuracy"]["reward"]) == {"seen", "unseen"}
    labels = (tmp_path / "feedback" / "train" / "labels.jsonl").read_text().splitlines()
    assert len(labels) == 4 * 16 and len({json.loads(r)["id"] for r in labels}) == 64

    m3 = json.loads((tmp_path / "finetune" / "metrics.json").read_text())
    for m in (m3["before"], m3["after"], m3["models"]["control"]):
        assert {"alignment", "well_formed", "fd"} <= set(m)
        assert {"overall", "count", "seen", "unseen"} <= set(m["alignment"])
    assert set(m3["win_rate"]) >= {"win", "tie", "loss"}
    for name in ("summary.md", "before_after.png", "rounds.png",
                 "feedback/round2/loss_curve.json", "feedback/round2/eval.json"):
        assert (tmp_path / "finetune" / name).exists(), name
    # Rounds: a curve point per round after the pretrained one, and the label budget.
    assert [p["round"] for p in m3["rounds"]["feedback"]] == [0, 1, 2]
    assert [p["steps"] for p in m3["rounds"]["control"]] == [0, 5, 10]
    # Each run is reported at the round it keeps (round 0: the pretrained model).
    k = m3["kept"]["feedback"]
    kept_eval = (tmp_path / "finetune" / "pretrained_eval.json" if k == 0 else
                 tmp_path / "finetune" / f"feedback/round{k}/eval.json")
    assert m3["after"]["alignment"] == json.loads(kept_eval.read_text())["metrics"]["alignment"]
    assert m3["labels"] == {"feedback": 64 + 8}  # stage 1's labels + one round's budget
    assert not (tmp_path / "finetune" / "report.md").exists()  # one report: summary.md
    # Where stage 3's time went: every second charged to one phase.
    phases = m3["phase_seconds"]
    assert list(phases) == ["loading", "evaluation", "D_model samples, labels, rewards",
                            "training", "best-of-n", "grids and plots"]
    assert abs(sum(phases.values()) - m3["seconds"]) <= 1


def test_best_of_n_ranks_by_the_logit_not_the_saturated_reward():
    """sigmoid(30) == sigmoid(40) == 1.0 in float32: ranked by the reward, the first candidate
    would win every tie; ranked by the logit, the better second one wins."""
    class Reward:
        calls = []

        def score(self, images, prompts, logit=False):
            assert logit, "best-of-n must rank by the logit"
            self.calls.append(images)
            return torch.tensor([[30.0, 30.0], [40.0, 20.0]][len(self.calls) - 1])

    torch.manual_seed(0)
    model = TextToImage(ModelConfig(channels=16, text_dim=32, channel_mults="1,2"))
    cfg = parse_config(finetune.FinetuneConfig, finetune.PRESETS,
                       ["--preset", "smoke", "--best_of_n", "2", "--num_inference_steps", "2"])
    records = [{"prompt": "a red circle", "seed": 1}, {"prompt": "two squares", "seed": 2}]
    first = np.zeros((2, 16, 16, 3), np.uint8)
    reward = Reward()
    best = finetune.best_of_n(model, reward, records, first, cfg)
    second = reward.calls[1]
    assert np.array_equal(best[0], second[0]) and np.array_equal(best[1], first[1])


def test_run_folder_is_checked_before_work_and_stale_temp_files_go(tmp_path, capsys):
    (tmp_path / "a_file").write_text("")
    with pytest.raises(UserError, match="cannot write to the run folder .*a_file"):
        train_unet.main(["--preset", "smoke", "--out_dir", str(tmp_path / "a_file")])
    stale = tmp_path / "run" / ".ckpt.pt.abc123.tmp"  # left by a write a kill interrupted
    stale.parent.mkdir()
    stale.write_bytes(b"half a checkpoint")
    train_unet.main(["--preset", "smoke", "--out_dir", str(tmp_path / "run"), "--steps", "2",
                     "--warmup_steps", "1", "--stop_after", "1"])
    assert not stale.exists() and (tmp_path / "run" / "ckpt.pt").exists()


def test_gpu_preset_runs_a_few_steps_on_the_cpu(tmp_path):
    """The gpu preset's three stages (32 px, its settings and folders) with a tiny model and
    batch, and the levers that did not pay on a GPU switched on (bf16 autocast; torch.compile
    would compile for minutes on a CPU)."""
    d = {n: str(tmp_path / n) for n in ("unet", "reward", "feedback", "finetune")}
    tiny = ["--preset", "gpu", "--device", "cpu", "--num_inference_steps", "2"]
    train_unet.main([*tiny, "--out_dir", d["unet"], "--steps", "3", "--batch_size", "8",
                     "--corpus_size", "300", "--eval_samples_per_prompt", "1", "--bf16", "true",
                     "--channels", "16", "--text_dim", "32"])
    pre = torch.load(tmp_path / "unet" / "ckpt.pt", weights_only=True)["config"]
    assert (pre["resolution"], pre["batch_size"], pre["bf16"]) == (32, 8, True)
    train_reward.main([*tiny, "--unet_dir", d["unet"], "--out_dir", d["reward"],
                       "--feedback_dir", d["feedback"], "--per_category", "4",
                       "--heldout_per_category", "2", "--clip_steps", "3", "--reward_steps", "3"])
    finetune.main([*tiny, "--unet_dir", d["unet"], "--reward_dir", d["reward"], "--feedback_dir",
                   d["feedback"], "--out_dir", d["finetune"], "--unlabeled_per_category", "4",
                   "--labels_per_round", "4", "--steps", "4", "--rounds", "2", "--batch_size", "8",
                   "--heldout_samples_per_prompt", "1",
                   "--eval_samples_per_prompt", "1", "--best_of_n", "2", "--fd_net_steps", "5",
                   "--warmup_steps", "1", "--runs", "feedback"])
    metrics = json.loads((tmp_path / "finetune" / "metrics.json").read_text())
    assert [p["round"] for p in metrics["rounds"]["feedback"]] == [0, 1, 2]
    assert metrics["config"]["preset"] == "gpu"
