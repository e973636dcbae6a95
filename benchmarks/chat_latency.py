"""Chat speed: per-reply latency after compile, a 200-character reply, and start-up time.

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
import tempfile
import time

import numpy as np
from absl import app, flags

from configs import fast
from tinytx_jax import checkpoint, data, sampling, train, trained

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


def main(argv: list[str]) -> None:
    del argv
    workdir = _WORKDIR.value or tempfile.mkdtemp(prefix="tinytx_chat_bench_")
    if not checkpoint.CheckpointStore(workdir).steps():
        print(f"training configs/fast.py into {workdir} ...")
        train.train_and_evaluate(fast.get_config(), workdir, log=lambda _: None)
    model = trained.load_trained(workdir)
    generator = sampling.Generator(
        model.model, model.params, model.vocab, sampling.SamplingConfig()
    )
    print(f"checkpoint: epoch {model.epoch} of {workdir}")
    print(f"{'prompt':<16}{'reply':<10}{'ms/reply (cached)':>18}")
    for user, _ in data.BUILTIN_DIALOGS:
        prompt = data.render_prompt(user)
        reply, _ = generator.reply(prompt)
        ms = median_ms(lambda p=prompt: generator.reply(p), _REPEATS.value)
        print(f"{user!r:<16}{reply!r:<10}{ms:>18.3f}")

    free_running = sampling.Generator(
        model.model, model.params, model.vocab, sampling.SamplingConfig(), stop_text=""
    )
    prompt = data.render_prompt("hi")
    tokens, _ = free_running.generate_tokens(model.vocab.encode(prompt))
    long_ms = median_ms(lambda: free_running.reply(prompt), 20)
    print(f"200-character reply (no stop tag, {len(tokens)} tokens): {long_ms:.3f} ms")
    encoded = model.vocab.encode(prompt)
    sampling.generate_uncached(model.model, model.params, encoded, 200, ())
    seed_ms = median_ms(
        lambda: sampling.generate_uncached(model.model, model.params, encoded, 200, ()), 3
    )
    print(f"same 200 characters the seed's way (full forward per character): {seed_ms:.1f} ms")
    starts = [seconds_to_prompt(workdir) for _ in range(3)]
    print(
        f"process start to 'You> ' prompt: median {np.median(starts):.2f} s "
        f"(runs: {', '.join(f'{s:.2f}' for s in starts)})"
    )


if __name__ == "__main__":
    app.run(main)
