"""Where an epoch's training windows come from: the whole split on the device, or, when it
does not fit there, a fresh pack of windows gathered on the host for every epoch.

On the device (the default wherever it fits, and always on a CPU, whose device memory is
the host's), each step slices its windows out of the split by itself. Fed from the host,
the split stays in host memory; before each epoch the host draws `steps x batch` windows
(anywhere, or at conversation starts) with a generator seeded by (seed, epoch), so a
resumed run draws the same, and the device samples its batches among them.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

from tinytx_jax import parallel

DEVICE_SHARE = 0.25  # at most this share of a device's memory goes to the training split

TrainData = tuple[jax.Array, jax.Array | None, jax.Array | None]


def fits_on_devices(nbytes: int, devices: list[jax.Device]) -> bool:
    """Whether `nbytes`, replicated, leaves room on every device for the model's work
    (this process's devices: the others' match them)."""
    for device in (d for d in devices if d.process_index == jax.process_index()):
        stats = device.memory_stats()  # None on a CPU
        if stats and nbytes > DEVICE_SHARE * stats.get("bytes_limit", float("inf")):
            return False
    return True


def from_host(feed: str, nbytes: int, devices: list[jax.Device]) -> bool:
    """`config.feed` resolved: auto feeds from the host only what does not fit the devices."""
    return feed == "host" or (feed == "auto" and not fits_on_devices(nbytes, devices))


@dataclasses.dataclass(frozen=True)
class HostFeed:
    """The training split in host memory, and how many windows an epoch draws from it."""

    tokens: np.ndarray  # [N] uint16
    weights: np.ndarray | None  # [N] float32 loss weights, or None
    starts: np.ndarray | None  # [S] allowed window starts, or None: anywhere
    windows: int  # per epoch: steps x batch
    block_size: int
    seed: int
    mesh: jax.sharding.Mesh

    def pack(self, epoch: int) -> TrainData:
        """Epoch `epoch`'s windows, laid end to end, with the start of each."""
        rng = np.random.default_rng([self.seed, epoch])
        width = self.block_size + 1
        if self.starts is None:
            starts = rng.integers(0, len(self.tokens) - self.block_size, self.windows)
        else:
            starts = self.starts[rng.integers(0, len(self.starts), self.windows)]
        index = starts[:, None] + np.arange(width)[None, :]
        on_all = parallel.replicated(self.mesh)
        weights = None if self.weights is None else self.weights[index].reshape(-1)
        return (
            parallel.to_global(self.tokens[index].reshape(-1), on_all),
            None if weights is None else parallel.to_global(weights, on_all),
            parallel.to_global(np.arange(self.windows, dtype=np.int32) * width, on_all),
        )
