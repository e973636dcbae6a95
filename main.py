"""tinytx-jax entry point: `python main.py --mode=train [--config=...] [--config.lr=...]`."""

from __future__ import annotations

import sys
from typing import NoReturn

from absl import app, flags, logging
from ml_collections import config_flags

from tinytx_jax import checkpoint, configuration, train

MODES = ("train",)


def fail(message: str) -> NoReturn:
    """Stop with one line on stderr: the problem and what to do."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


CONFIG_UNAVAILABLE = "Configuration is not available because of an earlier failure to load: "


def fail_unknown_field(error: Exception) -> NoReturn:
    name = str(error).strip("'\"")
    fail(f"unknown config field {name!r}; the fields are listed in configs/default.py")


try:  # config_flags applies --config.NAME overrides as soon as the flag is defined.
    _CONFIG = config_flags.DEFINE_config_file(
        "config",
        "configs/default.py",
        "Experiment config file; override fields with --config.NAME=VALUE.",
        lock_config=True,
    )
except (AttributeError, KeyError) as unknown:
    fail_unknown_field(unknown)
_WORKDIR = flags.DEFINE_string("workdir", "./workdir", "Directory for checkpoints and metrics.")
_MODE = flags.DEFINE_enum("mode", "train", MODES, "What to run.")


def parse_flags(argv: list[str]) -> list[str]:
    """absl's parser, with every flag or config-file problem reduced to one line."""
    try:
        remaining = flags.FLAGS(argv)
        _CONFIG.value.keys()  # config_flags defers loading errors to the first access
    except (AttributeError, KeyError) as error:
        fail_unknown_field(error)
    except (flags.Error, OSError, ValueError, TypeError) as error:
        message = str(error).removeprefix(CONFIG_UNAVAILABLE)
        fail(" ".join(message.split()) + " (see --helpshort)")
    return remaining


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        fail(f"unexpected arguments: {' '.join(argv[1:])} (flags take the form --name=value)")
    logging.set_verbosity(logging.ERROR)
    try:
        train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
    except train.Interrupted as interrupted:
        print(interrupted, flush=True)
        sys.exit(128 + interrupted.signum)
    except (configuration.ConfigError, checkpoint.CheckpointError, train.TrainingError) as error:
        fail(str(error))


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
