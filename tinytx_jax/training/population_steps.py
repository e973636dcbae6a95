"""A population group's device programs: every member of the group in one program.

The members lie along a leading axis of the train state, spread over the devices
(`shard_map` over a `members` mesh axis); on each device its members run one after
another (`lax.map`), each as its solo run would on one device, to the last bit. (`vmap`
batches the members' matrix products instead; on a CPU that was no faster and its
rounding differs from a solo run's: docs/populations.md.)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from tinytx_jax.data.train_data import TrainData
from tinytx_jax.scoring import exact_match
from tinytx_jax.scoring.loss import make_evaluate
from tinytx_jax.training import optim
from tinytx_jax.training.chunks import ChunkedEpoch
from tinytx_jax.training.compiled import CompiledSteps, TurnCheck
from tinytx_jax.training.population import Group
from tinytx_jax.training.state import TrainState, init_train_state
from tinytx_jax.training.steps import end_epoch_update
from tinytx_jax.training.task import Task

MEMBERS = "members"


def devices_for(count: int, available: int) -> int:
    """The most devices, at most `available`, that `count` members split over evenly."""
    return max(n for n in range(1, available + 1) if count % n == 0)


@dataclasses.dataclass(frozen=True)
class Members:
    """`count` members spread evenly over the devices of `mesh` (axis `members`)."""

    count: int
    mesh: Mesh

    @classmethod
    def over_devices(cls, count: int) -> Members:
        devices = jax.devices()[: devices_for(count, jax.device_count())]
        return cls(count, Mesh(np.array(devices), (MEMBERS,)))

    @property
    def sharding(self) -> NamedSharding:
        return NamedSharding(self.mesh, PartitionSpec(MEMBERS))

    @property
    def everywhere(self) -> NamedSharding:
        return NamedSharding(self.mesh, PartitionSpec())

    def each(self, fn: Callable[..., Any], spec: str) -> Callable[..., Any]:
        """`fn` for every member. `spec` has one letter per argument, `m` for one with a
        leading member axis, `.` for one all members share; a trailing `...` shares the
        rest. Every output has a leading member axis."""

        def for_members(*args):
            letters = (
                spec[:-3] + "." * (len(args) - len(spec) + 3) if spec.endswith("...") else spec
            )
            own = [letter == "m" for letter in letters]

            def on_device(*local):
                def one(mine):
                    merged = [m if o else a for m, a, o in zip(mine, local, own, strict=True)]
                    return fn(*merged)

                return jax.lax.map(one, [a if o else None for a, o in zip(local, own, strict=True)])

            specs = tuple(PartitionSpec(MEMBERS) if o else PartitionSpec() for o in own)
            # check_vma off: the member functions are written for one device (their scans'
            # zero carries would each need marking as varying over the members).
            return jax.shard_map(
                on_device,
                mesh=self.mesh,
                in_specs=specs,
                out_specs=PartitionSpec(MEMBERS),
                check_vma=False,
            )(*args)

        return for_members


def placed_everywhere(data: TrainData, members: Members) -> TrainData:
    """The group's data (built for one device) on every device the members use."""

    def place(tree):
        return jax.tree.map(
            lambda a: jax.device_put(a, members.everywhere) if isinstance(a, jax.Array) else a,
            tree,
        )

    fields = {f.name: place(getattr(data, f.name)) for f in dataclasses.fields(data)}
    return dataclasses.replace(data, **fields)


@dataclasses.dataclass(frozen=True)
class GroupPrograms:
    """The loop's programs for a group (CompiledSteps, each over the members), its
    initial state and the per-member plateau floors."""

    steps: CompiledSteps
    initial_state: Callable[[], TrainState]
    floors: jax.Array | None  # each member's min_lr / lr, when lr differs between them
    select: Callable[..., TrainState]  # (active_K, new, old): the active members' new


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


def build_programs(task: Task, group: Group, members: Members) -> GroupPrograms:
    """Compile the group's programs ahead of time, as compile_steps does for a solo run."""
    task, tx_for, plateau = member_task(task, group)
    values = {name: jnp.asarray(group.member_values(name)) for name in group.swept}
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
        lrs = group.member_values("lr")
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

    train_epoch = ChunkedEpoch(task, members)
    train_epoch.compile_programs(state, *task.train_data(1))
    evaluate = jax.jit(members.each(make_evaluate(task.model), "m..."))
    val_loss = jax.ShapeDtypeStruct((members.count,), jnp.float32, sharding=members.sharding)
    end = jax.jit(members.each(end_epoch, "mmm" if floors is not None else "mm"), donate_argnums=0)
    end_args = (state, val_loss) + ((floors,) if floors is not None else ())
    check_turns = {}
    for name, (batch, arrays) in task.data.turn_rows.items():
        check = members.each(exact_match.make_turn_check(task.model, batch.num_turns), "m...")
        compiled = jax.jit(check).lower(state.params, *arrays).compile()
        check_turns[name] = TurnCheck(compiled, batch, arrays)
    full = task.data.full_val_chunks
    steps = CompiledSteps(
        train_epoch,
        evaluate.lower(state.params, *task.data.val_chunks).compile(),
        evaluate.lower(state.params, *full).compile() if full else None,
        end.lower(*end_args).compile(),
        check_turns,
    )
    return GroupPrograms(steps, initial_state, floors, jax.jit(select_members))


def select_members(active_K: jax.Array, new: TrainState, old: TrainState) -> TrainState:
    """`new` for the active members, `old` (frozen) for those that have stopped."""

    def pick(n, o):
        return jnp.where(active_K.reshape(-1, *([1] * (n.ndim - 1))), n, o)

    return jax.tree.map(pick, new, old)
