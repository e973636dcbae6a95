"""`config.profile_steps`: a jax.profiler trace of compiled training steps, for TensorBoard
or Perfetto."""

from __future__ import annotations

import jax

from tinytx_jax.checkpoints.store import checkpoint_dir
from tinytx_jax.training.task import Task


def profile(task: Task, workdir: str) -> str:
    """A `jax.profiler` trace of `profile_steps` compiled steps, on a throwaway state."""
    steps = task.make_train_epoch(task.run.train.profile_steps)
    state, loss = steps(task.initial_state(task.run.train.seed), *task.train_data(0))
    loss.block_until_ready()  # compiled outside the trace
    directory = str(checkpoint_dir(workdir).parent / "profile")
    with jax.profiler.trace(directory):
        _, loss = steps(state, *task.train_data(0))
        loss.block_until_ready()
    return directory
