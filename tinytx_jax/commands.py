"""What each `--mode` of main.py does, and how every expected failure becomes one line.

main.py holds the flags; this module runs a mode and turns the project's errors into
`error: ...` on stderr with exit status 2 (cli.fail; 130/143 after a signal), never a
traceback.
"""

from __future__ import annotations

import dataclasses
import io
import os
import sys
from pathlib import Path

import ml_collections
from absl import logging

from tinytx_jax import configuration, parallel, run_config
from tinytx_jax.checkpoints import members
from tinytx_jax.checkpoints.store import CheckpointError
from tinytx_jax.cli import fail, quiet_reader_callbacks
from tinytx_jax.data import corpus, split, token_cache
from tinytx_jax.inference import (
    chat,
    evaluation,
    generation,
    inspect_page,
    inspection,
    text_sample,
    trained,
)
from tinytx_jax.serving import server, start, stored_programs
from tinytx_jax.text import dialogs
from tinytx_jax.training import (
    epoch_loop,
    head_start,
    metrics,
    population_report,
    train,
    train_population,
    workdir,
)

TRAINING_OR_USING = ("train_and_chat", "train", "chat", "eval", "sample")
MODES = (*TRAINING_OR_USING, "plot", "report", "serve", "inspect")
EXPECTED_ERRORS = (
    configuration.ConfigError,
    corpus.DataError,
    CheckpointError,
    epoch_loop.TrainingError,
    workdir.WorkdirBusy,
    server.ServeError,
    FileNotFoundError,
)


LISTEN_DEFAULT = start.Listen()
NO_USABLE_PROMPT = (
    "--prompt has no character of the model's vocabulary (or is empty, perhaps once "
    "normalised): give some text"
)


def describe_os_error(error: OSError) -> str:
    """A file-system failure (permissions, full disk, a path through a file) in one line."""
    where = f" ({error.filename})" if error.filename else ""
    return (
        f"{error.strerror or error}{where}: check that the workdir is a writable directory "
        "with free space"
    )


def to_stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def quiet(message: str) -> None:
    """The log of processes other than 0 in a multi-process run."""
    del message


def resolved(flat: ml_collections.ConfigDict) -> run_config.RunConfig:
    """The run's settings by part, checked once at start (a bad value: one line, exit 2)."""
    try:
        return run_config.RunConfig.from_flat(flat)
    except configuration.ConfigError as error:
        fail(str(error))


def run(
    mode: str,
    config: run_config.RunConfig,
    workdir: str,
    prompt: str | None,
    distributed: tuple[str, int, int] | None = None,
    listen: start.Listen = LISTEN_DEFAULT,
    text_file: str | None = None,
) -> None:
    """Run `mode`; `distributed` is (coordinator, processes, this process) for multi-process;
    `text_file`: the text --mode=inspect scores (a text model's)."""
    # Library errors (orbax's writer threads, asyncio) would repeat ours as tracebacks: the
    # project reports every failure itself, in one line.
    logging.set_verbosity(logging.FATAL)
    quiet_reader_callbacks()
    if isinstance(sys.stdout, io.TextIOWrapper):  # each line as it is printed, piped too
        sys.stdout.reconfigure(line_buffering=True)
    try:
        if config.host.compile_cache:
            if mode == "serve":
                stored_programs.use_beside(workdir, log=to_stderr)
            parallel.enable_compile_cache(token_cache.cache_root() / "jax_cache")
        if distributed and mode != "train":
            fail("a multi-process run trains only (--mode=train); chat afterwards in one process")
        if mode == "plot" and not members.read_plan(workdir):
            print(f"Wrote {metrics.plot_curves(workdir)}")
        elif mode == "plot":
            print(f"Wrote {population_report.plot_population(workdir)}")
        elif mode == "report":
            print(population_report.report(workdir))
            print(f"Wrote {population_report.plot_population(workdir)}")
        elif mode == "inspect":
            inspect_checkpoint(config.use, workdir, prompt, text_file)
        elif mode in TRAINING_OR_USING:
            train_then_use(mode, config, workdir, prompt, distributed)
        elif mode == "serve":
            start.serve_checkpoint(config.use, config.serve, workdir, listen, to_stderr)
    except epoch_loop.Interrupted as interrupted:
        print(interrupted, flush=True)
        sys.exit(128 + interrupted.signum)
    except EXPECTED_ERRORS as error:
        fail(str(error))
    except BrokenPipeError:
        fail(
            "standard output was closed (a pipe that ended early, like `| head`): the run "
            "stopped; what was saved is kept, and the same command resumes"
        )
    except OSError as error:
        fail(describe_os_error(error))


def train_then_use(
    mode: str,
    config: run_config.RunConfig,
    workdir: str,
    prompt: str | None,
    distributed: tuple[str, int, int] | None,
) -> None:
    """Train (the training modes), then use the checkpoint as `mode` says; a text model's
    training run ends with a sample, as nanoGPT's sample.py."""
    text = config.data.kind == configuration.TEXT
    if mode in ("train", "train_and_chat"):
        if distributed:
            parallel.initialize_distributed(*distributed)
        forced = "xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", "")
        if config.population.wanted:
            set_devices = not (distributed or forced)
            train_population.train_population(config, workdir, set_cpu_devices=set_devices)
        else:
            if not (distributed or forced):
                batch, requested = config.train.batch_size, config.host.cpu_devices
                parallel.use_cpu_devices(parallel.cpu_device_count(batch, requested))
            early = config.host.compile_cache and text and parallel.is_primary()
            on_task = head_start.compile_sample_early(config.use, prompt) if early else None
            train.train_run(config, workdir, print if parallel.is_primary() else quiet, on_task)
    if mode == "train":
        if not (parallel.is_primary() and text):
            return
        print("Sample:")
        mode = "sample"
    use_checkpoint(config.use, workdir, mode, prompt)


def use_checkpoint(
    use: configuration.UseConfig, workdir: str, mode: str, prompt: str | None
) -> None:
    """Load the workdir's checkpoint, then evaluate it, sample, answer `prompt`, or chat."""
    model = trained.load_trained(workdir, use.checkpoint, log=to_stderr, member=use.member)
    to_stderr(
        f"(loaded the {use.checkpoint} checkpoint of {workdir}: epoch {model.epoch}, "
        f"val_loss {model.meta['metrics']['val_loss']:.4f})"
    )
    plain_text = model.plain_text
    if mode == "sample" or (plain_text and mode == "train_and_chat"):
        written = text_sample.sample(model, use, prompt, to_stderr)
        if written is None:
            fail(NO_USABLE_PROMPT)
        print(written)
        return
    if plain_text and mode == "chat":
        fail(f"{workdir} holds a model of plain text, not dialogs: use --mode=sample")
    if plain_text and mode == "eval":
        evaluation.evaluate_checkpoint(model, None)
        return
    generator = generation.Generator(
        model.model, model.params, model.vocab, chat.sampling_config(use)
    )
    session = chat.ChatSession(
        generator, use.system_prompt, use.chat_history, normalize=model.normalize_user
    )
    if mode == "eval":
        evaluation.evaluate_checkpoint(model, session)
    elif prompt is not None:
        reply = session.answer(prompt)
        if reply is None:
            fail(NO_USABLE_PROMPT)
        print(reply)
    else:
        chat.run_repl(session)


def inspect_checkpoint(
    use: configuration.UseConfig, workdir: str, prompt: str | None, text_file: str | None
) -> None:
    """Write WORKDIR/inspect/inspect.html and a PNG: a dialogs model's greedy reply to
    `prompt` with its attention and odds, or a text model's loss on every character."""
    model = trained.load_trained(workdir, use.checkpoint, log=to_stderr, member=use.member)
    if model.plain_text:
        text = prompt if prompt is not None else inspected_text(model, text_file)
        if len(model.vocab.encode(text)) < 2:
            fail("the text to inspect needs at least 2 characters of the model's vocabulary")
        view = inspection.text_view(model, text)
        note = f"{workdir}, epoch {model.epoch}: the loss of every character of the text."
    else:
        if text_file is not None:
            fail(f"{workdir} holds a dialogs model: --text is for a text model; give --prompt")
        user, _ = chat.kept_line(prompt or "", model.normalize_user, model.vocab)
        if not user.strip():
            fail(
                "--mode=inspect on a dialogs model needs --prompt with some text of its vocabulary"
            )
        sampling = dataclasses.replace(chat.sampling_config(use), temperature=0.0)
        generator = generation.Generator(model.model, model.params, model.vocab, sampling)
        prompt_text = dialogs.render_prompt(user, use.system_prompt)
        written, _ = generator.generate_tokens(model.vocab.encode(prompt_text))
        written = model.vocab.decode(written)  # the reply and the tag that ended it
        reply = dialogs.cut_at_tag(written)
        view = inspection.reply_view(model, prompt_text, written)
        note = f"{workdir}, epoch {model.epoch}: the greedy reply to {user!r}: {reply!r}."
        print(reply)
    if view.cut:
        to_stderr(
            f"(the text is longer than max_len={model.model.config.max_len}: its first "
            f"{view.cut} characters were cut, as chat does)"
        )
    for path in inspect_page.write(view, Path(workdir) / "inspect", note):
        print(f"Wrote {path}")


def inspected_text(model: trained.TrainedModel, text_file: str | None) -> str:
    """`text_file`'s text, or an excerpt of the validation split of the model's own data."""
    path = Path(text_file or model.meta["data"]["source"])
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        fail(f"cannot read {path} ({error}): give --text=FILE or --prompt=TEXT")
    if text_file:
        return text
    validation = text[split.seed_cutoff(len(text), model.run.data.validation_fraction) :]
    return validation[: model.model.config.max_len]
