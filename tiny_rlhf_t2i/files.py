"""Run folders: atomic checkpoints, metrics JSON + Markdown summaries, and image grids.

Everything a stage writes goes through here, so an interrupted run never leaves a half-written
file: we write to a temporary file in the same folder and `os.replace` it (atomic on POSIX).
"""
import io
import json
import os
import pickle
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from . import distributed
from .config import UserError


def _atomic(path: Path, write) -> Path:
    """Write through `write(file)` to a temporary file, then rename it over `path`. A full disk
    or a read-only folder is one line that says what to do; the previous file stays intact."""
    path, tmp = Path(path), None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None  # renamed: nothing left to remove
    except OSError as e:
        kept = " (the previous one is intact)" if path.exists() else ""
        raise UserError(f"could not write {path}{kept}: {e.strerror or e}; free disk space or "
                        f"choose another folder, then run the same command with --resume "
                        f"true") from None
    finally:  # a failed or interrupted write leaves no temporary file
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
    return path


def atomic_write_text(path, text: str) -> Path:
    return _atomic(path, lambda f: f.write(text.encode()))


def save_checkpoint(path, state: dict) -> Path:
    """torch.save, atomically. Serialized in memory first: torch's own file writer reports a
    full disk as an internal RuntimeError, a plain write as the OSError that _atomic explains."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return _atomic(path, lambda f: f.write(buffer.getbuffer()))


def load_checkpoint(path, made_by: str) -> dict:
    """Load a checkpoint, or exit with one line naming the file and the command that makes it.
    weights_only: a checkpoint holds tensors, numbers, strings, lists and dicts, nothing else,
    so a shared file carrying a pickled program is refused instead of run."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path} does not exist; run `{made_by}` first")
    try:
        with warnings.catch_warnings():  # a plain pickle draws a warning before it is refused
            warnings.filterwarnings("ignore", "Detected pickle protocol", UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated, not a checkpoint at all, or a pickled object
        unpickling = isinstance(e, pickle.UnpicklingError)
        if unpickling and "Unsupported global" in str(e):  # unpickling it could run code
            raise UserError(f"{path} holds more than tensors, numbers, strings, lists "
                            f"and dicts; refused (loading it could run code)") from None
        why = "not a checkpoint" if unpickling else type(e).__name__
        raise UserError(f"{path} is corrupt ({why}); delete it and run `{made_by}` again") from None


def load_weights(module, weights: dict, path, fix: str) -> None:
    """module.load_state_dict(weights), the weights read from the checkpoint `path`. Weights of
    another model size are the user's mistake, not a bug: torch's page of mismatched names and
    shapes becomes one line naming the file, the first mismatch and `fix` (what to do)."""
    try:
        module.load_state_dict(weights)
    except RuntimeError as e:  # torch lists one mismatch a line after its first line, e.g.
        # "size mismatch for conv_in.weight: copying a param with shape ..."
        if not str(e).startswith("Error(s) in loading state_dict"):
            raise  # not a mismatch (out of memory, ...): a bug's traceback
        first = str(e).splitlines()[1].split(":")[0].strip()
        raise UserError(f"{path} was made with other model settings ({first}); {fix}") from None


def check_writable(folder) -> Path:
    """Make the run folder and check that files can be written there, before any work is done
    (not after an hour of training); remove the temporary files of writes a kill interrupted.
    Returns it as a Path. Under torchrun only rank 0 writes, so only rank 0 checks."""
    folder = Path(folder)
    if not distributed.is_main():
        return folder
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for stale in folder.rglob(".*.tmp"):  # `_atomic`'s names; a run folder has one writer
            stale.unlink()
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".write_test.")
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        raise UserError(f"cannot write to the run folder {folder} ({e.strerror}); "
                        f"choose another --out_dir") from None
    return folder


def read_jsonl(path, check=None) -> list[dict]:
    """Rows of a JSONL file. A line that is not JSON, or that check(row) finds a problem with
    (check returns a message or None), raises ValueError naming the file and the line."""
    rows = []
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            problem = check(row) if check else None
        except json.JSONDecodeError as e:
            problem = f"not valid JSON ({e.msg})"
        if problem:
            raise ValueError(f"{path}, line {n}: {problem}")
        rows.append(row)
    return rows


def write_jsonl(path, rows: list[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))


def write_metrics(out_dir, metrics: dict, summary_md: str) -> None:
    """metrics.json (for programs) and summary.md (for people) in the run folder."""
    atomic_write_text(Path(out_dir) / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    atomic_write_text(Path(out_dir) / "summary.md", summary_md)


def save_grid(rows: list[list[np.ndarray]], labels: list[str], path, scale: int = 4) -> Path:
    """A PNG grid: one row of (H, W, 3) uint8 images per label, the label written left of it."""
    h, w = rows[0][0].shape[:2]
    cell, pad = h * scale, 2
    label_w = 8 + 6 * max(len(s) for s in labels)  # the default PIL font is ~6 px per character
    ncol = max(len(r) for r in rows)
    grid = Image.new("RGB", (label_w + ncol * (cell + pad), len(rows) * (cell + pad)), "white")
    draw = ImageDraw.Draw(grid)
    font = ImageFont.load_default()
    for i, (row, label) in enumerate(zip(rows, labels)):
        y = i * (cell + pad)
        draw.text((4, y + cell // 2 - 5), label, fill="black", font=font)
        for j, img in enumerate(row):
            tile = Image.fromarray(img).resize((cell, cell), Image.NEAREST)
            grid.paste(tile, (label_w + j * (cell + pad), y))
    return save_image(grid, path)


def save_image(image: Image.Image, path) -> Path:
    """A PNG, written atomically."""
    return _atomic(path, lambda f: image.save(f, format="PNG"))


def pick_device(name: str, threads: int = 0) -> torch.device:
    """The torch device of a --device setting (auto: CUDA when there is one); threads > 0 sets
    torch's CPU threads."""
    if threads:
        torch.set_num_threads(threads)
    if name not in ("auto", "cpu", "cuda"):
        raise UserError(f"--device must be auto, cpu or cuda, not {name!r}")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda asked for, but no CUDA device is available")
    if name == "cuda":  # TF32 matmuls, as the convolutions already use (benchmarks/README.md)
        torch.backends.cuda.matmul.allow_tf32 = True
    return torch.device(name)
