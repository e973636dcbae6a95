"""The chat REPL: the seed's banner, `You> ` prompt and `Assistant> ` answers.

Interactive terminals get the `You> ` prompt (with line editing); piped input gets one
`Assistant> ` line per input line, so a chat can be scripted. Notices (dropped
characters, a cut context) go to stderr, one line each.
"""

from __future__ import annotations

import contextlib
import sys
import threading
from collections.abc import Callable
from typing import TextIO

from tinytx_jax.configuration import UseConfig
from tinytx_jax.inference.generation import Generator
from tinytx_jax.inference.sampling import SamplingConfig
from tinytx_jax.text import dialogs
from tinytx_jax.text.vocabulary import Vocabulary

with contextlib.suppress(ImportError):  # not on every platform; input() works without it
    import readline  # noqa: F401 - line editing for input(), which then prompts on stdout

BANNER = "Chat ready. Type 'exit' to quit."
PROMPT = "You> "
ANSWER = "Assistant> "
EXIT_WORDS = ("exit", "quit")


TEXT_SAMPLING = SamplingConfig(temperature=0.8, top_k=200)  # nanoGPT's sample.py
DIALOG_SAMPLING = SamplingConfig()  # greedy: the seed's replies


def sampling_config(use: UseConfig, plain_text: bool = False) -> SamplingConfig:
    """The run's sampling; fields left unset take the defaults for the model's kind."""
    defaults = TEXT_SAMPLING if plain_text else DIALOG_SAMPLING
    return SamplingConfig(
        temperature=defaults.temperature if use.temperature is None else use.temperature,
        top_k=defaults.top_k if use.top_k is None else use.top_k,
        top_p=use.top_p,
        seed=use.sample_seed,
        max_new_tokens=use.max_new_tokens,
    )


def kept_line(line: str, normalize: Callable[[str], str], vocab: Vocabulary) -> tuple[str, str]:
    """A user line as the model gets it: normalised, then without the characters the
    vocabulary lacks; and those characters."""
    line = normalize(line.strip())
    unknown = vocab.unknown_chars(line)
    return "".join(c for c in line if c not in unknown), unknown


def quoted(chars: str) -> str:
    return ", ".join(repr(c) for c in chars)


class ChatSession:
    """Answers user lines one at a time, reporting what it had to drop or cut.

    Each line is normalised first (`normalize`: the model's, see user_text.py), as its
    training data was. With `keep_history`, earlier turns stay in the prompt (trimmed to the
    most recent `max_len` tokens by the generator); otherwise every line starts a fresh
    dialog, as the seed did.
    """

    def __init__(
        self,
        generator: Generator,
        system_prompt: str,
        keep_history: bool = False,
        notices: TextIO = sys.stderr,
        normalize: Callable[[str], str] = str,
    ):
        self.generator = generator
        self.normalize = normalize
        self.notices = notices
        self.keep_history = keep_history
        self.history: list[dialogs.Turn] = []
        self.told_about_truncation = False
        unknown = generator.vocab.unknown_chars(system_prompt)
        if unknown:
            self.notice(
                f"dropped from the system prompt (not in the vocabulary): {quoted(unknown)}"
            )
        self.system_prompt = system_prompt
        generator.cache_prefix(dialogs.system_prefix(system_prompt))  # shared by every prompt

    def notice(self, text: str) -> None:
        print(f"({text})", file=self.notices, flush=True)

    def warm_up(self) -> threading.Thread:
        """Compile the decode loops for short and medium lines while the user types."""

        def compile_common_buckets() -> None:
            for line in ("hi", "a question of some thirty chars"):
                self.generator.warm_up(dialogs.render_prompt(line, self.system_prompt))

        thread = threading.Thread(target=compile_common_buckets, daemon=True)
        thread.start()
        return thread

    def reply_in_context(self, user: str, system: str, history: tuple[dialogs.Turn, ...]) -> str:
        """The reply to `user` after `history`, noticing (once) if the context was cut."""
        reply, truncated = self.generator.reply(dialogs.render_prompt(user, system, history))
        if truncated and not self.told_about_truncation:
            max_len = self.generator.model.config.max_len
            self.notice(
                f"prompt + reply exceed max_len={max_len} tokens: keeping the most recent {max_len}"
            )
            self.told_about_truncation = True
        return reply

    def answer(self, line: str) -> str | None:
        """The reply to one user line, or None (with a notice) if nothing usable is left:
        an empty line, or one of characters that normalising drops or the model lacks."""
        typed = line.strip()
        kept, unknown = kept_line(typed, self.normalize, self.generator.vocab)
        if not kept.strip():
            if unknown:
                self.notice(f"none of these characters are in the vocabulary: {quoted(unknown)}")
            elif typed:
                self.notice("nothing is left of the line once normalised")
            return None
        if unknown:
            self.notice(f"dropped characters not in the vocabulary: {quoted(unknown)}")
        history = tuple(self.history) if self.keep_history else ()
        reply = self.reply_in_context(kept, self.system_prompt, history)
        if self.keep_history:
            self.history.append((kept, reply))
        return reply


def read_line(interactive: bool, stdin: TextIO) -> str | None:
    """One input line without its newline; None at end of input."""
    if interactive:
        try:
            return input(PROMPT)
        except EOFError:
            print()
            return None
    line = stdin.readline()
    return line.rstrip("\r\n") if line else None


def run_repl(session: ChatSession, stdin: TextIO = sys.stdin, stdout: TextIO = sys.stdout) -> None:
    """Loop until `exit`/`quit`, end of input or Ctrl-C."""
    interactive = stdin.isatty() and stdout.isatty()
    print(BANNER, file=stdout, flush=True)
    if interactive:
        session.warm_up()
    try:
        while True:
            line = read_line(interactive, stdin)
            if line is None or line.strip() in EXIT_WORDS:
                return
            if not line.strip():
                continue
            reply = session.answer(line.strip())
            if reply is not None:
                print(f"{ANSWER}{reply}", file=stdout, flush=True)
    except KeyboardInterrupt:
        print(file=stdout)
