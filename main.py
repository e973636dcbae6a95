"""tinytx-jax entry point: flags, then the mode (tinytx_jax/commands.py).

python main.py                      # train on the built-in dialogs, then chat
python main.py --mode=train --config=configs/fast.py --config.lr=1e-3
python main.py --mode=chat [--prompt="hi"]
python main.py --mode=eval
python main.py --mode=serve [--port=8000]   # OpenAI-compatible API and web chat
"""

from __future__ import annotations

import os
from pathlib import Path

from tinytx_jax import interrupt

interrupt.exit_promptly_on_signals()  # first: importing JAX takes a while

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from tinytx_jax import commands  # noqa: E402

API_KEY_VARIABLE = "TINYTX_API_KEY"
DEFAULT_CONFIG = str(Path(__file__).resolve().parent / "configs" / "default.py")

_WORKDIR = flags.DEFINE_string("workdir", "./workdir", "Directory for checkpoints and metrics.")
_MODE = flags.DEFINE_enum(
    "mode",
    "train_and_chat",
    commands.MODES,
    "train_and_chat: train, then chat (the seed's behaviour; plain-text data: then sample); "
    "train; chat: load the workdir's checkpoint and chat; eval: report a checkpoint's "
    "validation figures and exact matches; sample: continue --prompt freely; plot: write "
    "WORKDIR/curves.png from WORKDIR/metrics.jsonl; serve: an OpenAI-compatible HTTP API "
    "and a web chat page for the workdir's chat model.",
)
_PROMPT = flags.DEFINE_string(
    "prompt",
    None,
    "chat: answer this one line, print only the reply and exit (instead of the REPL); "
    "sample: the text to continue.",
)
_HOST = flags.DEFINE_string("host", "127.0.0.1", "serve: the address to listen on.")
_PORT = flags.DEFINE_integer(
    "port",
    8000,
    "serve: the port to listen on (0: any free one).",
    lower_bound=0,
    upper_bound=65535,
)
_API_KEY = flags.DEFINE_string(
    "api_key",
    None,
    f"serve: require 'Authorization: Bearer KEY' (default: ${API_KEY_VARIABLE} if set).",
)
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", "", "Multi-process training: host:port of process 0."
)
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", 1, "Multi-process training: processes.")
_PROCESS_ID = flags.DEFINE_integer("process_id", 0, "Multi-process training: this process.")
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed",
    False,
    "Multi-process training with coordinates detected from the platform (Cloud TPU, SLURM, ...).",
)
_CONFIG: config_flags.FlagHolder | None = None


def parse_flags(argv: list[str]) -> list[str]:
    """absl's parser, with every flag or config-file problem reduced to one line."""
    global _CONFIG
    try:
        # Defined here, not at import: config_flags applies --config.NAME overrides as
        # soon as the flag exists, and an unknown NAME must reach the handler below.
        _CONFIG = config_flags.DEFINE_config_file(
            "config",
            DEFAULT_CONFIG,
            "Experiment config file; override fields with --config.NAME=VALUE.",
            lock_config=True,
        )
        remaining = flags.FLAGS(argv)
        _CONFIG.value.keys()  # config_flags defers loading errors to the first access
    except (AttributeError, KeyError) as unknown:
        commands.fail(
            f"unknown config field {str(unknown).strip(chr(34) + chr(39))!r}; the fields are "
            "listed in configs/default.py"
        )
    except (flags.Error, OSError, ValueError, TypeError) as error:
        commands.fail(" ".join(str(error).split()) + " (see --helpshort)")
    return remaining


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        commands.fail(f"unexpected arguments: {' '.join(argv[1:])} (flags take --name=value)")
    # Library errors (orbax's writer threads, asyncio) would repeat ours as tracebacks: the
    # project reports every failure itself, in one line.
    logging.set_verbosity(logging.FATAL)
    if _NUM_PROCESSES.value > 1 and not (_COORDINATOR.value or _DISTRIBUTED.value):
        commands.fail(
            f"--num_processes={_NUM_PROCESSES.value} needs --coordinator_address=HOST:PORT "
            "(or --distributed where JAX finds the cluster itself)"
        )
    multi = _COORDINATOR.value or _DISTRIBUTED.value or _NUM_PROCESSES.value > 1
    distributed = (_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value) if multi else None
    api_key = _API_KEY.value or os.environ.get(API_KEY_VARIABLE) or None
    listen = commands.Listen(_HOST.value, _PORT.value, api_key)
    commands.run(_MODE.value, _CONFIG.value, _WORKDIR.value, _PROMPT.value, distributed, listen)


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
