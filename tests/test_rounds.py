"""Stage 3's rounds: exact resume between and inside rounds, the label budget, and the timestep
cut of the model's own samples (train_loop.step_loss)."""
import json
import shutil

import torch

import finetune
from tiny_rlhf_t2i.diffusion import Scheduler
from tiny_rlhf_t2i.losses import weighted_mse
from tiny_rlhf_t2i.train_loop import Batch, step_loss


def _finetune(smoke_run, fb, out, *extra):
    finetune.main(["--preset", "smoke", "--unet_dir", str(smoke_run / "unet"),
                   "--reward_dir", str(smoke_run / "reward"), "--feedback_dir", str(fb),
                   "--out_dir", str(out), "--runs", "feedback", "--best_of_n", "1", *extra])


def test_rounds_resume_inside_and_between_rounds_like_an_uninterrupted_run(smoke_run, tmp_path,
                                                                           capsys):
    fb = tmp_path / "feedback"
    shutil.copytree(smoke_run / "feedback" / "train", fb / "train")
    shutil.copytree(smoke_run / "fd", tmp_path / "fd")  # the FD ruler, trained once
    _finetune(smoke_run, fb, tmp_path / "a")  # 2 rounds of 5 steps, uninterrupted
    # Interrupted inside round 1 (step 3), between the rounds (step 5), inside round 2 (step 7).
    for stop in (3, 5, 7):
        _finetune(smoke_run, fb, tmp_path / "b", "--stop_after", str(stop),
                  *(["--resume", "true"] if stop > 3 else []))
        assert "stopped by --stop_after in run feedback" in capsys.readouterr().out
    assert (tmp_path / "b/feedback/round1/eval.json").exists()
    assert not (tmp_path / "b/feedback/round2/eval.json").exists()
    _finetune(smoke_run, fb, tmp_path / "b", "--resume", "true")

    a, b = tmp_path / "a" / "feedback", tmp_path / "b" / "feedback"
    for k in (1, 2):
        sa = torch.load(a / f"round{k}" / "ckpt.pt", weights_only=True)
        sb = torch.load(b / f"round{k}" / "ckpt.pt", weights_only=True)
        assert sa["loss_curve"] == sb["loss_curve"] and sa["step"] == sb["step"] == 5
        for key in ("model", "ema"):
            for name, value in sa[key].items():
                assert torch.equal(value, sb[key][name]), f"round {k}: {key}.{name} differs"
        for name in ("eval.json", "loss_curve.json"):
            assert (a / f"round{k}" / name).read_text() == (b / f"round{k}" / name).read_text()
    ra = torch.load(a / "round2" / "reward.pt", weights_only=True)["model"]
    rb = torch.load(b / "round2" / "reward.pt", weights_only=True)["model"]
    assert all(torch.equal(v, rb[n]) for n, v in ra.items())
    ma, mb = (json.loads((tmp_path / r / "metrics.json").read_text()) for r in ("a", "b"))
    assert ma["models"] == mb["models"] and ma["rounds"] == mb["rounds"]
    assert not list(tmp_path.rglob("*.tmp"))  # no temporary file of an atomic write left

    # The label budget: 8 new labels in round 2, two per category, from stage 1's labeler.
    rows = [json.loads(r) for r in (a / "round2/labeled/labels.jsonl").read_text().splitlines()]
    assert len(rows) == 8 and {r["labeler"] for r in rows} == {"judge"}
    assert sorted(r["category"] for r in rows) == sorted(["count", "color", "background",
                                                          "combination"] * 2)
    unlabeled = (a / "round2/unlabeled/samples.jsonl").read_text().splitlines()
    assert len(unlabeled) == 4 * 8 - 8 and not (a / "round2/unlabeled/labels.jsonl").read_text()
    assert ma["labels"] == {"feedback": 64 + 8}


class _Recorder(torch.nn.Module):
    """A stand-in denoiser that records the timesteps it is asked about."""
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x, t, ids):
        self.t = t.clone()
        return x * self.w


def test_timestep_cut_moves_only_the_d_model_rows_and_keeps_the_default_stream():
    B, n_model, T = 16, 8, Scheduler().num_train_timesteps
    x0 = torch.randn(B, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    ids, w = torch.zeros(B, 4, dtype=torch.long), torch.ones(B)
    model, losses, ts = _Recorder(), {}, {}
    for t_min in (0, 600):
        losses[t_min] = step_loss(model, Scheduler(), Batch(x0, ids, w, n_model, t_min),
                                  torch.Generator().manual_seed(5), weighted_mse)
        ts[t_min] = model.t
    # t_min = 0 draws exactly what the loop drew before the cut existed: t, then the noise.
    gen = torch.Generator().manual_seed(5)
    t_ref = torch.randint(0, T, (B,), generator=gen)
    noise_ref = torch.randn(x0.shape, generator=gen)
    assert torch.equal(ts[0], t_ref)
    expected = 2 * noise_ref.pow(2).flatten(1).mean(1).mean()  # eps_hat = 0, both halves weight 1
    torch.testing.assert_close(losses[0], expected)
    # With the cut, the D_pre rows keep their timesteps; the D_model rows are all >= t_min.
    assert torch.equal(ts[600][n_model:], t_ref[n_model:])
    assert (ts[600][:n_model] >= 600).all() and (ts[0][:n_model] < 600).any()
