"""A big text corpus: start-up time to the first training step and peak host memory.

    python -m benchmarks.big_corpus [--megabytes=200] [--steps=200]

Writes a synthetic text of about `--megabytes` MB (words drawn from a fixed list, with
line breaks), then runs `python main.py --mode=train --config=configs/char_lm.py` on it
with `--config.eval_steps=50` in a subprocess, and prints the seconds from process start
to the end of compilation (the line "Training with JAX ..."), the whole wall time, and the
peak resident memory of that process: twice, the second time with the encoded tokens
read back from the token cache.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from absl import app, flags

_MEGABYTES = flags.DEFINE_integer("megabytes", 200, "Size of the synthetic text.")
_STEPS = flags.DEFINE_integer("steps", 200, "Training steps (in 2 epochs).")

WORDS = [
    "the",
    "of",
    "and",
    "to",
    "in",
    "a",
    "is",
    "that",
    "for",
    "it",
    "as",
    "was",
    "with",
    "be",
    "by",
    "on",
    "not",
    "he",
    "this",
    "are",
    "or",
    "his",
    "from",
    "at",
    "which",
    "but",
    "have",
    "an",
    "they",
    "you",
    "were",
    "her",
    "she",
    "there",
    "one",
    "all",
    "we",
    "their",
    "been",
    "has",
    "when",
    "who",
    "will",
    "more",
    "no",
    "if",
    "out",
    "so",
    "said",
    "what",
    "up",
    "its",
    "about",
    "into",
    "than",
    "them",
    "can",
    "only",
    "other",
    "new",
    "some",
    "could",
]


def synthetic_text(path: Path, megabytes: int) -> None:
    rng = np.random.default_rng(0)
    block = " ".join(rng.choice(WORDS, 200_000)) + "\n"
    with path.open("w") as file:
        for _ in range(max(1, megabytes * 1_000_000 // len(block))):
            file.write(block.replace(" the ", "\nthe ", 50))


def start_up(text: Path, workdir: str, env: dict) -> tuple[float, float, int, float]:
    """One training run: seconds to the first step, whole wall, exit status, peak RSS MB."""
    command = [
        sys.executable,
        "main.py",
        "--mode=train",
        "--config=configs/char_lm.py",
        f"--config.data_path={text}",
        f"--workdir={workdir}",
        "--config.epochs=2",
        f"--config.steps_per_epoch={_STEPS.value // 2}",
        "--config.eval_steps=50",
        "--config.max_new_tokens=50",
    ]
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env)
    first_step = float("nan")
    for line in process.stdout:
        if line.startswith("Training with JAX") and first_step != first_step:
            first_step = time.perf_counter() - start
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - start
    return first_step, wall, os.waitstatus_to_exitcode(status), usage.ru_maxrss / 1024


def main(argv: list[str]) -> None:
    del argv
    with tempfile.TemporaryDirectory() as directory:
        text = Path(directory) / "big.txt"
        synthetic_text(text, _MEGABYTES.value)
        size_mb = text.stat().st_size / 1e6
        env = {**os.environ, "TINYTX_CACHE_DIR": f"{directory}/token_cache"}
        print(f"text: {size_mb:.0f} MB")
        for run, name in enumerate(("first run (encodes, fills the token cache)", "second run")):
            first_step, wall, status, peak_mb = start_up(text, f"{directory}/run{run}", env)
            print(
                f"{name}: start-up to the first step {first_step:.1f} s, whole process "
                f"{wall:.1f} s (exit status {status}), peak host RSS {peak_mb:,.0f} MB"
            )


if __name__ == "__main__":
    app.run(main)
