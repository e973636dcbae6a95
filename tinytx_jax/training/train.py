"""The training loop: `train_and_evaluate`, one jitted epoch per iteration.

An epoch is one device call, or bounded chunks of steps when it is long (chunks.py), so a
signal is heard within seconds; after it the loop validates, updates the plateau and
early-stopping state, logs, checkpoints and checks for signals.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from contextlib import nullcontext

import jax
import ml_collections
import numpy as np

from tinytx_jax import configuration, interrupt, parallel
from tinytx_jax.checkpoints.store import CheckpointStore
from tinytx_jax.data import corpus
from tinytx_jax.training import init_from, metrics, profiling, progress
from tinytx_jax.training import resume as resuming
from tinytx_jax.training import workdir as run_workdir
from tinytx_jax.training.chunks import ChunkedEpoch
from tinytx_jax.training.compiled import compile_steps, measure_exact_match
from tinytx_jax.training.metrics import EpochMetrics, format_epoch_line
from tinytx_jax.training.state import TrainState, count_params
from tinytx_jax.training.task import Task, build_task, long_conversations


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. the loss diverged); the last good checkpoint is kept."""


class Interrupted(Exception):
    """SIGINT/SIGTERM arrived; a checkpoint was saved first. `signum` gives the exit status."""

    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.signum = signum


def stop_reason(
    metrics: EpochMetrics, state: TrainState, config: ml_collections.ConfigDict
) -> str | None:
    """Why training stops after this epoch (early stop or target reached), if it does."""
    if int(state.epochs_since_best) >= config.early_stop_patience:
        return (
            f"Early stopping at epoch {metrics.epoch}: no val_loss improvement for "
            f"{config.early_stop_patience} epochs (best {float(state.best_val_loss):.4f})"
        )
    # With both targets set, both must be reached: a model that scores val_acc 0.99 can
    # still answer one dialog wrong, and one that answers every dialog can do so narrowly.
    reached = []
    for name in ("val_acc", "exact_match", "typed_match"):
        target = config.get(f"target_{name}", 0.0)
        if not target:
            continue
        value = getattr(metrics, name)
        if value is None or value < target:
            return None
        reached.append(f"{name}={value:.3f} >= {target}")
    if reached:
        return f"Target reached at epoch {metrics.epoch}: {', '.join(reached)}"
    return None


def _stopped_mid_epoch(
    epoch: int,
    before: TrainState,
    history: list[EpochMetrics],
    saved_epoch: int,
    store: CheckpointStore,
    config: ml_collections.ConfigDict,
    task: Task,
    signals: interrupt.SignalCatcher,
) -> Interrupted:
    """Save the state from before the interrupted epoch (unless it is saved already);
    resuming then runs that epoch again from its start, bit for bit."""
    where = f"the checkpoint of epoch {epoch - 1} in {store.directory / str(epoch - 1)}"
    if history and saved_epoch < epoch - 1:
        last = history[-1]
        store.save(epoch - 1, before, resuming.run_meta(config, task, last), last.ranking())
        where = f"saved {where}"
    elif not saved_epoch:
        where = "no epoch had finished, so nothing was saved"
    store.wait()
    return Interrupted(
        int(signals.received),
        f"Interrupted during epoch {epoch}: {where}; run the same command to resume "
        f"(epoch {epoch} runs again from its start)",
    )


def train_and_evaluate(
    config: ml_collections.ConfigDict,
    workdir: str,
    log: Callable[[str], None] = print,
    on_task: Callable[[Task], object] | None = None,
) -> tuple[TrainState, list[EpochMetrics]]:
    """Train as configured, validating after every epoch and checkpointing into `workdir`.

    Resumes from the latest checkpoint in `workdir` unless `config.resume` is False, in
    which case the earlier run's files are moved aside. Writes `metrics.jsonl`, TensorBoard
    events and `curves.png` there. Returns the final state and the metrics of the epochs
    this call ran. `on_task` is called with the run's task once it is built.
    """
    configuration.check_config(config)
    if jax.default_backend() == "cpu":
        configuration.check_fits_in_memory(config)
    # Process 0 holds the workdir for the run (the others share it with process 0).
    lock = run_workdir.training_lock(workdir) if parallel.is_primary() else nullcontext()
    with lock:
        return _train_in(config, workdir, log, on_task)


def _train_in(
    config: ml_collections.ConfigDict,
    workdir: str,
    log: Callable[[str], None],
    on_task: Callable[[Task], object] | None,
) -> tuple[TrainState, list[EpochMetrics]]:
    task = build_task(config, log)
    if on_task:
        on_task(task)
    config = task.config
    if not config.resume:
        moved = parallel.primary_then_all("set_aside", lambda: run_workdir.set_aside(workdir))
        if moved:
            log(f"Starting over: the previous run's files were moved to {moved}")
    store = CheckpointStore(workdir, keep=config.keep_checkpoints)
    try:
        return _run_epochs(config, task, store, workdir, log)
    finally:
        store.close()  # waits for any save still being written


def _run_epochs(
    config: ml_collections.ConfigDict,
    task: Task,
    store: CheckpointStore,
    workdir: str,
    log: Callable[[str], None],
) -> tuple[TrainState, list[EpochMetrics]]:
    state = task.initial_state(config.seed)
    if store.steps():
        state, last = resuming.restore_for_resume(
            store, state, task, log, config.resume_on_new_data
        )
        if last.epoch >= config.epochs or stop_reason(last, state, config):
            log(f"Nothing to train: the run in {store.directory} finished at epoch {last.epoch}")
            return state, []
    elif task.init_source:
        source = task.init_source
        params = init_from.initial_params(source, state.params, task.vocab, task.mesh)
        state = state.replace(params=params)
        added = task.vocab.size - source.vocab.size
        log(
            f"Starting from the parameters of {source.workdir} (epoch {source.epoch}), with a "
            f"fresh optimiser and schedule; {added} new characters in the vocabulary"
        )
    start = time.perf_counter()
    steps = compile_steps(task, config, state)
    if config.profile_steps:
        traced = profiling.profile(task, config, workdir)
        log(f"Wrote a profile of {config.profile_steps} steps to {traced}")
    log(
        f"Training with JAX on {jax.devices()[0].platform}"
        f"{f' x {jax.device_count()}' if jax.device_count() > 1 else ''} "
        f"({count_params(state.params):,} "
        f"params, vocab {task.vocab.size}, {task.train_tokens.shape[0]:,} train / "
        f"{task.corpus.length - task.train_tokens.shape[0]:,} val tokens, "
        f"data: {task.corpus.source}{' (tokens from the cache)' if task.corpus.from_cache else ''}"
        f"{'; windows fed from host memory' if task.host_feed else ''}; "
        f"compiled in {time.perf_counter() - start:.1f} s)"
    )
    if config.window_start == "conversation":
        cut = long_conversations(task.corpus.conversations, config.block_size)
        if cut:
            log(
                f"({cut} conversations are longer than config.block_size={config.block_size}: "
                "their later characters are never trained; raise block_size)"
            )
    text_model = task.corpus.kind == corpus.TEXT
    first_epoch = int(state.epoch) + 1
    primary = parallel.is_primary()
    metrics_log = metrics.MetricsLog(workdir, resumed_epoch=first_epoch - 1, enabled=primary)
    bar = progress.Progress(config.epochs, first_epoch - 1, log, progress.Progress.wanted(log))
    history: list[EpochMetrics] = []
    saved_epoch, blocked, train_seconds = first_epoch - 1, [], 0.0
    start = time.perf_counter()
    try:
        with interrupt.SignalCatcher() as signals:
            for epoch in range(first_epoch, config.epochs + 1):
                epoch_start = time.perf_counter()
                chunked = len(steps.train_epoch.sizes()) > 1
                before = ChunkedEpoch.start_copy(state) if chunked else None
                done = steps.train_epoch.run(
                    state,
                    *task.train_data(epoch),
                    stop=lambda: bool(parallel.agreed_signal(signals.received)),
                )
                if done is None:  # a signal mid-epoch: keep the state from before it
                    raise _stopped_mid_epoch(
                        epoch, before, history, saved_epoch, store, config, task, signals
                    )
                state, train_loss = done
                train_loss.block_until_ready()  # host sync: times the training alone
                epoch_train_s = time.perf_counter() - epoch_start
                train_seconds += epoch_train_s
                full = steps.evaluate_full is not None and epoch == config.epochs
                if full:
                    val_loss, val_acc = steps.evaluate_full(state.params, *task.full_val_chunks)
                else:
                    val_loss, val_acc = steps.evaluate(state.params, *task.val_chunks)
                every = config.exact_match_every
                measured = (
                    measure_exact_match(steps, state.params)
                    if every and (epoch % every == 0 or epoch == config.epochs)
                    else {}
                )
                state, lr = steps.end_epoch(state, val_loss)
                # Host sync: the epoch's figures come back for the log and the decisions below.
                m = EpochMetrics(
                    epoch,
                    float(train_loss),
                    float(val_loss),
                    float(val_acc),
                    task.full_val_targets if full else task.val_targets,
                    float(lr),
                    **measured,
                    val_bpc=float(val_loss) / math.log(2) if text_model else None,
                )
                history.append(m)
                metrics_log.write(
                    metrics.epoch_record(
                        m,
                        int(state.step),
                        config.batch_size * config.block_size,
                        config.steps_per_epoch,
                        epoch_train_s,
                        time.perf_counter() - start,
                    )
                )
                bar.update(m.train_loss, m.val_acc, m.lr)
                if epoch % config.print_every == 0:
                    bar.log(format_epoch_line(m))
                if not (np.isfinite(m.train_loss) and np.isfinite(m.val_loss)):
                    kept = (
                        f"kept the last good checkpoint (epoch {saved_epoch}) in {store.directory}"
                        if saved_epoch
                        else "no checkpoint was saved"
                    )
                    raise TrainingError(
                        f"the loss is not finite at epoch {epoch} (train_loss={m.train_loss}, "
                        f"val_loss={m.val_loss}); {kept}: lower config.lr or check the data"
                    )
                reason = stop_reason(m, state, config)
                signal = parallel.agreed_signal(signals.received)
                last = reason is not None or signal or epoch == config.epochs
                if epoch % config.checkpoint_every == 0 or last:
                    meta = resuming.run_meta(config, task, m)
                    blocked.append(store.save(epoch, state, meta, m.ranking()))
                    saved_epoch = epoch
                if signal:
                    store.wait()
                    raise Interrupted(
                        signal,
                        f"Interrupted at epoch {epoch}: checkpoint saved to "
                        f"{store.directory / str(epoch)}; run the same command to resume",
                    )
                if reason:
                    bar.log(reason)
                    break
    finally:
        bar.close()
        metrics_log.close()
    if epoch % config.print_every:
        log(format_epoch_line(history[-1]))
    trained_steps = len(history) * config.steps_per_epoch
    log(
        f"Trained to step {int(state.step):,} in {time.perf_counter() - start:.1f} s "
        f"({trained_steps / train_seconds:,.0f} steps/s while training); checkpoints saved: "
        f"{len(blocked)} in {store.directory} (longest save blocked {max(blocked) * 1e3:.0f} ms)"
    )
    if primary:
        log(f"Curves: {metrics.plot_curves(workdir)}")
    return state, history
