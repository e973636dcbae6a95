"""A progress bar over epochs on a terminal; plain lines everywhere else."""

from __future__ import annotations

import sys
from collections.abc import Callable

from tqdm import tqdm


class Progress:
    """Shows loss, val acc, lr and ETA on a TTY; routes log lines around the bar."""

    def __init__(self, total: int, done: int, log: Callable[[str], None], enabled: bool):
        self.log_line = log
        self.bar = (
            tqdm(total=total, initial=done, unit="epoch", dynamic_ncols=True, leave=False)
            if enabled
            else None
        )

    @staticmethod
    def wanted(log: Callable[[str], None]) -> bool:
        """A bar only when printing straight to an interactive terminal."""
        return log is print and sys.stdout.isatty()

    def log(self, line: str) -> None:
        if self.bar is None:
            self.log_line(line)
        else:
            self.bar.write(line)

    def update(self, train_loss: float, val_acc: float, lr: float) -> None:
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{train_loss:.4f}", val_acc=f"{val_acc:.3f}", lr=f"{lr:.1e}")
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
