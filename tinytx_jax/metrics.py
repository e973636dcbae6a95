"""Per-epoch figures: `WORKDIR/metrics.jsonl`, TensorBoard event files, `curves.png`.

TensorBoard files are written with tensorboardX, so no TensorFlow is needed. On resume,
lines for epochs after the restored checkpoint are dropped (they are trained again), so
the file always describes one run.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

METRICS_FILE = "metrics.jsonl"
CURVES_FILE = "curves.png"
TENSORBOARD_DIR = "tensorboard"


def read_metrics(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class MetricsLog:
    """Appends one JSON object per epoch and mirrors the numbers to TensorBoard.

    In a multi-process run only process 0 writes (`enabled` is False elsewhere).
    """

    def __init__(self, workdir: str | os.PathLike, resumed_epoch: int, enabled: bool = True):
        self.enabled = enabled
        if not enabled:
            return
        self.directory = Path(workdir).expanduser().absolute()
        self.directory.mkdir(parents=True, exist_ok=True)
        self.path = self.directory / METRICS_FILE
        kept = [r for r in read_metrics(self.path) if r["epoch"] <= resumed_epoch]
        self.path.write_text("".join(json.dumps(r) + "\n" for r in kept))
        from tensorboardX import SummaryWriter  # imported here: chat start-up does not need it

        self.writer = SummaryWriter(str(self.directory / TENSORBOARD_DIR))

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as file:
            file.write(json.dumps(record) + "\n")
        for name, value in record.items():
            if name not in ("epoch", "step"):
                self.writer.add_scalar(name, value, global_step=record["epoch"])
        self.writer.flush()

    def close(self) -> None:
        if self.enabled:
            self.writer.close()


def plot_curves(workdir: str | os.PathLike) -> Path:
    """Loss and accuracy against epochs, from `metrics.jsonl`, into `curves.png`."""
    directory = Path(workdir).expanduser().absolute()
    records = read_metrics(directory / METRICS_FILE)
    if not records:
        raise FileNotFoundError(
            f"no metrics in {directory}: run `python main.py --mode=train --workdir={workdir}` "
            "first"
        )
    from matplotlib.figure import Figure  # Agg canvas, no pyplot state; imported on demand

    epochs = [r["epoch"] for r in records]
    figure = Figure(figsize=(10, 4))
    loss_axis, acc_axis = figure.subplots(1, 2)
    loss_axis.plot(epochs, [r["train_loss"] for r in records], label="train")
    loss_axis.plot(epochs, [r["val_loss"] for r in records], label="validation")
    loss_axis.set(xlabel="epoch", ylabel="cross-entropy", yscale="log", title="loss")
    loss_axis.legend()
    acc_axis.plot(epochs, [r["val_acc"] for r in records], color="tab:green")
    acc_axis.set(xlabel="epoch", ylabel="accuracy", title="validation accuracy")
    figure.tight_layout()
    out = directory / CURVES_FILE
    figure.savefig(out, dpi=100)
    return out
