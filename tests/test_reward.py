"""Stage 2: prompt augmentation, the reward model learning a tiny problem, feedback files."""
import dataclasses
import json

import numpy as np
import pytest
import torch

from tiny_rlhf_t2i.clip import Clip, ClipConfig
from tiny_rlhf_t2i.config import UserError
from tiny_rlhf_t2i.diffusion import to_model_space
from tiny_rlhf_t2i.feedback import collect, feedback_records, load_labeled
from tiny_rlhf_t2i.files import write_jsonl
from tiny_rlhf_t2i.losses import reward_loss
from tiny_rlhf_t2i.reward import RewardModel, RewardTrainConfig, augment_prompts
from tiny_rlhf_t2i.text import encode
from tiny_rlhf_t2i.scenes import render_prompt
from tiny_rlhf_t2i.world import UNSEEN_SHAPES, parse, prompt_set, to_prompt

ATTRS = ("shape", "count", "color", "background")


@pytest.mark.parametrize("prompt", ["two circles", "a red square", "a triangle on a gray background",
                                    "three yellow squares on a black background"])
def test_augmentation_changes_exactly_one_named_attribute(prompt):
    rng = np.random.default_rng(0)
    spec = parse(prompt)
    shapes = set()
    for _ in range(20):
        wrong = augment_prompts(prompt, 4, rng)
        assert len(set(wrong)) == 4 and prompt not in wrong
        for w in wrong:
            new = parse(w)
            changed = [a for a in ATTRS if getattr(new, a) != getattr(spec, a)]
            assert len(changed) == 1 and getattr(spec, changed[0]) is not None
            shapes.add(new.shape)
    assert set(UNSEEN_SHAPES) <= shapes  # held-out shapes do appear, as wrong prompts only


def test_reward_model_learns_a_tiny_labeled_set():
    """Good = the image shows the prompt's color. 200 clean renders, seconds of training."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    specs = prompt_set("seen", "color")
    rows, images = [], []
    for i in range(200):
        shown = specs[int(rng.integers(len(specs)))]
        asked = shown if i % 2 else specs[int(rng.integers(len(specs)))]
        rows.append((to_prompt(asked), int(asked.color == shown.color and asked.shape == shown.shape)))
        images.append(render_prompt(to_prompt(shown), 16, seed=i))
    x = to_model_space(np.stack(images))
    ids = encode([p for p, _ in rows])
    y = torch.tensor([lab for _, lab in rows])
    model = RewardModel(Clip(ClipConfig()), train_image_encoder=True)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=2e-3)
    train = slice(0, 200)
    for step in range(300):
        loss = reward_loss(model(x[train], ids[train]), y[train], None, 0.0, 2.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        acc_train = ((model(x[train], ids[train]) > 0.5) == (y[train] == 1)).float().mean()
    assert loss.item() < 0.05 and acc_train > 0.95


def test_text_side_is_frozen():
    model = RewardModel(Clip(ClipConfig()))
    assert not any(p.requires_grad for p in model.text.parameters())
    assert not any(p.requires_grad for p in model.image.parameters())
    assert all(p.requires_grad for p in model.mlp.parameters())


def _folder(tmp_path, rows):
    from PIL import Image
    (tmp_path / "images").mkdir()
    for r in rows:
        Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(tmp_path / r["image"])
    (tmp_path / "labels.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "samples.jsonl").write_text("".join(  # labels must be of these images
        json.dumps({**r, "judge_good": True, "judge_reason": ""}) + "\n" for r in rows))


def test_labels_file_errors_name_the_line(tmp_path):
    row = {"id": "a", "image": "images/a.png", "prompt": "a circle", "category": "color",
           "split": "seen", "seed": 1, "label": 1}
    _folder(tmp_path, [row, {**row, "id": "b", "image": "images/b.png"}])
    rows, images = load_labeled(tmp_path, "python train_reward.py")
    assert len(rows) == 2 and images.shape == (2, 16, 16, 3)
    text = (tmp_path / "labels.jsonl").read_text().splitlines()
    (tmp_path / "labels.jsonl").write_text(text[0] + "\n{not json\n")
    with pytest.raises(UserError, match="labels.jsonl, line 2: not valid JSON"):
        load_labeled(tmp_path, "python train_reward.py")
    for bad in (3, True):  # json's true is not the label 1
        (tmp_path / "labels.jsonl").write_text(json.dumps({**row, "label": bad}) + "\n")
        with pytest.raises(UserError, match=f"line 1: label must be 0 or 1, not {bad}"):
            load_labeled(tmp_path, "python train_reward.py")
    (tmp_path / "labels.jsonl").write_text(json.dumps({**row, "id": "c"}) + "\n")  # a's image
    with pytest.raises(UserError, match="line 1: id 'c' is not in the folder's samples.jsonl"):
        load_labeled(tmp_path, "python train_reward.py")  # stage 2 must not train on it
    with pytest.raises(UserError, match="does not exist; run `python train_reward.py`"):
        load_labeled(tmp_path / "nowhere", "python train_reward.py")


def test_collect_refuses_a_folder_made_with_other_settings(tmp_path):
    """Resuming into a folder sampled for other records (another per-category size or seed)
    would silently mix two data sets; collect stops before sampling anything."""
    old = feedback_records("seen", 8, seed=2)
    write_jsonl(tmp_path / "samples.jsonl", [{**r, "judge_good": True, "judge_reason": ""}
                                             for r in old])
    new = feedback_records("seen", 16, seed=2)  # same ids, other prompts
    assert any(a["id"] == b["id"] and a["prompt"] != b["prompt"] for a, b in zip(old, new))
    with pytest.raises(UserError, match="was made with other settings"):
        collect(None, tmp_path, new, num_inference_steps=5, guidance_scale=3.0, flip_rate=0.0)
    other_seed = feedback_records("seen", 8, seed=3)  # other ids: would have been appended
    with pytest.raises(UserError, match="holds images of another feedback set"):
        collect(None, tmp_path, other_seed, num_inference_steps=5, guidance_scale=3.0,
                flip_rate=0.0)
    drawn = tmp_path / "drawn"  # the same records, drawn with another guidance
    drawn.mkdir()
    write_jsonl(drawn / "samples.jsonl", [{**r, "judge_good": True, "judge_reason": "",
                                           "guidance_scale": 3.0, "steps": 5} for r in old])
    with pytest.raises(UserError, match="sampled with guidance 3.0 and 5 steps, now asked for "
                                        "guidance 1.5 and 5 steps"):
        collect(None, drawn, old, num_inference_steps=5, guidance_scale=1.5, flip_rate=0.0)


def test_linear_reward_is_its_logit_and_loads_back_linear(tmp_path):
    from tiny_rlhf_t2i.files import save_checkpoint
    from tiny_rlhf_t2i.reward import load_reward
    torch.manual_seed(0)
    clip = Clip(ClipConfig())
    img, txt = torch.randn(4, clip.cfg.embed_dim), torch.randn(4, clip.cfg.embed_dim)
    linear, squashed = RewardModel(clip, linear=True), RewardModel(clip)
    squashed.load_state_dict(linear.state_dict())
    assert torch.equal(linear.head(img, txt), linear.logit(img, txt))
    assert torch.equal(squashed.head(img, txt), torch.sigmoid(linear.logit(img, txt)))
    save_checkpoint(tmp_path / "reward.pt", {
        "model": linear.state_dict(), "lam": 0.5, "clip_config": dataclasses.asdict(clip.cfg),
        "config": dataclasses.asdict(RewardTrainConfig(reward_head="linear"))})
    loaded = load_reward(tmp_path, "python train_reward.py")
    assert loaded.linear and torch.equal(loaded.head(img, txt), linear.head(img, txt))


def test_prompt_classification_over_r_in_0_1_can_never_be_satisfied():
    """Eq. 1's softmax ranks r itself; with r in [0, 1], T 2 and N 5 its loss can never fall
    below log(1 + 4 e^-0.5), so it never stops pushing a sigmoid reward's logits (over logits it
    would fall to 0 once the true prompt leads by enough)."""
    from tiny_rlhf_t2i.losses import prompt_classification_loss
    torch.manual_seed(0)
    clip = Clip(ClipConfig())
    model = RewardModel(clip)
    img, txt = torch.randn(4, clip.cfg.embed_dim), torch.randn(4, clip.cfg.embed_dim)
    assert torch.equal(model.prompt_scores(img, txt), model.head(img, txt))
    best_r = torch.tensor([[1.0, 0.0, 0.0, 0.0, 0.0]])  # the most one-hot r in [0, 1] can be
    assert prompt_classification_loss(best_r, 2.0).item() == pytest.approx(
        float(np.log(1 + 4 * np.exp(-0.5))), abs=1e-6)
    assert prompt_classification_loss(40 * best_r - 20, 2.0).item() < 1e-7


def test_stage_2_trains_stage_3s_reward_and_a_twin_that_shows_prompt_classification():
    from tiny_rlhf_t2i.reward import stage2_rewards
    assert RewardTrainConfig().lam == 0.0
    assert stage2_rewards(0.0) == [("reward_pc", 0.5), ("reward", 0.0)]  # the paper's lambda
    assert stage2_rewards(0.3) == [("reward_no_pc", 0.0), ("reward", 0.3)]


def test_train_reward_model_builds_the_head_it_is_asked_for():
    """Stage 2 and every stage-3 round train through train_reward_model: the config's head."""
    from tiny_rlhf_t2i.reward import train_reward_model
    prompts = ["a red circle", "two blue squares", "a green triangle", "three red circles"]
    rows = [{"prompt": p, "label": i % 2} for i, p in enumerate(prompts)]
    images = np.stack([render_prompt(p, 16, seed=i) for i, p in enumerate(prompts)])
    for head in ("sigmoid", "linear"):
        cfg = RewardTrainConfig(reward_steps=3, reward_batch=4, reward_head=head)
        model = train_reward_model(Clip(ClipConfig()), rows, images, cfg, 0.5, "cpu")
        assert model.linear == (head == "linear")
        score, logit = model.score(images, prompts), model.score(images, prompts, logit=True)
        assert torch.equal(score, logit if head == "linear" else torch.sigmoid(logit))
