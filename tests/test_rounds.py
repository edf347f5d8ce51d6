"""Stage 3's rounds: exact resume between and inside rounds (the anchor on), the label budget,
the timestep cut of the model's own samples and the KL anchor (train_loop.step_loss), the run
table, the validation seeds, and the held-out prompts and rule that choose the kept round."""
import json
import shutil

import torch

import finetune
from tiny_rlhf_t2i.diffusion import Scheduler
from tiny_rlhf_t2i.evaluate import eval_records, heldout_records, pick_round
from tiny_rlhf_t2i.losses import anchor_loss, weighted_mse
from tiny_rlhf_t2i.train_loop import Anchor, Batch, step_loss
from tiny_rlhf_t2i.unet import ModelConfig, PretrainedBelowCut, TextToImage, load_model


def _finetune(smoke_run, fb, out, *extra):
    finetune.main(["--preset", "smoke", "--unet_dir", str(smoke_run / "unet"),
                   "--reward_dir", str(smoke_run / "reward"), "--feedback_dir", str(fb),
                   "--out_dir", str(out), "--runs", "feedback", "--best_of_n", "1", *extra])


def test_rounds_resume_inside_and_between_rounds_like_an_uninterrupted_run(smoke_run, tmp_path,
                                                                           capsys):
    """Run a goes through uninterrupted and evaluates every round (--eval_every_round); run b is
    interrupted three times and, as by default, evaluates only the round it keeps: the same
    weights, held-out signals, kept round and kept round's evaluation."""
    fb = tmp_path / "feedback"
    shutil.copytree(smoke_run / "feedback" / "train", fb / "train")
    shutil.copytree(smoke_run / "fd", tmp_path / "fd")  # the FD ruler, trained once
    # the KL anchor on: its frozen model must not break resume; the held-out choice on
    anchor = ["--anchor", "1", "--heldout_samples_per_prompt", "1"]
    _finetune(smoke_run, fb, tmp_path / "a", *anchor, "--eval_every_round", "true")  # 2 x 5 steps
    # Interrupted inside round 1 (step 3), between the rounds (step 5), inside round 2 (step 7).
    for stop in (3, 5, 7):
        _finetune(smoke_run, fb, tmp_path / "b", *anchor, "--stop_after", str(stop),
                  *(["--resume", "true"] if stop > 3 else []))
        assert "stopped by --stop_after in run feedback" in capsys.readouterr().out
    assert (tmp_path / "b/feedback/round1/heldout.json").exists()
    assert not list((tmp_path / "b").rglob("round*/eval.json"))  # the kept round is not known
    _finetune(smoke_run, fb, tmp_path / "b", *anchor, "--resume", "true")

    a, b = tmp_path / "a" / "feedback", tmp_path / "b" / "feedback"
    ma, mb = (json.loads((tmp_path / r / "metrics.json").read_text()) for r in ("a", "b"))
    assert ma["kept"] == mb["kept"] and ma["kept"]["feedback"] in (0, 1, 2)
    k_kept = ma["kept"]["feedback"]
    for k in (1, 2):
        sa = torch.load(a / f"round{k}" / "ckpt.pt", weights_only=True)
        sb = torch.load(b / f"round{k}" / "ckpt.pt", weights_only=True)
        assert sa["loss_curve"] == sb["loss_curve"] and sa["step"] == sb["step"] == 5
        for key in ("model", "ema"):
            for name, value in sa[key].items():
                assert torch.equal(value, sb[key][name]), f"round {k}: {key}.{name} differs"
        for name in ("heldout.json", "loss_curve.json"):
            assert (a / f"round{k}" / name).read_text() == (b / f"round{k}" / name).read_text()
        assert (a / f"round{k}" / "eval.json").exists()
        assert (b / f"round{k}" / "eval.json").exists() == (k == k_kept)
    if k_kept:  # evaluated at the end, the kept round's images and verdicts are the same
        assert ((a / f"round{k_kept}" / "eval.json").read_text()
                == (b / f"round{k_kept}" / "eval.json").read_text())
    ra = torch.load(a / "round2" / "reward.pt", weights_only=True)["model"]
    rb = torch.load(b / "round2" / "reward.pt", weights_only=True)["model"]
    assert all(torch.equal(v, rb[n]) for n, v in ra.items())
    assert ma["models"] == mb["models"]  # every table number
    pa, pb = ma["rounds"]["feedback"], mb["rounds"]["feedback"]
    assert [(p["heldout"], p["kept"]) for p in pa] == [(p["heldout"], p["kept"]) for p in pb]
    assert all(p["evaluation"] for p in pa)
    assert [p["round"] for p in pb if p["evaluation"]] == sorted({0, k_kept})
    summary = (tmp_path / "b" / "summary.md").read_text()  # every round's held-out signal
    for p in pb:
        h = p["heldout"]
        assert (f"{h['reward']:.3f} / {100 * h['well_formed']:.1f} / "
                f"{100 * h['alignment_not_used']:.1f} |") in summary
    kept = [p["kept"] for p in pa]  # one kept round, chosen by its rule
    signals = [p["heldout"] for p in pa]
    assert kept.index(True) == k_kept == pick_round(signals, 0.015)
    assert sum(kept) == 1 and all(s["n"] == 240 for s in signals)  # smoke: 1 per prompt
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


def test_below_the_cut_d_pre_rows_take_their_own_weight_and_nothing_else_moves():
    B, n_model = 16, 8
    x0 = torch.randn(B, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    ids = torch.zeros(B, 4, dtype=torch.long)
    w = torch.cat([torch.rand(n_model, generator=torch.Generator().manual_seed(1)),
                   torch.full((B - n_model,), 0.1)])  # [rewards; beta]
    model, out = _Recorder(), {}
    for below in (None, 0.1, 1.0):
        out[below] = step_loss(model, Scheduler(), Batch(x0, ids, w, n_model, 600, below),
                               torch.Generator().manual_seed(5), weighted_mse)
    t = model.t  # the same timesteps and noise every time
    gen = torch.Generator().manual_seed(5)
    torch.randint(0, 1000, (B,), generator=gen)
    noise = torch.randn(x0.shape, generator=gen)  # eps_hat = 0: each row's loss is its noise
    per_row = noise.pow(2).flatten(1).mean(1)
    low = torch.zeros(B, dtype=torch.bool)
    low[n_model:] = t[n_model:] < 600
    assert low.any() and (~low[n_model:]).any()
    expected = w.clone()
    expected[low] = 1.0
    torch.testing.assert_close(out[1.0], 2 * (expected * per_row).mean())  # finetune_loss, 50/50
    torch.testing.assert_close(out[0.1], out[None])  # = beta: Eq. 2 as written
    control = Batch(x0, ids, torch.ones(B), 0, 600, 1.0)  # no D_model rows: the cut does nothing
    assert torch.equal(step_loss(model, Scheduler(), control, torch.Generator().manual_seed(5),
                                 weighted_mse), step_loss(model, Scheduler(), Batch(
                                     x0, ids, torch.ones(B)), torch.Generator().manual_seed(5),
                                     weighted_mse))


class _Affine(torch.nn.Module):
    """A stand-in denoiser eps = a * x + b."""
    def __init__(self, a, b):
        super().__init__()
        self.a, self.b = torch.nn.Parameter(torch.tensor(a)), torch.nn.Parameter(torch.tensor(b))

    def forward(self, x, t, ids):
        return self.a * x + self.b


def test_anchor_is_zero_at_the_start_and_adds_lambda_times_its_loss_on_d_model_rows():
    B, n_model = 8, 4
    x0 = torch.randn(B, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    ids, w = torch.zeros(B, 4, dtype=torch.long), torch.rand(B)
    batch = Batch(x0, ids, w, n_model, 0)
    per_t = torch.linspace(2, 0, 1000)  # any weighting
    loss = lambda model, anchor: step_loss(model, Scheduler(), batch,
                                           torch.Generator().manual_seed(3), weighted_mse, anchor)
    pre = _Affine(0.5, 0.1).requires_grad_(False)
    # At the start of fine-tuning the model is the pretrained one: the anchor adds exactly 0.
    same = _Affine(0.5, 0.1)
    assert torch.equal(loss(same, Anchor(pre, 3.0, per_t)), loss(same, None))
    # Elsewhere it adds lambda * anchor_loss on the D_model rows at their timesteps and inputs.
    moved = _Affine(0.7, -0.2)
    total, plain = loss(moved, Anchor(pre, 3.0, per_t)), loss(moved, None)
    gen = torch.Generator().manual_seed(3)
    t = torch.randint(0, 1000, (B,), generator=gen)
    noise = torch.randn(x0.shape, generator=gen)
    x_t = Scheduler().add_noise(x0, noise, t)[:n_model]
    by_hand = anchor_loss(0.7 * x_t - 0.2, 0.5 * x_t + 0.1, per_t[t[:n_model]])
    torch.testing.assert_close(total - plain, 3.0 * by_hand)
    # its gradient flows to the fine-tuned model only
    total.backward()
    assert moved.a.grad is not None and pre.a.grad is None


def test_paper_run_is_the_papers_settings_and_runs_resolve_once():
    from tiny_rlhf_t2i.config import parse_config
    cfg = parse_config(finetune.FinetuneConfig, finetune.PRESETS, ["--anchor", "2"])
    paper = finetune.RUNS["paper"].config(cfg)  # one offline round, every t, plain Eq. 2
    assert (paper.rounds, paper.model_t_min, paper.balance, paper.anchor) == (1, 0, False, 0.0)
    assert paper.pretrained_below == 0  # the paper's model alone samples
    assert 0 < cfg.pretrained_below <= cfg.model_t_min  # the default: pretrained below a cut
    assert finetune.RUNS["paper"].weights == "reward" and finetune.RUNS["paper"].unlabeled
    assert (paper.beta, paper.steps) == (cfg.beta, cfg.steps)  # the rest: the command line's
    assert finetune.RUNS["feedback"].config(cfg) == cfg


def test_validation_seeds_are_the_evaluation_prompts_with_disjoint_seeds():
    test, val = eval_records(4), eval_records(4, val=True)
    assert [r["prompt"] for r in test] == [r["prompt"] for r in val]
    assert not {r["seed"] for r in test} & {r["seed"] for r in val}
    assert len({r["seed"] for r in val}) == len(val)


def test_heldout_prompts_are_disjoint_from_the_evaluation_and_draw_their_own_seeds():
    held, seen_eval = heldout_records(2), {r["prompt"] for r in eval_records(1)}
    prompts = [r["prompt"] for r in held]
    assert len(set(prompts)) == 240 and not set(prompts) & seen_eval
    assert {r["split"] for r in held} == {"seen"} and "a red circle on a gray background" in prompts
    assert not any("diamond" in p for p in prompts)  # the unseen shape stays unseen
    others = {r["seed"] for r in eval_records(16) + eval_records(16, val=True)}
    assert len({r["seed"] for r in held}) == len(held) and not {r["seed"] for r in held} & others
    assert held == heldout_records(2) and heldout_records(0) == []


def test_kept_round_has_the_best_reward_among_rounds_within_the_fidelity_tolerance():
    sig = lambda reward, wf: {"reward": reward, "well_formed": wf}
    rounds = [sig(0.5, 0.99), sig(0.7, 0.985), sig(0.8, 0.97), sig(0.75, 0.98)]
    assert pick_round(rounds, 0.015) == 3  # round 2 gained reward but lost 2 points of shapes
    assert pick_round(rounds, 0.03) == 2
    assert pick_round(rounds, 0.0) == 0  # nothing keeps the shapes: the pretrained model
    assert pick_round([sig(0.5, 0.99), sig(0.4, 0.99)], 0.015) == 0  # less reward: not kept


def test_rounds_without_new_labels_run_on_any_image_size(smoke_run, tmp_path, monkeypatch):
    """--labels_per_round 0: round 2 learns from its unlabeled samples, scored by stage 2's
    reward (nothing new to train it on); evaluated on the validation seeds. D_model's own
    samples are drawn at --d_model_guidance, whatever the evaluation's guidance."""
    scales, collect = [], finetune.collect
    monkeypatch.setattr(finetune, "collect", lambda *a, **kw: (scales.append(
        kw["guidance_scale"]), collect(*a, **kw))[1])
    fb = tmp_path / "feedback"
    shutil.copytree(smoke_run / "feedback" / "train", fb / "train")
    shutil.copytree(smoke_run / "fd", tmp_path / "fd")
    _finetune(smoke_run, fb, tmp_path / "out", "--labels_per_round", "0", "--evaluation", "val",
              "--d_model_guidance", "1.5")
    assert scales == [1.5, 1.5]  # round 1's and round 2's unlabeled samples
    m = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert [p["round"] for p in m["rounds"]["feedback"]] == [0, 1, 2]
    assert m["labels"] == {"feedback": 64} and m["evaluation"] == "val"
    assert not (tmp_path / "out/feedback/round2/labeled").exists()
    assert not (tmp_path / "out/feedback/round2/reward.pt").exists()


def _net(seed):
    torch.manual_seed(seed)
    net = TextToImage(ModelConfig(channels=16, text_dim=32, text_layers=1)).eval()
    for p in net.parameters():  # the zero-initialised output layer would hide the routing
        p.data.normal_(0, 0.1)
    return net


@torch.no_grad()
def test_pretrained_below_cut_gives_each_row_the_model_that_owns_its_timestep():
    tuned, pre = _net(0), _net(1)
    split = PretrainedBelowCut(tuned, pre, cut=650)
    x = torch.randn(6, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    ids = torch.randint(1, 20, (6, 8), generator=torch.Generator().manual_seed(3))
    t = torch.tensor([0, 649, 650, 999, 300, 700])
    eps = split(x, t, ids)  # a mixed batch: rows 2, 3, 5 tuned, the rest pretrained
    high = t >= 650
    torch.testing.assert_close(eps[high], tuned(x[high], t[high], ids[high]))
    torch.testing.assert_close(eps[~high], pre(x[~high], t[~high], ids[~high]))
    assert not torch.allclose(tuned(x, t, ids), pre(x, t, ids))  # the test can tell them apart
    for tt in (torch.full((6,), 10), torch.full((6,), 900)):  # one model only: no scatter
        ref = (tuned if tt[0] >= 650 else pre)(x, tt, ids)
        assert torch.equal(split(x, tt, ids), ref)


@torch.no_grad()
def test_stage3_checkpoint_loads_as_the_split_model_it_was_evaluated_as(smoke_run):
    """finetune.py's round checkpoint names the pretrained model and the cut, so
    `sample.py --ckpt` draws what the evaluation drew."""
    loaded, _ = load_model(smoke_run / "finetune/feedback/round1/ckpt.pt")
    pre, _ = load_model(smoke_run / "unet/ckpt.pt")
    assert isinstance(loaded, PretrainedBelowCut)
    assert loaded.cut == finetune.FinetuneConfig().pretrained_below
    for name, value in pre.state_dict().items():
        assert torch.equal(value, loaded.pretrained.state_dict()[name])
    ema = torch.load(smoke_run / "finetune/feedback/round1/ckpt.pt", weights_only=True)["ema"]
    assert all(torch.equal(v, loaded.tuned.state_dict()[n]) for n, v in ema.items())
    ctrl, _ = load_model(smoke_run / "finetune/control/round1/ckpt.pt")
    assert isinstance(ctrl, PretrainedBelowCut)  # the control is sampled the same way
