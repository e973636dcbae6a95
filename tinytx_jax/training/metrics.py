"""Per-epoch figures: `WORKDIR/metrics.jsonl`, TensorBoard event files, `curves.png`.

TensorBoard files are written with tensorboardX, so no TensorFlow is needed. On resume,
lines for epochs after the restored checkpoint are dropped (they are trained again), so
the file always describes one run.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable
from pathlib import Path

METRICS_FILE = "metrics.jsonl"
CURVES_FILE = "curves.png"
TENSORBOARD_DIR = "tensorboard"


@dataclasses.dataclass(frozen=True)
class EpochMetrics:
    """What one epoch reports: the seed's log-line figures, and exact match when measured."""

    epoch: int
    train_loss: float
    val_loss: float
    val_acc: float
    val_targets: int
    lr: float
    exact_match: float | None = None  # of the training turns' greedy replies
    val_exact_match: float | None = None  # of the held-out turns' (conversations split)
    typed_match: float | None = None  # of the training turns asked as typed (typed_variants)
    val_bpc: float | None = None  # bits per character (text models): val_loss / ln 2

    def ranking(self) -> dict[str, float]:
        """What checkpoints are ranked by (see checkpoint.rank)."""
        ranked = {"val_loss": self.val_loss}
        for name in ("exact_match", "typed_match"):
            if getattr(self, name) is not None:
                ranked[name] = getattr(self, name)
        return ranked


def format_epoch_line(m: EpochMetrics) -> str:
    """The seed's per-epoch log line, character for character, then exact match (when
    measured)."""
    line = (
        f"Epoch {m.epoch}, train_loss={m.train_loss:.4f} val_loss={m.val_loss:.4f} "
        f"val_acc={m.val_acc:.3f} (n={m.val_targets}) lr={m.lr:.2e}"
    )
    if m.exact_match is not None:
        line += f" exact_match={m.exact_match:.3f}"
    if m.val_exact_match is not None:
        line += f" val_exact_match={m.val_exact_match:.3f}"
    if m.typed_match is not None:
        line += f" typed_match={m.typed_match:.3f}"
    if m.val_bpc is not None:
        line += f" val_bpc={m.val_bpc:.4f}"
    return line


def epoch_record(
    m: EpochMetrics, step: int, tokens_per_step: int, steps: int, train_s: float, elapsed_s: float
) -> dict:
    """One line of metrics.jsonl; throughput counts the `train_s` of training alone
    (not validation, checkpoints or compilation)."""
    record = {
        "epoch": m.epoch,
        "step": step,
        "train_loss": m.train_loss,
        "val_loss": m.val_loss,
        "val_acc": m.val_acc,
        "lr": m.lr,
        "steps_per_s": steps / train_s,
        "tokens_per_s": steps * tokens_per_step / train_s,
        "elapsed_s": elapsed_s,
    }
    for name in ("exact_match", "val_exact_match", "typed_match", "val_bpc"):
        if getattr(m, name) is not None:
            record[name] = getattr(m, name)
    return record


def read_metrics(path: Path, log: Callable[[str], None] = print) -> list[dict]:
    """The epoch records of `path`; damaged lines (what a crash mid-write leaves, or any
    line that is not an epoch record with its losses) are skipped with one notice, never a
    reason to refuse a resume or a plot."""
    if not path.exists():
        return []
    records, skipped = [], []
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except (json.JSONDecodeError, RecursionError):
            record = None
        if is_epoch_record(record):
            records.append(record)
        else:
            skipped.append(number)
    if skipped:
        shown = ", ".join(map(str, skipped[:3])) + (", ..." if len(skipped) > 3 else "")
        log(f"(skipped {len(skipped)} lines of {path} that are not epoch records: {shown})")
    return records


def is_epoch_record(record: object) -> bool:
    """An epoch number and the figures a plot and a resume read, all numbers."""
    if not isinstance(record, dict) or not isinstance(record.get("epoch"), int):
        return False
    return all(
        isinstance(record.get(name), int | float) and not isinstance(record.get(name), bool)
        for name in ("train_loss", "val_loss", "val_acc")
    )


class MetricsLog:
    """Appends one JSON object per epoch and mirrors the numbers to TensorBoard.

    In a multi-process run only process 0 writes (`enabled` is False elsewhere). A
    population's records carry their `member`, and each member is a TensorBoard run of
    its own (`tensorboard/member_N`).
    """

    def __init__(
        self,
        workdir: str | os.PathLike,
        resumed_epoch: int,
        enabled: bool = True,
        members: tuple[int, ...] = (),
    ):
        self.enabled = enabled
        if not enabled:
            return
        self.directory = Path(workdir).expanduser().absolute()
        self.directory.mkdir(parents=True, exist_ok=True)
        self.path = self.directory / METRICS_FILE
        kept = [r for r in read_metrics(self.path) if r["epoch"] <= resumed_epoch]
        self.path.write_text("".join(json.dumps(r) + "\n" for r in kept))
        from tensorboardX import SummaryWriter  # imported here: chat start-up does not need it

        board = self.directory / TENSORBOARD_DIR
        self.writers = (
            {None: SummaryWriter(str(board))}
            if not members
            else {member: SummaryWriter(str(board / f"member_{member}")) for member in members}
        )

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as file:
            file.write(json.dumps(record) + "\n")
        writer = self.writers[record.get("member")]
        for name, value in record.items():
            if name not in ("epoch", "step", "member"):
                writer.add_scalar(name, value, global_step=record["epoch"])
        writer.flush()

    def close(self) -> None:
        if self.enabled:
            for writer in self.writers.values():
                writer.close()


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
    acc_axis.plot(epochs, [r["val_acc"] for r in records], color="tab:green", label="val_acc")
    for name, color in (
        ("exact_match", "tab:red"),
        ("val_exact_match", "tab:purple"),
        ("typed_match", "tab:orange"),
    ):
        measured = [(r["epoch"], r[name]) for r in records if name in r]
        if measured:
            acc_axis.plot(*zip(*measured, strict=True), "o-", color=color, label=name)
    acc_axis.set(xlabel="epoch", ylabel="accuracy", title="accuracy")
    acc_axis.legend()
    figure.tight_layout()
    out = directory / CURVES_FILE
    figure.savefig(out, dpi=100)
    return out
