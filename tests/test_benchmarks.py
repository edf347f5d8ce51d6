"""Every benchmark script runs at smoke size (a benchmark that no test runs breaks silently)."""
import json
import math
import sys
from pathlib import Path

import pytest
import torch

from tiny_rlhf_t2i.evaluate import eval_records, heldout_records, pick_round
from tiny_rlhf_t2i.feedback import feedback_records
from tiny_rlhf_t2i.reward import RewardModel

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import attention_ab  # noqa: E402
import bench_gpu_preset  # noqa: E402
import bench_judge  # noqa: E402
import bench_loss  # noqa: E402
import bench_sampler  # noqa: E402
import compare_runs  # noqa: E402
import count_breakdown  # noqa: E402
import d_model_weights  # noqa: E402
import eval_share  # noqa: E402
import fidelity_split  # noqa: E402
import guidance_sweep  # noqa: E402
import lone_shape_probe  # noqa: E402
import pipeline_times  # noqa: E402
import reward_breakdown  # noqa: E402
import reward_head  # noqa: E402
import reward_last_block  # noqa: E402
import reward_seeds  # noqa: E402
import round_selection  # noqa: E402
import split_sampling  # noqa: E402
import stage0_recipes  # noqa: E402
import stage3_seeds  # noqa: E402
import strict_labels  # noqa: E402
import win_loss_breakdown  # noqa: E402


def test_count_breakdown(smoke_run, capsys):
    count_breakdown.main([str(smoke_run / "unet" / "ckpt.pt"),
                          str(smoke_run / "finetune" / "feedback" / "round2" / "ckpt.pt"),
                          "--samples_per_prompt", "1", "--steps", "3"])
    out = capsys.readouterr().out
    assert out.count("(count ") == 2 and "bad with a malformed blob" in out


def test_round_selection_keeps_what_finetune_kept_and_caches_each_checkpoint(smoke_run, tmp_path,
                                                                            capsys):
    ft, out = smoke_run / "finetune", tmp_path / "rs.json"
    args = [f"feedback={ft / 'feedback'}", f"control={ft / 'control'}", "--pretrained",
            str(smoke_run / "unet" / "ckpt.pt"), "--reward_dir", str(smoke_run / "reward"),
            "--fd", str(smoke_run / "fd"), "--fd_net_steps", "30", "--samples_per_prompt", "1",
            "--steps", "5", "--out", str(out)]
    round_selection.main(args)
    saved = json.loads(out.read_text())
    assert len(saved["signals"]) == 5  # the pretrained model once, then two rounds per run
    for name, run in saved["runs"].items():  # the control keeps its last round, as finetune.py
        assert run["kept"] == (2 if name == "control" else pick_round(run["signal"], 0.015))
        assert all(s["n"] == 240 for s in run["signal"])
    assert "feedback (" in capsys.readouterr().out


def test_bench_sampler_judges_each_solver_against_the_first(smoke_run, tmp_path):
    ckpt = str(smoke_run / "unet" / "ckpt.pt")
    bench_sampler.main([ckpt, "--samplers", "ddim:4,dpm++2m:3", "--per_prompt", "1",
                        "--out", str(tmp_path / "s.json")])
    rows = json.loads((tmp_path / "s.json").read_text())["results"][ckpt]
    assert list(rows) == ["ddim:4", "dpm++2m:3"]
    assert rows["ddim:4"]["verdicts_as_reference"] == 1.0  # the reference agrees with itself
    assert 0 <= rows["dpm++2m:3"]["overall"] <= 100 and "well_formed" in rows["dpm++2m:3"]


def test_stage0_recipes_spread_by_hand():
    assert stage0_recipes.spread(["a", "b"], ("a", "b")) == pytest.approx(1.0)
    assert stage0_recipes.spread(["a", "a", None], ("a", "b")) == 0.0  # unread values left out
    h = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25)) / math.log(2)
    assert stage0_recipes.spread(["a", "a", "a", "b"], ("a", "b")) == pytest.approx(h)


def test_stage0_recipes_measures_each_checkpoint_and_the_clean_renders(smoke_run, tmp_path):
    ckpt = str(smoke_run / "unet" / "ckpt.pt")
    stage0_recipes.main([ckpt, "--per_prompt", "1", "--steps", "3", "--fd_dir",
                         str(smoke_run / "fd"), "--fd_net_steps", "30",
                         "--out", str(tmp_path / "r.json")])
    out = json.loads((tmp_path / "r.json").read_text())
    assert out["seeds"] == "validation"
    clean, row = out["results"]["clean renders"], out["results"][ckpt]
    assert 0 < clean["background_spread"] <= 1 and 0 < clean["color_spread"] <= 1
    assert row["steps"] == 30 and row["prediction"] == "epsilon" and row["min_snr_gamma"] == 0
    assert 0 <= row["overall"] <= 100 and row["fd"] > 0 and 0 <= row["background_spread"] <= 1


def test_bench_sampler_at_other_batches_draws_the_same_images(smoke_run, tmp_path):
    ckpt = str(smoke_run / "unet" / "ckpt.pt")
    bench_sampler.main([ckpt, "--samplers", "dpm++2m:3:64,dpm++2m:3:16,dpm++2m:3", "--per_prompt",
                        "1", "--channels_last", "--out", str(tmp_path / "s.json")])
    rows = json.loads((tmp_path / "s.json").read_text())["results"][ckpt]
    assert list(rows) == ["dpm++2m:3:64", "dpm++2m:3:16", "dpm++2m:3"]
    assert all(r["images_as_reference"] and r["verdicts_as_reference"] == 1.0
               for r in rows.values())


def test_stage3_seeds_launches_arms_and_writes_what_the_table_prints(smoke_run, tmp_path, capsys):
    """Two arms at smoke size, as separate processes after one shared preparation, then the
    table of their evaluations and its JSON (benchmarks/results/stage3_seeds.json's format)."""
    root = tmp_path / "s3"
    stage3_seeds.main(["launch", str(root), "--seeds", "0", "--arms", "feedback,control",
                       "--labeled", str(smoke_run / "feedback" / "train"),
                       "--fd", str(smoke_run / "fd"), "--timeout", "600", "--",
                       "--preset", "smoke", "--unet_dir", str(smoke_run / "unet"),
                       "--reward_dir", str(smoke_run / "reward")])
    out = capsys.readouterr().out
    assert "s0/feedback: exit 0" in out and "s0/control: exit 0" in out
    stage3_seeds.main(["table", str(root), "--out", str(tmp_path / "t.json")])
    out = capsys.readouterr().out
    assert "| feedback | 1 |" in out and "| control | 1 |" in out and "- feedback (s0): " in out
    assert "| group | pretrained | feedback | control |" in out  # the README's table
    saved = json.loads((tmp_path / "t.json").read_text())
    assert saved["command"].startswith("python benchmarks/stage3_seeds.py launch")
    assert saved["commit"] and saved["machine"]
    feedback, control = saved["seeds"]["s0"]["feedback"], saved["seeds"]["s0"]["control"]
    assert feedback["finished"] and len(feedback["rounds"]) == len(control["rounds"]) == 2
    last = feedback["rounds"][-1]
    for key in ("overall", "count", "seen", "unseen", "combination", "well_formed", "fd",
                "reward", "wins", "losses", "wins_vs_control", "count_breakdown", "wins_strict",
                "losses_strict", "well_formed_strict"):
        assert key in last, key
    assert "| wins : losses vs pretrained, strict judge | - |" in out
    # the printed table is these numbers: the overall alignment of the round the arm keeps
    k = feedback["kept"]
    shown = feedback["rounds"][k - 1] if k else saved["seeds"]["s0"]["pretrained"]
    assert f"| feedback | 1 | {shown['overall']:.1f} |" in out
    assert f"| round kept | - | {k} | {control['kept']} |" in out
    # the arms shared the seed's preparation: the same pretrained evaluation
    for name in ("pretrained_eval.json",):
        pre = [json.loads((root / "s0" / a / name).read_text())
               for a in ("prep", "feedback", "control")]
        assert pre[0] == pre[1] == pre[2]


def test_reward_breakdown(smoke_run, capsys):
    reward_breakdown.main(["--reward_dir", str(smoke_run / "reward"),
                           "--heldout", str(smoke_run / "feedback" / "heldout")])
    out = capsys.readouterr().out
    assert "| group | images | good | pairs | reward_pc | reward |" in out
    assert "pairwise accuracy ranked by the logit" in out


def test_reward_seeds(smoke_run, capsys):
    reward_seeds.main(["--seeds", "0,1", "--reward_dir", str(smoke_run / "reward"),
                       "--feedback_dir", str(smoke_run / "feedback"), "--reward_steps", "3"])
    out = capsys.readouterr().out
    assert "| - | clip_score |" in out and "| ensemble of 2 | reward |" in out


def test_reward_last_block_trains_only_what_it_names(smoke_run, tmp_path, capsys):
    from tiny_rlhf_t2i.reward import load_stage2
    clip, _ = load_stage2(smoke_run / "reward", "python train_reward.py --preset smoke")
    model = reward_last_block.LastBlockOnly(clip)
    assert all(p.requires_grad for p in model.image.head.parameters())
    assert not any(p.requires_grad for p in model.image.convs.parameters())
    assert not any(p.requires_grad for p in model.text.parameters())
    out = tmp_path / "rlb.json"
    reward_last_block.main(["--seeds", "0", "--reward_dir", str(smoke_run / "reward"),
                            "--feedback_dir", str(smoke_run / "feedback"), "--reward_steps", "3",
                            "--out", str(out)])
    rows = json.loads(out.read_text())["results"]
    assert [r["tower"] for r in rows] == ["frozen", "last_block", "all"]
    assert "| last_block | mean |" in capsys.readouterr().out
    assert reward_last_block.reward.RewardModel is RewardModel  # put back after each run


def test_reward_head(smoke_run, tmp_path, capsys):
    out = tmp_path / "rh.json"
    reward_head.main(["--seeds", "0", "--reward_dir", str(smoke_run / "reward"),
                      "--feedback_dir", str(smoke_run / "feedback"), "--reward_steps", "3",
                      "--out", str(out)])
    rows = json.loads(out.read_text())["results"]
    assert [(r["variant"], r["head"], r["lambda"]) for r in rows] == [
        v[:3] for v in reward_head.VARIANTS]
    assert [r["saturated"] is None for r in rows] == [False, False, False, True, True]
    assert "| linear_no_pc | 0 |" in capsys.readouterr().out
    assert reward_head.reward.RewardModel is RewardModel  # put back after each run


def test_reward_benchmarks_run_the_variants_asked_for(smoke_run, tmp_path):
    args = ["--seeds", "0", "--reward_dir", str(smoke_run / "reward"),
            "--feedback_dir", str(smoke_run / "feedback"), "--reward_steps", "2"]
    reward_head.main(args + ["--variants", "sigmoid_no_pc,sigmoid", "--out",
                             str(tmp_path / "rh.json")])
    rows = json.loads((tmp_path / "rh.json").read_text())["results"]
    assert [r["variant"] for r in rows] == ["sigmoid", "sigmoid_no_pc"]  # the benchmark's order
    with pytest.raises(SystemExit, match="unknown \\['sigmoid_pc'\\]"):
        reward_head.main(args + ["--variants", "sigmoid_pc"])


def test_bench_gpu_preset_on_the_cpu(tmp_path):
    """The lever benchmark at smoke size: each lever on top of the last, the batch-made bound,
    the samplers (those a CPU has) at the fastest of the batch sizes."""
    out = tmp_path / "smoke.json"
    bench_gpu_preset.main(["--out", str(out), "--preset", "smoke", "--device", "cpu",
                           "--timed", "50", "--sample_n", "4", "--sample_batches", "2,4",
                           "--levers", "python_data,table_data"])
    result = json.loads(out.read_text())
    rates = result["train_steps_per_s"]
    assert list(rates) == ["python_data", "python_data (batch made)", "python_data+table_data",
                           "python_data+table_data (batch made)"]
    assert all(v > 0 for v in rates.values())
    samplers = result["sample_images_per_s"]
    best = max((2, 4), key=lambda b: samplers[f"fp32 batch {b}"])
    assert list(samplers) == ["fp32 batch 2", "fp32 batch 4", f"bf16 batch {best}",
                              f"bf16+channels_last batch {best}"], samplers
    assert all(v > 0 for v in samplers.values()) and result["failed"] == {}


def test_bench_loss_says_when_there_is_no_cuda(capsys, monkeypatch):
    if bench_loss.torch.cuda.is_available():
        pytest.skip("a CUDA device is present: the benchmark would run for real")
    monkeypatch.setattr(sys, "argv", ["bench_loss.py"])
    bench_loss.main()
    assert "CUDA not available" in capsys.readouterr().out


def test_compare_runs_finds_a_changed_tensor(smoke_run, tmp_path, capsys):
    assert compare_runs.main([str(smoke_run / "unet"), str(smoke_run / "unet")]) == 0
    state = torch.load(smoke_run / "unet" / "ckpt.pt", weights_only=True)
    name = next(iter(state["ema"]))
    state["ema"][name] = state["ema"][name] + 1
    state["loss_curve"] = state["loss_curve"][:-1]
    torch.save(state, tmp_path / "ckpt.pt")
    capsys.readouterr()
    assert compare_runs.main([str(smoke_run / "unet"), str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "weights DIFFER (1 tensors)" in out and ".loss_curve" in out


def test_bench_judge(tmp_path):
    """The judge's cost at smoke size; its clean renders (every other image) are judged good."""
    out = tmp_path / "judge.json"
    bench_judge.main(["--out", str(out), "--n", "20", "--resolutions", "16,32"])
    result = json.loads(out.read_text())
    assert set(result["ms_per_image"]) == {"16px", "32px"}
    assert all(v > 0 for v in result["ms_per_image"].values())
    for res in (16, 32):
        images, records = bench_judge.judge_images(20, res)
        _, goods, reasons, _ = bench_judge.score(images[::2], records[::2])
        assert all(goods), reasons


def test_d_model_weights(smoke_run, capsys):
    """Round 1's D_model of the smoke run: the shares of weight per group, and in all."""
    fb = smoke_run / "feedback"
    d_model_weights.main(["--reward_dir", str(smoke_run / "reward"), "--labeled", str(fb / "train"),
                          "--unlabeled", str(fb / "unlabeled")])
    out = capsys.readouterr().out
    n = sum(1 for _ in open(fb / "train" / "labels.jsonl")) + sum(
        1 for _ in open(fb / "unlabeled" / "samples.jsonl"))
    assert out.startswith(f"{n} images; mean reward: good ") and f"| all | {n} | " in out
    assert "| count/2 | " in out


def test_pipeline_times_adds_up_what_the_stages_wrote(smoke_run, tmp_path, capsys):
    pipeline_times.main(["--unet", str(smoke_run / "unet"), "--reward", str(smoke_run / "reward"),
                         "--finetune", str(smoke_run / "finetune"), "--install_seconds", "30",
                         "--out", str(tmp_path / "t.json")])
    t = json.loads((tmp_path / "t.json").read_text())
    stages = t["stages"]
    assert stages["install"]["seconds"] == 30 and t["commit"] and t["machine"]
    for s in stages.values():  # the phases of a stage add up to it (each rounded to a second)
        if s["phases"]:
            assert abs(sum(s["phases"].values()) - s["seconds"]) <= len(s["phases"])
    assert t["total_minutes"] == round(sum(s["seconds"] for s in stages.values()) / 60, 1)
    assert stages["stage 3 (finetune.py)"]["runs"] == "feedback,control"
    assert "| total | |" in capsys.readouterr().out


def test_win_loss_breakdown_of_a_copy_has_no_wins_or_losses(smoke_run, tmp_path, capsys):
    import shutil
    ckpt, copy = smoke_run / "unet" / "ckpt.pt", tmp_path / "copy.pt"
    shutil.copy(ckpt, copy)
    out = tmp_path / "wl.json"
    win_loss_breakdown.main([str(ckpt), str(copy), "--samples_per_prompt", "1", "--steps", "2",
                             "--out", str(out)])
    before, after = json.loads(out.read_text())["results"].values()
    assert sum(c["images"] for c in after["categories"].values()) == 88  # every eval prompt
    assert all(c["wins"] == c["losses"] == 0 for c in after["categories"].values())
    assert after["malformed_one_shape"] == before["malformed_one_shape"]
    assert after["one_shape_blobs_why"] == before["one_shape_blobs_why"]
    assert "color:" in capsys.readouterr().out


def test_lone_shape_probe_asks_what_no_stage_asks_on_seeds_of_its_own(smoke_run, tmp_path):
    probe = [r for t in lone_shape_probe.TEMPLATES for r in lone_shape_probe.records(t)]
    asked = {r["prompt"] for r in eval_records(1) + heldout_records(1)
             + feedback_records("seen", 200, 0)}
    assert len(probe) == 3 * 64 + 3 * 6 * 8 and not {r["prompt"] for r in probe} & asked
    others = {r["seed"] for r in heldout_records(4) + eval_records(16) + eval_records(16, val=True)}
    assert len({r["seed"] for r in probe}) == len(probe) and not {r["seed"] for r in probe} & others
    out, ckpt = tmp_path / "probe.json", smoke_run / "unet" / "ckpt.pt"
    lone_shape_probe.main([str(ckpt), "--steps", "1", "--out", str(out)])
    row = json.loads(out.read_text())["results"][str(ckpt)]
    assert [r["n"] for r in row.values()] == [192, 144]
    assert all(0 <= r["well_formed"] <= 1 for r in row.values())


def test_strict_labels_labels_with_the_strict_judge_and_restores_the_judge(smoke_run, tmp_path):
    import numpy as np
    from PIL import Image

    from tiny_rlhf_t2i import feedback
    from tiny_rlhf_t2i.judge import judge
    from tiny_rlhf_t2i.scenes import Scene, render
    circle = render(Scene("circle", "red", "gray", ((0.5, 0.5, 0.24),)), 16)
    diamond = render(Scene("diamond", "red", "gray", ((0.5, 0.5, 0.24),)), 16)
    between = np.concatenate([circle[:, :8], diamond[:, 8:]], 1)  # read as a circle, drawn half
    assert judge(between, "a red circle")[0] and not strict_labels.strict_judge(between,
                                                                                "a red circle")[0]
    out = tmp_path / "strict"
    strict_labels.main(["--out", str(out), "--preset", "smoke", "--unet_dir",
                        str(smoke_run / "unet")])
    assert feedback.judge is judge  # put back for whatever runs next
    rows = [json.loads(line) for line in (out / "feedback" / "train" / "labels.jsonl").open()]
    for r in rows:  # every label is the strict judge's verdict of its image (or its flip)
        image = np.asarray(Image.open(out / "feedback" / "train" / r["image"]).convert("RGB"))
        flipped = r["reason"].endswith("(label flipped)")
        assert r["label"] == int(strict_labels.strict_judge(image, r["prompt"])[0] != flipped)
    assert (out / "finetune" / "metrics.json").exists()


def test_split_sampling_at_a_cut_past_every_step_is_the_pretrained_model(smoke_run, tmp_path):
    out = tmp_path / "split.json"
    split_sampling.main(["--pretrained", str(smoke_run / "unet/ckpt.pt"), "--reward_dir",
                         str(smoke_run / "reward"), "--models",
                         f"r2={smoke_run / 'finetune/feedback/round2/ckpt.pt'}", "--cuts",
                         "0,1000", "--samples_per_prompt", "1", "--steps", "3", "--fd_cache",
                         str(smoke_run / "fd"), "--fd_net_steps", "30", "--out", str(out)])
    res = json.loads(out.read_text())["results"]
    assert set(res) == {"pretrained", "r2 cut 0", "r2 cut 1000"}
    assert res["r2 cut 1000"] == res["pretrained"]  # every step below the cut: pretrained only
    assert res["r2 cut 0"] != res["pretrained"]  # the fine-tuned model alone differs


def test_fidelity_split_measures_the_pretrained_model_as_itself(smoke_run, tmp_path):
    out = tmp_path / "split.json"
    fidelity_split.main(["--pretrained", str(smoke_run / "unet/ckpt.pt"), "--reward_dir",
                         str(smoke_run / "reward"), "--models",
                         f"same={smoke_run / 'unet/ckpt.pt'}",
                         f"r2={smoke_run / 'finetune/feedback/round2/ckpt.pt'}",
                         "--samples_per_prompt", "2", "--steps", "3", "--fd_cache",
                         str(smoke_run / "fd"), "--fd_net_steps", "30", "--out", str(out)])
    res = json.loads(out.read_text())["results"]
    assert set(res) == {"clean renders", "pretrained", "same", "r2"}
    # The same model, seeds and noise: the same verdicts and blobs. Its samples may differ in
    # float rounding only (the script runs the pretrained model in channels_last, as stage 3
    # does, and loads the others as saved).
    same, pre = res["same"], res["pretrained"]
    for key in ("alignment", "shape_fit", "shape_fit_by_blobs", "shape_fit_at_pretrained_mix"):
        assert same[key] == pre[key]
    assert same["diversity"] == pytest.approx(pre["diversity"], rel=1e-4)
    assert pre["shape_fit_at_pretrained_mix"] == pytest.approx(pre["shape_fit"])
    assert sum(b["blobs"] for b in pre["shape_fit_by_blobs"].values()) > 0


def test_guidance_sweep_draws_what_the_validation_evaluation_draws(smoke_run, tmp_path):
    from tiny_rlhf_t2i.evaluate import Evaluator
    from tiny_rlhf_t2i.reward import load_reward
    from tiny_rlhf_t2i.unet import load_model
    out, ckpt = tmp_path / "sweep.json", smoke_run / "unet/ckpt.pt"
    guidance_sweep.main(["--models", f"pre={ckpt}", "--scales", "1,3", "--reward_dir",
                         str(smoke_run / "reward"), "--fd_cache", str(smoke_run / "fd"),
                         "--fd_net_steps", "30", "--samples_per_prompt", "2", "--steps", "3",
                         "--out", str(out)])
    res = json.loads(out.read_text())["result"]["pre"]
    assert set(res) == {"1.0", "3.0"} and res["1.0"] != res["3.0"]
    model = load_model(ckpt)[0].to(memory_format=torch.channels_last)
    ev = Evaluator(2, 3, 3.0, model.cfg.resolution, load_reward(smoke_run / "reward", "x"),
                   smoke_run / "fd", 30, val=True)
    m = ev.model(model, "direct")[0]
    assert res["3.0"]["overall"] == round(100 * m["alignment"]["overall"]["mean"], 1)
    assert res["3.0"]["diversity"] == round(m["diversity"], 2)  # two per prompt: defined
    assert res["3.0"]["fd"] == round(m["fd"], 1)


def test_eval_share_times_every_phase(smoke_run, tmp_path):
    out = tmp_path / "share.json"
    eval_share.main(["--ckpt", str(smoke_run / "unet/ckpt.pt"), "--reward_dir",
                     str(smoke_run / "reward"), "--samples_per_prompt", "1", "--steps", "2",
                     "--fd_cache", str(smoke_run / "fd"), "--fd_net_steps", "30",
                     "--out", str(out)])
    res = json.loads(out.read_text())
    assert res["images"] == len(eval_records(1))
    assert res["sample_s"] > 0 and res["judge_analyze_s"] > 0 and res["all_measures_s"] > 0
    assert 0 < res["measures_share"] < 1 and res["commit"]


def test_attention_ab_times_both_forms_of_the_same_attention(tmp_path):
    """The written-out attention is the fused kernel's math: one forward pass of the cpu
    preset's model agrees to rounding; both forms are timed in alternating blocks."""
    attention_ab.main(["--blocks", "2", "--train_steps", "1", "--sample_n", "4",
                       "--out", str(tmp_path / "a.json")])
    saved = json.loads((tmp_path / "a.json").read_text())
    assert saved["command"].startswith("python") and saved["machine"]
    r = saved["results"]
    assert 0 < r["max_abs_output_difference"] < 1e-4
    for key in ("train_steps_per_s", "sample_images_per_s"):
        assert [len(r[key][f]) for f in ("fused", "written_out")] == [2, 2]
    assert set(r["median_speedup"]) == {"train", "sample"}
    assert attention_ab.text.Attention.forward is not attention_ab.written_out  # put back
