"""Configs: one @dataclass per script, named presets, and a typed `--field value` command line.

Every script does

    cfg = parse_config(TrainConfig, PRESETS)   # python train_unet.py --preset smoke --lr 3e-4

A preset is a dict of overrides on the dataclass defaults; command-line flags override the preset.
The help text of each flag is the one-line comment written beside the field in the dataclass, so
the config class stays the single place that documents a setting. A config checks its own values
in `__post_init__` (`require`, `check_range`); `run(main)` turns a bad value into one line and
exit code 2.
"""
import argparse
import dataclasses
import inspect
import math
import re
import sys


def _field_comments(cls) -> dict[str, str]:
    """Read `name: type = default  # comment` lines of a dataclass (and its bases) for --help."""
    comments = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        for line in inspect.getsource(klass).splitlines():
            m = re.match(r"\s+(\w+)\s*:[^#]*#\s*(.*)$", line)
            if m:
                comments[m.group(1)] = m.group(2).strip()
    return comments


class UserError(Exception):
    """A mistake in the user's input (a flag, a file, a prompt), not a bug: `run` reports it in
    one line."""


class ConfigError(UserError):
    """A setting out of its valid range."""


def run(main, argv=None) -> None:
    """A script's entry point. The user's mistakes (UserError) end in one line `error: ...` and
    exit code 2, before any work where they can be seen early; any other exception is a bug and
    keeps its traceback."""
    try:
        main(argv)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


def require(ok: bool, message: str) -> None:
    """For `__post_init__`: refuse a bad setting with a message naming the flag."""
    if not ok:
        raise ConfigError(message)


def check_range(cfg, names: str, lo=-math.inf, hi=math.inf, open_lo=False, open_hi=False):
    """For `__post_init__`: each field of `names` (space-separated) must lie in the range; the
    error names the flag and the range. NaN lies in no range."""
    for name in names.split():
        v = getattr(cfg, name)
        if not ((v > lo if open_lo else v >= lo) and (v < hi if open_hi else v <= hi)):
            valid = (f"{'>' if open_lo else '>='} {lo}" if hi == math.inf else
                     f"in {'(' if open_lo else '['}{lo}, {hi}{')' if open_hi else ']'}")
            raise ConfigError(f"--{name} must be {valid}, not {v}")


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser, except that a bad command line (an unknown flag, a value of the wrong
    type) is a ConfigError like any other bad setting: one line and exit code 2 under `run`,
    instead of argparse's usage block."""

    def error(self, message):
        raise ConfigError(message)


def _parse_bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def parse_config(cls, presets: dict[str, dict], argv=None, description: str | None = None,
                 default_preset: str = "cpu"):
    """Build `cls` from a named preset plus `--field value` overrides. Returns the config."""
    parser = ArgumentParser(description=description or (cls.__doc__ or "").strip(),
                            formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--preset", default=default_preset, choices=sorted(presets),
                        help="named set of overrides (smoke: CI-sized, cpu: the default laptop "
                             "run, gpu: larger)")
    comments = _field_comments(cls)
    for f in dataclasses.fields(cls):
        if f.name == "preset":  # a field, so that it is saved with the config; set above
            continue
        typ = {bool: _parse_bool}.get(f.type, f.type)
        if typ not in (int, float, str, _parse_bool):
            raise TypeError(f"config field {f.name} has unsupported type {f.type}")
        flags = dict.fromkeys([f"--{f.name}", f"--{f.name.replace('_', '-')}"])  # one if equal
        parser.add_argument(*flags, dest=f.name,
                            type=typ, default=None, help=comments.get(f.name, ""))
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    overrides = {**presets[args.preset], **{k: v for k, v in vars(args).items() if v is not None}}
    unknown = set(overrides) - {f.name for f in dataclasses.fields(cls)}
    if unknown:  # a typo in a preset table is a bug, say so loudly
        raise ValueError(f"preset {args.preset!r} sets unknown fields {sorted(unknown)}")
    return cls(**overrides)  # __post_init__ raises ConfigError on a bad value
