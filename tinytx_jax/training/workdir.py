"""A training run's workdir: one run at a time, and an earlier run's files set aside.

`flock` on `WORKDIR/train.lock` is released however the process ends (even `kill -9`), so a
stale lock file never blocks the next run; the file only names the current holder. Chat,
eval and sampling do not take it: they read committed checkpoints while a run trains.
Starting over (`config.resume=False`) moves the earlier run's files aside, and resuming
past unreadable checkpoints moves those aside: nothing is deleted.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

LOCK_FILE = "train.lock"


class WorkdirBusy(RuntimeError):
    """Another training run holds the workdir; the message names it."""


@contextlib.contextmanager
def training_lock(workdir: str | os.PathLike) -> Iterator[None]:
    """Hold `workdir` for this training run, or raise WorkdirBusy naming the holder."""
    directory = Path(workdir).expanduser().absolute()
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / LOCK_FILE, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise WorkdirBusy(
                f"{directory} is in use by another training run ({holder}): wait for it to "
                "finish, or train in another --workdir"
            ) from None
        handle.seek(0)
        handle.truncate()
        started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
        handle.write(f"process {os.getpid()} on {socket.gethostname()}, started {started}\n")
        handle.flush()
        try:
            yield
        finally:
            handle.truncate(0)
            fcntl.flock(handle, fcntl.LOCK_UN)


RUN_FILES = ("checkpoints", "metrics.jsonl", "tensorboard", "curves.png", "profile")


def set_aside(workdir: str | os.PathLike) -> Path | None:
    """Move an earlier run's files into `WORKDIR/replaced-<time>/` (never delete them)."""
    root = Path(workdir).expanduser().absolute()
    present = [root / name for name in RUN_FILES if (root / name).exists()]
    if not present:
        return None
    target = root / f"replaced-{time.strftime('%Y%m%d-%H%M%S')}"
    target.mkdir()
    for path in present:
        path.rename(target / path.name)
    return target


def set_aside_checkpoints(directory: Path, steps: list[int]) -> Path:
    """Move the step directories `steps` out of the checkpoint `directory` into a sibling
    `checkpoints.unreadable-<time>/`, where no checkpoint manager looks (kept, never deleted)."""
    target = directory.with_name(f"checkpoints.unreadable-{time.strftime('%Y%m%d-%H%M%S')}")
    target.mkdir(parents=True, exist_ok=True)
    for step in steps:
        (directory / str(step)).rename(target / str(step))
    return target
