"""SIGINT/SIGTERM: a flag the training loop reads between epochs, a prompt exit elsewhere.

An epoch is one device call, so the loop finishes it, saves a checkpoint and only then
exits: the signal never cuts a save short. Outside the loop (start-up, compilation,
loading a checkpoint, the chat) nothing is being written, so the process ends at once with
one line: no KeyboardInterrupt that a library could swallow, turn into another error (a
checkpoint "unreadable") or catch in a native thread.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from types import FrameType

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class SignalCatcher:
    """Context manager recording the first SIGINT or SIGTERM instead of dying on it."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        del frame
        self.received = self.received or signum

    def __enter__(self) -> SignalCatcher:
        if threading.current_thread() is threading.main_thread():
            for signum in SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc_info) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


def _exit_now(signum: int, frame: FrameType | None) -> None:
    del frame
    name = signal.Signals(signum).name
    os.write(sys.stderr.fileno(), f"\nInterrupted ({name})\n".encode())
    os._exit(128 + signum)


def exit_promptly_on_signals() -> None:
    """From now on (outside `SignalCatcher`), SIGINT/SIGTERM end the process: status 128+N."""
    for signum in SIGNALS:
        signal.signal(signum, _exit_now)
