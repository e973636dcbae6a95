"""A population's members as one axis: spread over the devices, and any function of one
model turned into one of every member.

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

    def placed(self, data: TrainData) -> TrainData:
        """A group's data (built for one device) on every device the members use."""

        def place(tree):
            return jax.tree.map(
                lambda a: jax.device_put(a, self.everywhere) if isinstance(a, jax.Array) else a,
                tree,
            )

        fields = {f.name: place(getattr(data, f.name)) for f in dataclasses.fields(data)}
        return dataclasses.replace(data, **fields)

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
