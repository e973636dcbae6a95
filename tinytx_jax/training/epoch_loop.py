"""What the training loop carries from epoch to epoch, and each of its steps: train an
epoch, evaluate, record, checkpoint; and the state saved when a signal stops it."""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable

import jax
import numpy as np

from tinytx_jax import interrupt, parallel
from tinytx_jax.checkpoints.store import CheckpointStore
from tinytx_jax.data import corpus
from tinytx_jax.text.dialogs import conversation_length
from tinytx_jax.training import metrics, progress
from tinytx_jax.training import resume as resuming
from tinytx_jax.training.chunks import ChunkedEpoch
from tinytx_jax.training.compiled import CompiledSteps, measure_exact_match
from tinytx_jax.training.metrics import EpochMetrics, format_epoch_line
from tinytx_jax.training.state import TrainState, count_params
from tinytx_jax.training.stopping import stop_reason
from tinytx_jax.training.task import Task


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. the loss diverged); the last good checkpoint is kept."""


class Interrupted(Exception):
    """SIGINT/SIGTERM arrived; a checkpoint was saved first. `signum` gives the exit status."""

    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.signum = signum


def interrupted_after(epoch: int, signum: int, store: CheckpointStore) -> Interrupted:
    """A signal during `epoch`, heard at its end, once its checkpoint is written."""
    store.wait()
    return Interrupted(
        signum,
        f"Interrupted at epoch {epoch}: checkpoint saved to {store.directory / str(epoch)}; "
        "run the same command to resume",
    )


def interrupted_during(
    epoch: int,
    signum: int,
    store: CheckpointStore,
    saved_epoch: int,
    save_before: Callable[[], None] | None,
) -> Interrupted:
    """A signal between two chunks of `epoch`: `save_before` saves the state from before it
    (when an epoch has finished and that one is not saved yet)."""
    where = f"the checkpoint of epoch {epoch - 1} in {store.directory / str(epoch - 1)}"
    if save_before and saved_epoch < epoch - 1:
        save_before()
        where = f"saved {where}"
    elif not saved_epoch:
        where = "no epoch had finished, so nothing was saved"
    store.wait()
    return Interrupted(
        signum,
        f"Interrupted during epoch {epoch}: {where}; run the same command to resume "
        f"(epoch {epoch} runs again from its start)",
    )


@dataclasses.dataclass
class EpochLoop:
    """What the loop carries from epoch to epoch, and each of its steps."""

    task: Task
    steps: CompiledSteps
    store: CheckpointStore
    workdir: str
    log: Callable[[str], None]
    state: TrainState
    saved_epoch: int  # the last epoch with a checkpoint (0: none)
    history: list[EpochMetrics] = dataclasses.field(default_factory=list)
    blocked: list[float] = dataclasses.field(default_factory=list)  # seconds, per save
    train_loss: jax.Array | None = None  # the last epoch's mean, on the device
    train_seconds: float = 0.0
    start: float = dataclasses.field(default_factory=time.perf_counter)

    def __post_init__(self):
        first_epoch = self.saved_epoch + 1
        primary = parallel.is_primary()
        self.metrics_log = metrics.MetricsLog(self.workdir, first_epoch - 1, enabled=primary)
        epochs = self.task.run.train.epochs
        self.bar = progress.Progress(
            epochs, first_epoch - 1, self.log, progress.Progress.wanted(self.log)
        )

    def run_epoch(self, epoch: int, signals: interrupt.SignalCatcher) -> bool:
        """Train an epoch, evaluate, record, decide, checkpoint; False when the run stops
        here (raises Interrupted after a signal, once the checkpoint is saved)."""
        train = self.task.run.train
        seconds = self.train_epoch(epoch, signals)
        measured = self.evaluate(epoch)
        self.record(measured, seconds)
        state = self.state
        reason = stop_reason(measured, state.epochs_since_best, state.best_val_loss, train)
        signal = parallel.agreed_signal(signals.received)
        if epoch % train.checkpoint_every == 0 or reason or signal or epoch == train.epochs:
            self.save(epoch, self.state, measured)
        if signal:
            raise interrupted_after(epoch, signal, self.store)
        if reason:
            self.bar.log(reason)
        return not reason

    def train_epoch(self, epoch: int, signals: interrupt.SignalCatcher) -> float:
        """Run one epoch; its seconds of training alone. A signal between two chunks saves
        the state from before the epoch and raises Interrupted."""
        epoch_start = time.perf_counter()
        chunked = len(self.steps.train_epoch.sizes()) > 1
        before = ChunkedEpoch.start_copy(self.state) if chunked else None
        done = self.steps.train_epoch.run(
            self.state,
            *self.task.train_data(epoch),
            stop=lambda: bool(parallel.agreed_signal(signals.received)),
        )
        if done is None:
            raise self.interrupted_during(epoch, before, int(signals.received))
        self.state, self.train_loss = done
        self.train_loss.block_until_ready()  # host sync: times the training alone
        seconds = time.perf_counter() - epoch_start
        self.train_seconds += seconds
        return seconds

    def evaluate(self, epoch: int) -> EpochMetrics:
        """Validation (the whole split at the last epoch when eval_steps samples it),
        exact match when due, and the end-of-epoch plateau and early-stopping update."""
        task, steps, train = self.task, self.steps, self.task.run.train
        full = steps.evaluate_full is not None and epoch == train.epochs
        if full:
            val_loss, val_acc = steps.evaluate_full(self.state.params, *task.data.full_val_chunks)
        else:
            val_loss, val_acc = steps.evaluate(self.state.params, *task.data.val_chunks)
        every = train.exact_match_every
        due = every and (epoch % every == 0 or epoch == train.epochs)
        measured = measure_exact_match(steps, self.state.params) if due else {}
        self.state, lr = steps.end_epoch(self.state, val_loss)
        # Host sync: the epoch's figures come back for the log and the decisions after.
        text_model = task.corpus.kind == corpus.TEXT
        return EpochMetrics(
            epoch,
            float(self.train_loss),
            float(val_loss),
            float(val_acc),
            task.data.full_val_targets if full else task.data.val_targets,
            float(lr),
            **measured,
            val_bpc=float(val_loss) / math.log(2) if text_model else None,
        )

    def record(self, m: EpochMetrics, train_s: float) -> None:
        """The epoch in the history, metrics.jsonl, TensorBoard and the log; a loss that is
        not finite stops the run (the last good checkpoint is kept)."""
        run = self.task.run
        self.history.append(m)
        tokens_per_step = run.train.batch_size * run.data.block_size
        elapsed = time.perf_counter() - self.start
        step = int(self.state.step)
        self.metrics_log.write(
            metrics.epoch_record(
                m, step, tokens_per_step, run.train.steps_per_epoch, train_s, elapsed
            )
        )
        self.bar.update(m.train_loss, m.val_acc, m.lr)
        if m.epoch % run.train.print_every == 0:
            self.bar.log(format_epoch_line(m))
        if not (np.isfinite(m.train_loss) and np.isfinite(m.val_loss)):
            kept = (
                f"kept the last good checkpoint (epoch {self.saved_epoch}) in "
                f"{self.store.directory}"
                if self.saved_epoch
                else "no checkpoint was saved"
            )
            raise TrainingError(
                f"the loss is not finite at epoch {m.epoch} (train_loss={m.train_loss}, "
                f"val_loss={m.val_loss}); {kept}: lower config.lr or check the data"
            )

    def save(self, epoch: int, state: TrainState, m: EpochMetrics) -> None:
        """Start an asynchronous checkpoint of `state` as epoch `epoch`."""
        meta = resuming.run_meta(self.task, m)
        self.blocked.append(self.store.save(epoch, state, meta, m.ranking()))
        self.saved_epoch = epoch

    def interrupted_during(self, epoch: int, before: TrainState, signum: int) -> Interrupted:
        """Save the state from before the interrupted epoch (unless it is saved already);
        resuming then runs that epoch again from its start, bit for bit."""
        history = self.history
        save = (lambda: self.save(epoch - 1, before, history[-1])) if history else None
        return interrupted_during(epoch, signum, self.store, self.saved_epoch, save)

    def __enter__(self) -> EpochLoop:
        return self

    def __exit__(self, *exc_info) -> None:
        self.bar.close()
        self.metrics_log.close()

    def announce(self, compile_s: float) -> None:
        """The run's first line (devices, sizes, data, compile time), and what it cannot train."""
        task, devices = self.task, jax.device_count()
        train_tokens = task.data.train_tokens.shape[0]
        cached = " (tokens from the cache)" if task.corpus.from_cache else ""
        self.log(
            f"Training with JAX on {jax.devices()[0].platform}"
            f"{f' x {devices}' if devices > 1 else ''} "
            f"({count_params(self.state.params):,} "
            f"params, vocab {task.vocab.size}, {train_tokens:,} train / "
            f"{task.corpus.length - train_tokens:,} val tokens, "
            f"data: {task.corpus.source}{cached}"
            f"{'; windows fed from host memory' if task.data.host_feed else ''}; "
            f"compiled in {compile_s:.1f} s)"
        )
        block_size = task.run.data.block_size
        if task.run.data.window_start == "conversation":
            # Conversations past a conversation-aligned window: their ends never train.
            cut = sum(conversation_length(c) - 1 > block_size for c in task.corpus.conversations)
            if cut:
                self.log(
                    f"({cut} conversations are longer than config.block_size={block_size}: "
                    "their later characters are never trained; raise block_size)"
                )

    def summarise(self) -> None:
        """The last epoch's line if it was not printed, the run's speed, the curves."""
        train = self.task.run.train
        if self.history[-1].epoch % train.print_every:
            self.log(format_epoch_line(self.history[-1]))
        trained_steps = len(self.history) * train.steps_per_epoch
        self.log(
            f"Trained to step {int(self.state.step):,} in {time.perf_counter() - self.start:.1f} s "
            f"({trained_steps / self.train_seconds:,.0f} steps/s while training); checkpoints "
            f"saved: {len(self.blocked)} in {self.store.directory} (longest save blocked "
            f"{max(self.blocked) * 1e3:.0f} ms)"
        )
        if parallel.is_primary():
            self.log(f"Curves: {metrics.plot_curves(self.workdir)}")
