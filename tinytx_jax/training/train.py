"""The training loop: `train_and_evaluate`, one jitted epoch per iteration.

An epoch is one device call, or bounded chunks of steps when it is long (chunks.py), so a
signal is heard within seconds. Each iteration reads as its steps: train an epoch,
evaluate, record, checkpoint, decide (`EpochLoop`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import nullcontext

import jax
import ml_collections

from tinytx_jax import interrupt, parallel
from tinytx_jax.checkpoints.store import CheckpointStore
from tinytx_jax.configuration import TrainConfig
from tinytx_jax.run_config import RunConfig
from tinytx_jax.training import init_from, profiling
from tinytx_jax.training import resume as resuming
from tinytx_jax.training import workdir as run_workdir
from tinytx_jax.training.compiled import compile_steps
from tinytx_jax.training.epoch_loop import EpochLoop
from tinytx_jax.training.memory import check_fits_in_memory
from tinytx_jax.training.metrics import EpochMetrics
from tinytx_jax.training.state import TrainState, count_params
from tinytx_jax.training.task import Task, build_task, long_conversations


def stop_reason(metrics: EpochMetrics, state: TrainState, train: TrainConfig) -> str | None:
    """Why training stops after this epoch (early stop or target reached), if it does."""
    if int(state.epochs_since_best) >= train.early_stop_patience:
        return (
            f"Early stopping at epoch {metrics.epoch}: no val_loss improvement for "
            f"{train.early_stop_patience} epochs (best {float(state.best_val_loss):.4f})"
        )
    # With both targets set, both must be reached: a model that scores val_acc 0.99 can
    # still answer one dialog wrong, and one that answers every dialog can do so narrowly.
    reached = []
    for name, target in train.targets.items():
        if not target:
            continue
        value = getattr(metrics, name)
        if value is None or value < target:
            return None
        reached.append(f"{name}={value:.3f} >= {target}")
    if reached:
        return f"Target reached at epoch {metrics.epoch}: {', '.join(reached)}"
    return None


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
    return train_run(RunConfig.from_flat(config), workdir, log, on_task)


def train_run(
    run: RunConfig,
    workdir: str,
    log: Callable[[str], None] = print,
    on_task: Callable[[Task], object] | None = None,
) -> tuple[TrainState, list[EpochMetrics]]:
    """`train_and_evaluate` for settings already resolved (and checked)."""
    if jax.default_backend() == "cpu":
        check_fits_in_memory(run)
    # Process 0 holds the workdir for the run (the others share it with process 0).
    lock = run_workdir.training_lock(workdir) if parallel.is_primary() else nullcontext()
    with lock:
        task = build_task(run, log)
        if on_task:
            on_task(task)
        if not task.run.train.resume:
            moved = parallel.primary_then_all("set_aside", lambda: run_workdir.set_aside(workdir))
            if moved:
                log(f"Starting over: the previous run's files were moved to {moved}")
        store = CheckpointStore(workdir, keep=task.run.train.keep_checkpoints)
        try:
            return _run_epochs(task, store, workdir, log)
        finally:
            store.close()  # waits for any save still being written


def _run_epochs(
    task: Task, store: CheckpointStore, workdir: str, log: Callable[[str], None]
) -> tuple[TrainState, list[EpochMetrics]]:
    train = task.run.train
    state, finished = starting_state(task, store, log)
    if finished:
        return state, []
    start = time.perf_counter()
    steps = compile_steps(task, state)
    if train.profile_steps:
        log(f"Wrote a profile of {train.profile_steps} steps to {profiling.profile(task, workdir)}")
    announce(task, state, time.perf_counter() - start, log)
    loop = EpochLoop(task, steps, store, workdir, log, state, saved_epoch=int(state.epoch))
    try:
        with interrupt.SignalCatcher() as signals:
            for epoch in range(int(state.epoch) + 1, train.epochs + 1):
                seconds = loop.train_epoch(epoch, signals)
                measured = loop.evaluate(epoch)
                loop.record(measured, seconds)
                reason = stop_reason(measured, loop.state, train)
                signal = parallel.agreed_signal(signals.received)
                if epoch % train.checkpoint_every == 0 or reason or signal or epoch == train.epochs:
                    loop.save(epoch, loop.state, measured)
                if signal:
                    raise loop.interrupted_after(epoch, signal)
                if reason:
                    loop.bar.log(reason)
                    break
    finally:
        loop.close()
    loop.summarise()
    return loop.state, loop.history


def starting_state(
    task: Task, store: CheckpointStore, log: Callable[[str], None]
) -> tuple[TrainState, bool]:
    """The state to train from: a resumed checkpoint's, another run's parameters
    (`init_from`), or fresh; and whether the resumed run has nothing left to train."""
    train = task.run.train
    state = task.initial_state(train.seed)
    if store.steps():
        state, last = resuming.restore_for_resume(store, state, task, log, train.resume_on_new_data)
        if last.epoch >= train.epochs or stop_reason(last, state, train):
            log(f"Nothing to train: the run in {store.directory} finished at epoch {last.epoch}")
            return state, True
    elif task.init_source:
        source = task.init_source
        params = init_from.initial_params(source, state.params, task.vocab, task.mesh)
        state = state.replace(params=params)
        added = task.vocab.size - source.vocab.size
        log(
            f"Starting from the parameters of {source.workdir} (epoch {source.epoch}), with a "
            f"fresh optimiser and schedule; {added} new characters in the vocabulary"
        )
    return state, False


def announce(task: Task, state: TrainState, compile_s: float, log: Callable[[str], None]):
    """The run's first line (devices, sizes, data, compile time), and what it cannot train."""
    devices = jax.device_count()
    train_tokens = task.data.train_tokens.shape[0]
    log(
        f"Training with JAX on {jax.devices()[0].platform}"
        f"{f' x {devices}' if devices > 1 else ''} "
        f"({count_params(state.params):,} "
        f"params, vocab {task.vocab.size}, {train_tokens:,} train / "
        f"{task.corpus.length - train_tokens:,} val tokens, "
        f"data: {task.corpus.source}{' (tokens from the cache)' if task.corpus.from_cache else ''}"
        f"{'; windows fed from host memory' if task.data.host_feed else ''}; "
        f"compiled in {compile_s:.1f} s)"
    )
    block_size = task.run.data.block_size
    if task.run.data.window_start == "conversation":
        cut = long_conversations(task.corpus.conversations, block_size)
        if cut:
            log(
                f"({cut} conversations are longer than config.block_size={block_size}: "
                "their later characters are never trained; raise block_size)"
            )
