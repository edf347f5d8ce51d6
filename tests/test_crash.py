"""kill -9 at chosen moments: each stage, killed between writing a file's temporary copy and
renaming it into place (the worst moment for an atomic write), resumes with the same command
to exactly the outputs of an uninterrupted run, with no temporary file left."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]

# Runs a script with os.replace patched to SIGKILL the process at its KILL_AT-th call: the
# temporary file is complete, the rename has not happened.
HOOK = """
import os, runpy, signal, sys
count, kill_at, real = [0], int(os.environ.get("KILL_AT", "0")), os.replace
def replace(src, dst):
    count[0] += 1
    if count[0] == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)
    return real(src, dst)
os.replace = replace
sys.argv = sys.argv[1:]
sys.path.insert(0, os.getcwd())
runpy.run_path(sys.argv[0], run_name="__main__")
"""
SETTINGS = {"resume", "out_dir", "feedback_dir"}  # differ between the runs compared


def _skipped(key) -> bool:
    """Not outputs: wall-clock times and speeds, and the settings of the runs compared."""
    return key in SETTINGS or str(key).endswith(("seconds", "_per_s"))


def _run(argv, kill_at=0):
    env = {**os.environ, "KILL_AT": str(kill_at), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", HOOK, *argv], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    return proc.returncode, proc.stderr


def _same(a, b, path=""):
    """Paths where two loaded outputs differ (tensors bit for bit; wall-clock times skipped)."""
    if isinstance(a, torch.Tensor):
        return [] if isinstance(b, torch.Tensor) and torch.equal(a, b) else [path]
    if isinstance(a, dict) and isinstance(b, dict):
        keys = {k for k in set(a) | set(b) if not _skipped(k)}
        return [d for k in keys for d in _same(a.get(k), b.get(k), f"{path}.{k}")]
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in _same(x, y, f"{path}[{i}]")]
    if isinstance(a, float) and isinstance(b, float) and a != a and b != b:
        return []  # NaN (e.g. an AUC with one class) equals NaN here
    return [] if a == b else [path]


def _compare_folders(straight: Path, resumed: Path):
    names = sorted(p.relative_to(straight) for p in straight.rglob("*") if p.is_file())
    assert names == sorted(p.relative_to(resumed) for p in resumed.rglob("*") if p.is_file())
    for name in names:
        a, b = straight / name, resumed / name
        if name.suffix == ".pt":
            diffs = _same(torch.load(a, weights_only=True), torch.load(b, weights_only=True))
        elif name.suffix == ".json":
            diffs = _same(json.loads(a.read_text()), json.loads(b.read_text()))
        elif name.suffix == ".md":  # the summary states the minutes a run took
            diffs = [] if [ln for ln in a.read_text().splitlines() if " min" not in ln] == [
                ln for ln in b.read_text().splitlines() if " min" not in ln] else ["lines"]
        else:  # images, JSONL rows
            diffs = [] if a.read_bytes() == b.read_bytes() else ["bytes"]
        assert not diffs, f"{name}: {diffs[:5]}"
    assert not list(resumed.rglob("*.tmp")), "a temporary file was left behind"


def test_stage0_killed_while_renaming_a_checkpoint_resumes_exactly(tmp_path):
    args = ["train_unet.py", "--preset", "smoke", "--steps", "12", "--warmup_steps", "2",
            "--ckpt_every_s", "0"]  # a checkpoint after every step: 12 renames, then the rest
    assert _run([*args, "--out_dir", str(tmp_path / "a")])[0] == 0
    for kill_at in (5, 13):  # the 5th step's checkpoint; the metrics after the last step
        out = str(tmp_path / f"k{kill_at}")
        assert _run([*args, "--out_dir", out], kill_at)[0] == -9
        rc, err = _run([*args, "--out_dir", out, "--resume", "true"])
        assert rc == 0, err
        _compare_folders(tmp_path / "a", Path(out))


def test_stage12_killed_while_renaming_labels_resumes_exactly(smoke_run, tmp_path):
    kill_at = 2  # the training set's labels.jsonl, after its samples.jsonl
    def args(name):
        return ["train_reward.py", "--preset", "smoke", "--unet_dir", str(smoke_run / "unet"),
                "--out_dir", str(tmp_path / name / "reward"),
                "--feedback_dir", str(tmp_path / name / "feedback")]
    assert _run(args("a"))[0] == 0
    assert _run(args("b"), kill_at)[0] == -9
    rc, err = _run(args("b"))  # stage 1 resumes its feedback sets by itself
    assert rc == 0, err
    _compare_folders(tmp_path / "a", tmp_path / "b")


@pytest.mark.parametrize("kill_at", [7, 15])  # inside round 1; round 2's unlabeled labels.jsonl
def test_stage3_killed_while_renaming_resumes_exactly(smoke_run, tmp_path, kill_at):
    def args(name):
        (tmp_path / name / "feedback").mkdir(parents=True, exist_ok=True)
        train = tmp_path / name / "feedback" / "train"
        if not train.exists():
            train.symlink_to(smoke_run / "feedback" / "train")
        return ["finetune.py", "--preset", "smoke", "--unet_dir", str(smoke_run / "unet"),
                "--reward_dir", str(smoke_run / "reward"), "--runs", "feedback",
                "--best_of_n", "1", "--ckpt_every_s", "0",
                "--feedback_dir", str(tmp_path / name / "feedback"),
                "--out_dir", str(tmp_path / name / "finetune")]
    assert _run(args("a"))[0] == 0
    assert _run(args("b"), kill_at)[0] == -9
    rc, err = _run([*args("b"), "--resume", "true"])
    assert rc == 0, err
    _compare_folders(tmp_path / "a", tmp_path / "b")


def test_a_failed_write_is_one_line_and_keeps_the_previous_file(tmp_path, monkeypatch):
    """A full disk while saving: one UserError naming the file and what to do; the previous
    checkpoint is intact and no temporary file is left."""
    from tiny_rlhf_t2i.config import UserError
    from tiny_rlhf_t2i.files import save_checkpoint
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, {"step": 1, "w": torch.ones(3)})

    def full_disk(*args):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(UserError, match=r"could not write .*ckpt.pt \(the previous one is "
                                        r"intact\): No space left on device; free disk space"):
        save_checkpoint(path, {"step": 2, "w": torch.zeros(3)})
    monkeypatch.undo()
    assert torch.load(path, weights_only=True)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]
