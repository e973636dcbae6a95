"""A population group's device programs: every member of the group in one program, its
data placed where the members are, each member's optimiser values in its state
(member_axis.py spreads the members and runs a function for each)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from tinytx_jax.training import optim
from tinytx_jax.training.compiled import CompiledSteps, compile_programs
from tinytx_jax.training.member_axis import Members
from tinytx_jax.training.population import Group
from tinytx_jax.training.state import TrainState, init_train_state
from tinytx_jax.training.steps import end_epoch_update
from tinytx_jax.training.task import Task


@dataclasses.dataclass(frozen=True)
class GroupPrograms:
    """The loop's programs for a group (CompiledSteps, each over the members), its
    members, initial state and per-member plateau floors."""

    task: Task  # the group's, its data on the members' devices, their optimiser
    steps: CompiledSteps
    members: Members
    initial_state: Callable[[], TrainState]
    floors: jax.Array | None  # each member's min_lr / lr, when lr differs between them


def member_task(task: Task, group: Group) -> tuple[Task, Callable[[dict], Any], Any]:
    """The group's task with the optimiser its members share (their values in its state),
    the chain for a member's values, and the plateau transform."""
    if not group.swept:
        return task, (lambda values: task.tx), task.plateau
    tx_for, floorless = optim.make_member_optimizers(
        task.run.optim, task.run.train.total_steps, group.swept
    )
    plateau = floorless if "lr" in group.swept else task.plateau
    base = {name: getattr(task.run.optim, name) for name in group.swept}
    return dataclasses.replace(task, tx=tx_for(base), plateau=plateau), tx_for, plateau


def build_programs(task: Task, group: Group) -> GroupPrograms:
    """Spread the group's members over the devices, place its data there, and compile its
    programs ahead of time, as a solo run's are (`compiled.compile_programs`)."""
    task, tx_for, plateau = member_task(task, group)
    members = Members.over_devices(len(group.members), task.run.population.member_batching)
    task = dataclasses.replace(task, data=members.placed(task.data))
    values = {name: jnp.asarray(listed) for name, listed in group.swept.items()}
    seeds = jnp.asarray([member.seed for member in group.members], jnp.int32)
    init = jax.jit(
        members.each(lambda seed, v: init_train_state(task.model, tx_for(v), plateau, seed), "mm"),
        out_shardings=members.sharding,
    )

    def initial_state() -> TrainState:
        return init(seeds, values)

    state = jax.eval_shape(initial_state)
    state = jax.tree.map(
        lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=members.sharding), state
    )
    floors = None
    if "lr" in group.swept:
        lrs = group.swept["lr"]
        floors = jax.device_put(
            np.asarray([task.run.optim.min_lr / lr for lr in lrs], np.float32), members.sharding
        )
    run = task.run

    def end_epoch(state: TrainState, val_loss: jax.Array, floor=None):
        swept = state.opt_state.hyperparams if group.swept else {}
        schedule = optim.make_schedule(
            run.optim, run.train.total_steps, swept.get("lr"), swept.get("warmup_steps")
        )
        enabled = run.optim.plateau_enabled
        return end_epoch_update(
            state, val_loss, plateau, enabled, schedule, optim.PLATEAU_MIN_DELTA, floor
        )

    spec = "mmm" if floors is not None else "mm"
    end = jax.jit(members.each(end_epoch, spec, gated=True), donate_argnums=1)
    val_loss = jax.ShapeDtypeStruct((members.count,), jnp.float32, sharding=members.sharding)
    end_args = (members.abstract_flags, state, val_loss) + ((floors,) if floors is not None else ())
    steps = compile_programs(task, state, end.lower(*end_args).compile(), members)
    return GroupPrograms(task, steps, members, initial_state, floors)
