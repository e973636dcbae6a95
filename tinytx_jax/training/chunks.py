"""An epoch run as bounded chunks of steps, so that a signal is heard within seconds.

A jitted epoch is one device call: a process blocked in it hears SIGINT or SIGTERM only
when the call returns, which for a long epoch (`steps_per_epoch=100000`) is minutes. So
an epoch of more than `WHOLE_EPOCH_STEPS` steps draws its step keys once, runs them
`CHUNK_STEPS` at a time, and asks between chunks whether to stop. Chunking changes no
state: the steps and their keys are the whole-epoch scan's. Shorter epochs (the seed's
200 steps, every shipped config) stay one call, so their printed losses are unchanged to
the last digit. A stop mid-epoch returns None: the caller keeps the state from before the
epoch (`start_copy`), and that epoch resumes from its start.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from tinytx_jax.training.state import TrainState
from tinytx_jax.training.steps import epoch_keys, make_step, train_epoch_function

WHOLE_EPOCH_STEPS = 256  # epochs up to this many steps run as one device call
CHUNK_STEPS = 128  # longer ones, this many per call: ~1 s of the fast config, ~5 s of char_lm


class ChunkedEpoch:
    """`run(state, *train_data, stop)`: one epoch; (state, mean loss), or None if `stop()`
    said so between two chunks. With `members`, a population's: every function runs for
    each member (member_axis.Members), the keys and losses have a leading member axis.
    """

    def __init__(self, task, members=None):
        self.steps = task.run.train.steps_per_epoch
        self.members = members
        batch_size, block_size = task.run.train.batch_size, task.run.data.block_size
        mesh = None if members else task.mesh
        step = make_step(task.model, task.tx, mesh, batch_size, block_size)

        def run_chunk(state, losses_E, start, keys_K, tokens_N, weights_N=None, starts_S=None):
            state, chunk_losses = jax.lax.scan(
                lambda s, k: step(s, k, tokens_N, weights_N, starts_S), state, keys_K
            )
            return state, jax.lax.dynamic_update_slice_in_dim(losses_E, chunk_losses, start, 0)

        def finish(state: TrainState, rng: jax.Array, losses_E: jax.Array):
            return state.replace(rng=rng, epoch=state.epoch + 1), losses_E.mean()

        keys = functools.partial(epoch_keys, steps_per_epoch=self.steps)
        if members:
            whole = train_epoch_function(
                task.model, task.tx, None, self.steps, batch_size, block_size
            )
            self.whole = jax.jit(members.each(whole, "m...", gated=True), donate_argnums=1)
            keys = members.each(keys, "m")
            run_chunk = members.each(run_chunk, "mm.m...", gated=True)
            finish = members.each(finish, "mmm", gated=True)
        else:
            self.whole = task.make_train_epoch(self.steps)
        self._keys = jax.jit(keys)
        first = 1 if members else 0  # a population's programs take the active flags first
        self._chunk = jax.jit(run_chunk, donate_argnums=(first, first + 1))
        self._finish = jax.jit(finish, donate_argnums=first)
        self._compiled: dict[int, Callable[..., Any]] = {}

    def sizes(self) -> list[int]:
        """The chunk lengths an epoch runs, in order (one: the whole epoch in one call)."""
        if self.steps <= WHOLE_EPOCH_STEPS:
            return [self.steps]
        full, rest = divmod(self.steps, CHUNK_STEPS)
        return [CHUNK_STEPS] * full + ([rest] if rest else [])

    def _losses_shape(self) -> tuple[int, ...]:
        return (self.members.count, self.steps) if self.members else (self.steps,)

    def _slice(self, keys: jax.Array, start: int, size: int) -> jax.Array:
        """The keys of steps [start, start + size) (of every member)."""
        return keys[:, start : start + size] if self.members else keys[start : start + size]

    def _flags(self, active) -> tuple:
        """The active flags a population's programs take first (none for a solo run)."""
        if not self.members:
            return ()
        return (self.members.abstract_flags if active is None else self.members.flags(active),)

    def compile_programs(self, state: TrainState, *data) -> None:
        """Compile every program of an epoch ahead of time (no epoch's timing holds it)."""
        flags = self._flags(None)
        if len(self.sizes()) == 1:
            self.whole = self.whole.lower(*flags, state, *data).compile()
            return
        rng, keys = jax.eval_shape(self._keys, state)
        losses = jax.ShapeDtypeStruct(self._losses_shape(), jnp.float32)
        start = jax.ShapeDtypeStruct((), jnp.int32)
        for size in set(self.sizes()):
            keys_K = jax.eval_shape(lambda k, size=size: self._slice(k, 0, size), keys)
            chunk = self._chunk.lower(*flags, state, losses, start, keys_K, *data)
            self._compiled[size] = chunk.compile()
        self._finish = self._finish.lower(*flags, state, rng, losses).compile()

    @staticmethod
    def start_copy(state: TrainState) -> TrainState:
        """A copy of the state that survives the epoch (the epoch donates its buffers)."""
        return jax.tree.map(jnp.copy, state)

    def run(
        self, state: TrainState, *data, stop: Callable[[], bool], active=None
    ) -> tuple[TrainState, jax.Array] | None:
        """`active`: a population's members that train (the others keep their state)."""
        flags = self._flags(active)
        if len(self.sizes()) == 1:
            return self.whole(*flags, state, *data)
        rng, keys = self._keys(state)
        losses = jnp.zeros(self._losses_shape(), jnp.float32)
        if self.members:
            losses = jax.device_put(losses, self.members.sharding)
        start = 0
        for size in self.sizes():
            chunk = self._compiled[size]
            keys_K = self._slice(keys, start, size)
            state, losses = chunk(*flags, state, losses, jnp.int32(start), keys_K, *data)
            losses.block_until_ready()  # the host waits here, where a signal is heard
            start += size
            if start < self.steps and stop():
                return None
        return self._finish(*flags, state, rng, losses)
