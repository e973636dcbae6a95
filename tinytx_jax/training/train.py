"""The training loop: `train_and_evaluate`, one jitted epoch per iteration.

An epoch is one device call, or bounded chunks of steps when it is long (chunks.py), so a
signal is heard within seconds. Each iteration reads as its steps: train an epoch,
evaluate, record, decide, checkpoint (`EpochLoop`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import nullcontext

import jax
import ml_collections

from tinytx_jax import interrupt, parallel
from tinytx_jax.checkpoints.store import CheckpointStore
from tinytx_jax.run_config import RunConfig
from tinytx_jax.training import profiling
from tinytx_jax.training import workdir as run_workdir
from tinytx_jax.training.compiled import compile_steps
from tinytx_jax.training.epoch_loop import EpochLoop
from tinytx_jax.training.memory import check_fits_in_memory
from tinytx_jax.training.metrics import EpochMetrics
from tinytx_jax.training.resume import starting_state
from tinytx_jax.training.state import TrainState
from tinytx_jax.training.task import Task, build_task


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
        with CheckpointStore(workdir, keep=task.run.train.keep_checkpoints) as store:
            state, finished = starting_state(task, store, log)
            if finished:
                return state, []
            start = time.perf_counter()
            steps = compile_steps(task, state)
            loop = EpochLoop(task, steps, store, workdir, log, state, saved_epoch=int(state.epoch))
            if task.run.train.profile_steps:
                steps_n = task.run.train.profile_steps
                log(f"Wrote a profile of {steps_n} steps to {profiling.profile(task, workdir)}")
            loop.announce(time.perf_counter() - start)
            with interrupt.SignalCatcher() as signals, loop:
                for epoch in range(int(state.epoch) + 1, task.run.train.epochs + 1):
                    if not loop.run_epoch(epoch, signals):
                        break
            loop.summarise()
            return loop.state, loop.history
