"""The training loop's device programs, compiled before the first epoch: an epoch (in
chunks), validation, the end-of-epoch update and the exact-match checks."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from tinytx_jax import parallel
from tinytx_jax.scoring import exact_match
from tinytx_jax.scoring.loss import make_evaluate
from tinytx_jax.training import optim
from tinytx_jax.training.chunks import ChunkedEpoch
from tinytx_jax.training.member_axis import Members
from tinytx_jax.training.state import TrainState
from tinytx_jax.training.steps import make_end_epoch
from tinytx_jax.training.task import Task


@dataclasses.dataclass(frozen=True)
class CompiledSteps:
    """The loop's device functions, compiled before the first epoch."""

    train_epoch: ChunkedEpoch
    evaluate: Callable[..., tuple[jax.Array, jax.Array]]
    evaluate_full: Callable[..., tuple[jax.Array, jax.Array]] | None  # see Task.full_val_chunks
    end_epoch: Callable[..., tuple[TrainState, jax.Array]]
    check_turns: dict[str, TurnCheck]


@dataclasses.dataclass(frozen=True)
class TurnCheck:
    """A compiled exact-match check, the turns it scores, and their rows on the devices."""

    check: Callable[..., jax.Array]
    batch: exact_match.TurnBatch
    arrays: tuple[jax.Array, ...]


def compile_steps(task: Task, state: TrainState) -> CompiledSteps:
    """A solo run's programs, compiled ahead of time so that no epoch's timing includes
    compilation."""
    end_epoch = make_end_epoch(
        task.plateau, task.run.optim.plateau_enabled, task.schedule, optim.PLATEAU_MIN_DELTA
    )
    val_loss = jax.ShapeDtypeStruct((), jnp.float32, sharding=parallel.replicated(task.mesh))
    end_epoch = end_epoch.lower(state, val_loss).compile()
    return compile_programs(task, state, end_epoch)


def compile_programs(
    task: Task,
    state: TrainState,
    end_epoch: Callable[..., tuple[TrainState, jax.Array]],
    members: Members | None = None,
) -> CompiledSteps:
    """The epoch, validation and exact-match programs, compiled alike for a solo run and
    for a population's group (`members`: each program runs once per member);
    `end_epoch` comes compiled."""

    def per_member(fn: Callable[..., jax.Array]) -> Callable[..., jax.Array]:
        return fn if members is None else jax.jit(members.each(fn, "m..."))

    train_epoch = ChunkedEpoch(task, members)
    train_epoch.compile_programs(state, *task.train_data(1))
    evaluate = per_member(make_evaluate(task.model))
    check_turns = {}
    for name, (batch, arrays) in task.data.turn_rows.items():
        check = per_member(exact_match.make_turn_check(task.model, batch.num_turns))
        check_turns[name] = TurnCheck(check.lower(state.params, *arrays).compile(), batch, arrays)
    full = task.data.full_val_chunks
    return CompiledSteps(
        train_epoch,
        evaluate.lower(state.params, *task.data.val_chunks).compile(),
        evaluate.lower(state.params, *full).compile() if full else None,
        end_epoch,
        check_turns,
    )


def measure_exact_match(steps: CompiledSteps, params) -> dict[str, float | list[float]]:
    """The fraction of turns whose greedy reply comes back exactly, per side of the split;
    for a population's params (a leading member axis), a fraction per member."""
    fractions = {}
    for name, turns in steps.check_turns.items():
        correct = np.asarray(turns.check(params, *turns.arrays))
        rows = correct.reshape(-1, correct.shape[-1])
        each = [exact_match.count_matches(row, turns.batch) / turns.batch.num_turns for row in rows]
        fractions[name] = each if correct.ndim > 1 else each[0]
    return fractions
