"""tinytx-jax entry point.

python main.py                      # train on the built-in dialogs, then chat
python main.py --mode=train --config=configs/fast.py --config.lr=1e-3
python main.py --mode=chat [--prompt="hi"]
python main.py --mode=eval
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import NoReturn

import jax
import ml_collections
from absl import app, flags, logging
from ml_collections import config_flags

from tinytx_jax import (
    chat,
    checkpoint,
    configuration,
    corpus,
    evaluation,
    metrics,
    parallel,
    sampling,
    train,
    trained,
)

MODES = ("train_and_chat", "train", "chat", "eval", "sample", "plot")


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
_MODE = flags.DEFINE_enum(
    "mode",
    "train_and_chat",
    MODES,
    "train_and_chat: train, then chat (the seed's behaviour; plain-text data: then sample); "
    "train; chat: load the workdir's checkpoint and chat; eval: report a checkpoint's "
    "validation figures and exact matches; sample: continue --prompt freely; plot: write "
    "WORKDIR/curves.png from WORKDIR/metrics.jsonl.",
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
_PROMPT = flags.DEFINE_string(
    "prompt",
    None,
    "chat: answer this one line, print only the reply and exit (instead of the REPL); "
    "sample: the text to continue.",
)


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


def quiet(message: str) -> None:
    """The log of processes other than 0 in a multi-process run."""
    del message


def to_stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def use_checkpoint(config: ml_collections.ConfigDict, workdir: str, mode: str) -> None:
    """Load the workdir's checkpoint, then evaluate it, sample, answer --prompt, or chat."""
    model = trained.load_trained(workdir, config.checkpoint, log=to_stderr)
    to_stderr(
        f"(loaded the {config.checkpoint} checkpoint of {workdir}: epoch {model.epoch}, "
        f"val_loss {model.meta['metrics']['val_loss']:.4f})"
    )
    plain_text = model.meta["data"]["kind"] == corpus.TEXT
    if mode == "sample" or (plain_text and mode == "train_and_chat"):
        sample(model, config)
        return
    if plain_text and mode == "chat":
        fail(f"{workdir} holds a model of plain text, not dialogs: use --mode=sample")
    generator = sampling.Generator(
        model.model, model.params, model.vocab, chat.sampling_config(config)
    )
    session = chat.ChatSession(generator, config.system_prompt, config.chat_history)
    if mode == "eval":
        evaluation.evaluate_checkpoint(model, session)
    elif _PROMPT.value is not None:
        print(session.answer(_PROMPT.value) or "")
    else:
        chat.run_repl(session)


def sample(model: trained.TrainedModel, config: ml_collections.ConfigDict) -> None:
    """Print --prompt and its free-running continuation of max_new_tokens characters."""
    prompt = _PROMPT.value if _PROMPT.value is not None else "\n"
    unknown = model.vocab.unknown_chars(prompt)
    if unknown:
        to_stderr(f"(dropped characters not in the vocabulary: {chat.quoted(unknown)})")
    tokens = model.vocab.encode(prompt)
    if not len(tokens):
        fail("--prompt has no character of the model's vocabulary: give some text to continue")
    generator = sampling.Generator(
        model.model, model.params, model.vocab, chat.sampling_config(config), stop_text=""
    )
    continuation, _ = generator.generate_tokens(tokens)
    print(model.vocab.decode(tokens) + model.vocab.decode(continuation))


def enable_compile_cache(workdir: str) -> None:
    """Persist compiled XLA programs in WORKDIR/jax_cache: a rerun skips most compiling."""
    cache = Path(workdir).expanduser().absolute() / "jax_cache"
    jax.config.update("jax_compilation_cache_dir", str(cache))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        fail(f"unexpected arguments: {' '.join(argv[1:])} (flags take the form --name=value)")
    logging.set_verbosity(logging.ERROR)
    config, workdir, mode = _CONFIG.value, _WORKDIR.value, _MODE.value
    try:
        configuration.check_config(config)
        if config.compile_cache:
            enable_compile_cache(workdir)
        if _COORDINATOR.value or _DISTRIBUTED.value or _NUM_PROCESSES.value > 1:
            if mode != "train":
                fail(
                    "a multi-process run trains only (--mode=train); chat afterwards in one process"
                )
            parallel.initialize_distributed(
                _COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value
            )
        if mode == "plot":
            print(f"Wrote {metrics.plot_curves(workdir)}")
            return
        if mode in ("train", "train_and_chat"):
            log = print if jax.process_index() == 0 else quiet
            train.train_and_evaluate(config, workdir, log=log)
        if mode != "train":
            use_checkpoint(config, workdir, mode)
    except train.Interrupted as interrupted:
        print(interrupted, flush=True)
        sys.exit(128 + interrupted.signum)
    except (
        configuration.ConfigError,
        corpus.DataError,
        checkpoint.CheckpointError,
        train.TrainingError,
        FileNotFoundError,
    ) as error:
        fail(str(error))


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
