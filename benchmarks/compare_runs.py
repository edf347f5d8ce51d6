"""Compare the checkpoints of two run folders tensor by tensor (did a refactor change the math?).

    git worktree add /tmp/old 58e4e92 && (cd /tmp/old && python train_unet.py --preset smoke ...)
    python benchmarks/compare_runs.py /tmp/old/runs/smoke runs/smoke

For every `*.pt` under the first folder, the file of the same name under the second: whether the
weights (model, ema, opt) are bit-identical, and any other entry that differs (the loss curve,
the config). Checkpoints are read with weights_only=True. Exits 1 if any weights differ.
"""
import argparse
from pathlib import Path

import torch


def differences(a, b, path: str = "") -> list[str]:
    """The paths of the entries of two nested checkpoint structures that differ."""
    if isinstance(a, torch.Tensor):
        return [] if isinstance(b, torch.Tensor) and torch.equal(a, b) else [path]
    if isinstance(a, dict) and isinstance(b, dict):
        return ([f"{path}.{k} (only in one)" for k in set(a) ^ set(b)]
                + [d for k in a if k in b for d in differences(a[k], b[k], f"{path}.{k}")])
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in differences(x, y, f"{path}[{i}]")]
    return [] if a == b else [path]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("old", type=Path)
    parser.add_argument("new", type=Path)
    args = parser.parse_args(argv)
    weights_differ = False
    for old in sorted(args.old.rglob("*.pt")):
        new = args.new / old.relative_to(args.old)
        if not new.exists():
            print(f"{old.relative_to(args.old)}: missing in {args.new}")
            continue
        diffs = differences(torch.load(old, weights_only=True), torch.load(new, weights_only=True))
        weights = [d for d in diffs if d.split(".")[1:2] in (["model"], ["ema"], ["opt"])]
        weights_differ |= bool(weights)
        other = [d for d in diffs if d not in weights]
        print(f"{old.relative_to(args.old)}: weights "
              f"{'DIFFER (' + str(len(weights)) + ' tensors)' if weights else 'identical'}"
              + (f"; other entries differ: {', '.join(other[:5])}" if other else ""))
    return 1 if weights_differ else 0


if __name__ == "__main__":
    raise SystemExit(main())
