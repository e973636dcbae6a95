"""SIGINT/SIGTERM become a flag that the training loop reads between epochs.

An epoch is one device call, so the loop finishes it, saves a checkpoint and only then
exits: the signal never cuts a save short.
"""

from __future__ import annotations

import signal
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
