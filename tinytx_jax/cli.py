"""The command line around absl: help that exits 0, config paths, every problem in one line.

main.py defines the flags and calls `parse_flags` as absl's flags parser; this module
resolves `--config=PATH` (from the current directory, then next to main.py), answers
`-h`/`--help` with the modes, the flags and every config field with its default and
comment, and turns absl's and ml_collections' errors into `error: ...` with exit status 2.
"""

from __future__ import annotations

import ast
import importlib.util
import io
import os
import sys
import tokenize
from pathlib import Path
from typing import NoReturn

import ml_collections
from absl import flags
from ml_collections import config_flags

REPO = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = REPO / "configs" / "default.py"
HELP_ARGS = ("-h", "--help", "--helpshort", "--helpfull", "-?")


def fail(message: str) -> NoReturn:
    """Stop with one line on stderr (`error: ...`), the problem and what to do; exit 2."""
    print(f"error: {message}", file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    # At once: background writer threads must not print into the interpreter's shutdown.
    os._exit(2)


def _drop_closed_loop_callbacks(unraisable) -> None:
    if isinstance(unraisable.exc_value, RuntimeError) and "Event loop is closed" in str(
        unraisable.exc_value
    ):
        return
    sys.__unraisablehook__(unraisable)


def quiet_reader_callbacks() -> None:
    """After a failed read of a damaged checkpoint, the reader's pending callbacks reach an
    event loop orbax has already closed; each would print a traceback (dozens of them)
    although the fallback to an earlier checkpoint works. Those, and only those, are dropped."""
    sys.unraisablehook = _drop_closed_loop_callbacks


def resolve_config_path(path: str) -> str:
    """`path` as given if it exists, else next to main.py; one line if neither exists."""
    spec, colon, override = path.partition(":")  # config_flags' "file.py:argument" form
    for candidate in (Path(spec), REPO / spec):
        if candidate.is_file():
            return str(candidate.absolute()) + colon + override
    fail(f"config file {spec!r} not found in {Path.cwd()} or {REPO}: give a path to a .py file")


def with_resolved_config(argv: list[str]) -> list[str]:
    """argv with `--config=PATH` / `--config PATH` replaced by a path that exists."""
    out = list(argv)
    for i, arg in enumerate(out):
        if arg.startswith("--config="):
            out[i] = "--config=" + resolve_config_path(arg.split("=", 1)[1])
        elif arg == "--config" and i + 1 < len(out):
            out[i + 1] = resolve_config_path(out[i + 1])
    return out


def config_comments(path: Path = DEFAULT_CONFIG) -> dict[str, str]:
    """Each field's comment in configs/default.py: the one on its line, else the block above."""
    source = path.read_text(encoding="utf-8")
    lines = source.splitlines()
    comments: dict[int, str] = {}  # line number -> comment
    alone: set[int] = set()  # lines that hold only a comment
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            comments[token.start[0]] = token.string.lstrip("# ").strip()
            if lines[token.start[0] - 1].lstrip().startswith("#"):
                alone.add(token.start[0])
    found = {}
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Assign) or not isinstance(node.targets[0], ast.Attribute):
            continue
        line = node.lineno
        above = []
        while line - 1 - len(above) in alone:  # the comment block right above
            above.insert(0, comments[line - 1 - len(above)])
        found[node.targets[0].attr] = comments.get(line) or " ".join(above)
    return found


def describe_config(config: ml_collections.ConfigDict) -> str:
    """Every field of `config`: name, value (None: the default for the model's kind), comment."""
    comments = config_comments()
    width = max(len(name) for name in config)
    return "\n".join(
        f"  --config.{name:<{width}} = {config[name]!r:<20} {comments.get(name, '')}".rstrip()
        for name in [*comments, *sorted(set(config) - set(comments))]
        if name in config
    )


def print_help(argv: list[str], usage: str) -> NoReturn:
    """The usage, main.py's flags and the config's fields; exit 0."""
    path = next(
        (a.split("=", 1)[1] for a in argv if a.startswith("--config=")), str(DEFAULT_CONFIG)
    )
    config = load_config_file(path)
    print(usage.strip() + "\n")
    print(flags.FLAGS.main_module_help())
    print("  --config: the experiment config file (default: configs/default.py)")
    print(f"\nconfig fields ({path}; override with --config.NAME=VALUE):")
    print(describe_config(config))
    sys.exit(0)


def load_config_file(path: str) -> ml_collections.ConfigDict:
    """The ConfigDict a config file's get_config() returns, or one line saying why not."""
    spec_path, _, argument = path.partition(":")
    try:
        spec = importlib.util.spec_from_file_location("tinytx_config_file", spec_path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        config = module.get_config(*([argument] if argument else []))
    except Exception as error:  # a config file is arbitrary Python: any failure is the file's
        problem = " ".join(f"{type(error).__name__}: {error}".split())
        fail(f"{spec_path} is not a config file ({problem}): it must define get_config()")
    if not isinstance(config, ml_collections.ConfigDict):
        fail(f"{spec_path}: get_config() returned {type(config).__name__}, not a ConfigDict")
    return config


def parse_flags(argv: list[str], usage: str) -> list[str]:
    """absl's parser with the config resolved, help answered, and errors in one line."""
    argv = with_resolved_config(argv)
    if any(arg in HELP_ARGS for arg in argv[1:]):
        print_help(argv, usage)
    config_path = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
    load_config_file(config_path or str(DEFAULT_CONFIG))  # one line if it is not a config
    try:
        # Defined here, not at import: config_flags applies --config.NAME overrides as soon
        # as the flag exists, and an unknown NAME must reach the handler below.
        holder = config_flags.DEFINE_config_file(
            "config",
            str(DEFAULT_CONFIG),
            "Experiment config file (from the current directory, else next to main.py); "
            "override fields with --config.NAME=VALUE (listed by --help).",
            lock_config=True,
        )
        remaining = flags.FLAGS(argv)
        holder.value.keys()  # config_flags defers loading errors to the first access
    except (AttributeError, KeyError) as unknown:
        fail(
            f"unknown config field {str(unknown).strip(chr(34) + chr(39))!r}; "
            "`python main.py --help` lists the fields"
        )
    except (flags.Error, OSError, ValueError, TypeError) as error:
        fail(" ".join(str(error).split()) + " (see --help)")
    return remaining
