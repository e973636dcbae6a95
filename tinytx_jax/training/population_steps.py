"""A population group's device programs: every member of the group in one program.

The members lie along a leading axis of the train state, spread over the devices
(`shard_map` over a `members` mesh axis). On each device its members run one after
another (`lax.map`), each as its solo run would on one device, to the last bit; or
batched (`vmap`), which pays on an accelerator, while on a CPU it was slower and its
rounding differs from a solo run's (docs/populations.md). `config.member_batching`
chooses; `auto` takes vmap on GPU and TPU, map on CPU.
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
from tinytx_jax.training import optim
from tinytx_jax.training.chunks import ChunkedEpoch
from tinytx_jax.training.compiled import CompiledSteps, compile_programs
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
    batched: bool  # vmap over a device's members, not lax.map

    @classmethod
    def over_devices(cls, count: int, batching: str = "map") -> Members:
        devices = jax.devices()[: devices_for(count, jax.device_count())]
        if batching == "auto":
            batching = "map" if jax.default_backend() == "cpu" else "vmap"
        return cls(count, Mesh(np.array(devices), (MEMBERS,)), batching == "vmap")

    @property
    def sharding(self) -> NamedSharding:
        return NamedSharding(self.mesh, PartitionSpec(MEMBERS))

    @property
    def everywhere(self) -> NamedSharding:
        return NamedSharding(self.mesh, PartitionSpec())

    def each(self, fn: Callable[..., Any], spec: str, gated: bool = False) -> Callable[..., Any]:
        """`fn` for every member. `spec` has one letter per argument, `m` for one with a
        leading member axis, `.` for one all members share; a trailing `...` shares the
        rest. Every output has a leading member axis. `gated`: the first argument is each
        member's `active` flag, and an inactive member skips `fn` (its first argument, the
        state, comes back as it was; the other outputs are zeros)."""
        if gated:
            spec = "m" + spec

        def for_members(*args):
            letters = (
                spec[:-3] + "." * (len(args) - len(spec) + 3) if spec.endswith("...") else spec
            )
            per_member = [letter == "m" for letter in letters]

            def on_device(*local):
                def one(mine):
                    merged = [
                        m if p else a for m, a, p in zip(mine, local, per_member, strict=True)
                    ]
                    if not gated:
                        return fn(*merged)
                    active, *given = merged
                    return jax.lax.cond(active, fn, _skipped(fn), *given)

                own = [a if p else None for a, p in zip(local, per_member, strict=True)]
                return jax.vmap(one)(own) if self.batched else jax.lax.map(one, own)

            specs = tuple(PartitionSpec(MEMBERS) if p else PartitionSpec() for p in per_member)
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

    def flags(self, active: np.ndarray) -> jax.Array:
        """Each member's `active` flag, placed as the members are."""
        return jax.device_put(np.asarray(active, bool), self.sharding)

    @property
    def abstract_flags(self) -> jax.ShapeDtypeStruct:
        return jax.ShapeDtypeStruct((self.count,), jnp.bool_, sharding=self.sharding)


def _skipped(fn: Callable[..., Any]) -> Callable[..., Any]:
    """What a stopped member gets instead of `fn`: its state back, zeros for the rest."""

    def skip(state, *rest):
        outputs = jax.eval_shape(fn, state, *rest)
        zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), outputs[1:])
        return (state, *zeros)

    return skip


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
    members = Members.over_devices(len(group.members), task.run.population.member_batching)
    task = dataclasses.replace(task, data=placed_everywhere(task.data, members))
    task, tx_for, plateau = member_task(task, group)
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
    steps = compile_programs(
        task,
        state,
        ChunkedEpoch(task, members),
        lambda fn: jax.jit(members.each(fn, "m...")),
        end.lower(*end_args).compile(),
    )
    return GroupPrograms(task, steps, members, initial_state, floors)
