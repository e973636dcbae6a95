"""tinytx-jax: train a tiny character-level transformer, then chat with it.

python main.py                      # train on the built-in dialogs, then chat
python main.py --mode=train --config=configs/fast.py --config.lr=1e-3
python main.py --mode=chat [--prompt="hi"]
python main.py --mode=eval
python main.py --mode=serve [--port=8000]   # OpenAI-compatible API and web chat
python main.py --mode=inspect --prompt="what is 2+2?"  # attention and odds, as HTML and PNG
python main.py --help                       # every flag and config field
"""

from __future__ import annotations

import os

from tinytx_jax import interrupt

interrupt.exit_promptly_on_signals()  # first: importing JAX takes a while

from absl import app, flags  # noqa: E402

from tinytx_jax import cli, commands  # noqa: E402
from tinytx_jax.serving import start  # noqa: E402

_WORKDIR = flags.DEFINE_string("workdir", "./workdir", "Directory for checkpoints and metrics.")
_MODE = flags.DEFINE_enum(
    "mode",
    "train_and_chat",
    commands.MODES,
    "train_and_chat: train, then chat (plain-text data: then sample); train; chat; eval: "
    "validation figures and exact matches of a checkpoint; sample: continue --prompt; plot: "
    "WORKDIR/curves.png from metrics.jsonl; serve: an OpenAI-compatible API and a web chat; "
    "inspect: WORKDIR/inspect/inspect.html and a PNG of the model's attention and odds.",
)
_PROMPT = flags.DEFINE_string(
    "prompt", None, "chat: answer this one line and exit; sample: the text to continue."
)
_TEXT = flags.DEFINE_string(
    "text", None, "inspect: a text model's loss on this file (default: its validation split)."
)
_HOST = flags.DEFINE_string("host", "127.0.0.1", "serve: the address to listen on.")
_PORT = flags.DEFINE_integer(
    "port", 8000, "serve: the port (0: any free one).", lower_bound=0, upper_bound=65535
)
_API_KEY = flags.DEFINE_string(
    "api_key", None, "serve: require 'Authorization: Bearer KEY' (default: $TINYTX_API_KEY)."
)
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", "", "Multi-process training: host:port of process 0."
)
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", 1, "Multi-process training: processes.")
_PROCESS_ID = flags.DEFINE_integer("process_id", 0, "Multi-process training: this process.")
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", False, "Multi-process training with coordinates found by JAX (TPU, SLURM)."
)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        cli.fail(f"unexpected arguments: {' '.join(argv[1:])} (flags take --name=value)")
    if _NUM_PROCESSES.value > 1 and not (_COORDINATOR.value or _DISTRIBUTED.value):
        cli.fail(f"--num_processes={_NUM_PROCESSES.value} needs --coordinator_address=HOST:PORT")
    distributed = None
    if _COORDINATOR.value or _DISTRIBUTED.value or _NUM_PROCESSES.value > 1:
        distributed = (_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    api_key = _API_KEY.value or os.environ.get("TINYTX_API_KEY") or None
    listen = start.Listen(_HOST.value, _PORT.value, api_key)
    config = commands.resolved(flags.FLAGS["config"].value)
    commands.run(
        _MODE.value, config, _WORKDIR.value, _PROMPT.value, distributed, listen, _TEXT.value
    )


if __name__ == "__main__":
    app.run(main, flags_parser=lambda argv: cli.parse_flags(argv, __doc__))
