"""Chat speed: per-reply latency after compile, a 200-character reply, and start-up time.

Replies are timed through `ChatSession.answer`, exactly the REPL's path (system-prompt
prefix cache included).

    python -m benchmarks.chat_latency [--workdir=DIR]

Uses the checkpoint in --workdir, training `configs/fast.py` there first if it has none.
Start-up is measured as a user sees it: `python main.py --mode=chat` on a pseudo-terminal,
from process start until the `You> ` prompt appears.
"""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import time

import numpy as np
from absl import app, flags, logging

from benchmarks.trained_workdir import ensure_checkpoint
from tinytx_jax.inference import chat, generation, sampling, trained
from tinytx_jax.text import dialogs

_WORKDIR = flags.DEFINE_string("workdir", None, "Workdir with a checkpoint (default: a temp dir).")
_REPEATS = flags.DEFINE_integer("repeats", 50, "Timed replies per prompt.")


def median_ms(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return float(np.median(times))


def seconds_to_prompt(workdir: str) -> float:
    """Wall time from spawning `main.py --mode=chat` on a pty to the `You> ` prompt."""
    leader, follower = pty.openpty()
    start = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "main.py", "--mode=chat", f"--workdir={workdir}"],
        stdin=follower,
        stdout=follower,
        stderr=subprocess.DEVNULL,
    )
    seen = b""
    while b"You> " not in seen:
        ready, _, _ = select.select([leader], [], [], 30)
        if not ready:
            raise RuntimeError("no prompt within 30 s")
        seen += os.read(leader, 1024)
    elapsed = time.perf_counter() - start
    os.write(leader, b"exit\n")
    process.wait(timeout=30)
    os.close(leader)
    os.close(follower)
    return elapsed


def measure_chat(workdir: str, repeats: int) -> dict:
    """Per-reply ms after compile, a 200-character reply cached and the seed's way, start-up."""
    model = trained.load_trained(workdir, log=lambda _: None)
    generator = generation.Generator(
        model.model, model.params, model.vocab, sampling.SamplingConfig()
    )
    session = chat.ChatSession(generator, dialogs.SYSTEM_PROMPT)  # the REPL's own path
    replies = {}
    for user, _ in dialogs.BUILTIN_DIALOGS:
        reply = session.answer(user)
        ms = median_ms(lambda u=user: session.answer(u), repeats)
        replies[user] = {"reply": reply, "ms": ms}
    free_running = generation.Generator(
        model.model, model.params, model.vocab, sampling.SamplingConfig(), stop_texts=()
    )
    prompt = dialogs.render_prompt("hi")
    encoded = model.vocab.encode(prompt)
    tokens, _ = free_running.generate_tokens(encoded)
    generation.generate_uncached(model.model, model.params, encoded, 200, ())
    starts = [seconds_to_prompt(workdir) for _ in range(3)]
    return {
        "epoch": model.epoch,
        "replies": replies,
        "long_reply_tokens": len(tokens),
        "long_reply_ms": median_ms(lambda: free_running.reply(prompt), 20),
        "long_reply_uncached_ms": median_ms(
            lambda: generation.generate_uncached(model.model, model.params, encoded, 200, ()), 3
        ),
        "seconds_to_prompt": float(np.median(starts)),
        "seconds_to_prompt_runs": starts,
    }


def main(argv: list[str]) -> None:
    del argv
    logging.set_verbosity(logging.ERROR)
    workdir = ensure_checkpoint(_WORKDIR.value)
    result = measure_chat(workdir, _REPEATS.value)
    print(f"checkpoint: epoch {result['epoch']} of {workdir}")
    print(f"{'prompt':<16}{'reply':<10}{'ms/reply (cached)':>18}")
    for user, row in result["replies"].items():
        print(f"{user!r:<16}{row['reply']!r:<10}{row['ms']:>18.3f}")
    print(
        f"200-character reply (no stop tag, {result['long_reply_tokens']} tokens): "
        f"{result['long_reply_ms']:.3f} ms"
    )
    print(
        f"same 200 characters the seed's way (full forward per character): "
        f"{result['long_reply_uncached_ms']:.1f} ms"
    )
    runs = ", ".join(f"{s:.2f}" for s in result["seconds_to_prompt_runs"])
    print(
        f"process start to 'You> ' prompt: median {result['seconds_to_prompt']:.2f} s "
        f"(runs: {runs})"
    )


if __name__ == "__main__":
    app.run(main)
