"""Runs main.py as a user does: a whole process, timed, stopping the benchmark on failure."""

from __future__ import annotations

import subprocess
import sys
import time


def main_py(*args: str) -> tuple[float, str]:
    """Whole-process wall seconds and stdout of `python main.py ARGS`; stops on failure."""
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "main.py", *args], capture_output=True, text=True, stdin=subprocess.DEVNULL
    )
    if result.returncode:
        sys.exit(f"error: main.py {' '.join(args)} failed: {result.stderr.strip()[-300:]}")
    return time.perf_counter() - start, result.stdout
