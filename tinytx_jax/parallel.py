"""Data parallelism with `jax.sharding`: one mesh axis, `data`, over every device.

The batch of windows is sharded along `data`; parameters, optimizer state and the token
arrays are replicated. The same jitted epoch runs on one device or many: XLA inserts the
gradient all-reduce. A later `fsdp` axis would shard the parameters over a second mesh
dimension without touching the training loop.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from tinytx_jax.configuration import ConfigError

DATA_AXIS = "data"
T = TypeVar("T")


def make_mesh(devices: int | None = None) -> Mesh:
    """All devices (of all processes), or the first `devices`, along the `data` axis; XLA
    picks the collectives."""
    count = devices or jax.device_count()
    return jax.make_mesh(
        (count,), (DATA_AXIS,), axis_types=(AxisType.Auto,), devices=jax.devices()[:count]
    )


def check_batch_size(batch_size: int, mesh: Mesh) -> None:
    devices = mesh.devices.size
    if batch_size % devices:
        raise ConfigError(
            f"config.batch_size ({batch_size}) must be divisible by the number of devices "
            f"({devices}): use a multiple of {devices}"
        )


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def rows_sharded(mesh: Mesh, axis: int = 0) -> NamedSharding:
    """Rows (a batch's windows, or an evaluation array's at `axis`) split over the devices."""
    return NamedSharding(mesh, PartitionSpec(*([None] * axis), DATA_AXIS))


def to_global(host_array: np.ndarray, sharding: NamedSharding) -> jax.Array:
    """A global array from data every process holds in full (works multi-host)."""
    return jax.make_array_from_callback(host_array.shape, sharding, lambda index: host_array[index])


def cpu_device_count(batch_size: int, requested: int) -> int:
    """How many XLA devices a CPU run splits into: `requested`, or (0) the most of this
    process's cores that divide the batch. XLA:CPU runs a small model's matmuls on barely
    more than one core; two devices on two cores each take half the batch
    (docs/measured.md)."""
    if requested:
        return requested
    cores = len(os.sched_getaffinity(0))
    return max(d for d in range(1, cores + 1) if batch_size % d == 0)


def use_cpu_devices(count: int) -> None:
    """Split the CPU into `count` devices; must run before JAX first touches a backend."""
    jax.config.update("jax_num_cpu_devices", count)


def initialize_distributed(coordinator: str, num_processes: int, process_id: int) -> None:
    """Join a multi-process run: explicit coordinates, or auto-detected ones when empty.

    On CPU the collectives go through gloo (TCP), so several processes on one machine or
    on several hosts train as one.
    """
    if jax.config.jax_platforms in (None, "", "cpu"):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if coordinator and not re.fullmatch(r"[^:\s]+:\d{1,5}", coordinator):
        raise ConfigError(
            f"--coordinator_address={coordinator!r} is not HOST:PORT (e.g. 10.0.0.1:12345)"
        )
    try:
        if coordinator:
            jax.distributed.initialize(coordinator, num_processes, process_id)
        else:
            jax.distributed.initialize()
    except (RuntimeError, ValueError) as error:
        message = " ".join(str(error).split())[:200]
        raise ConfigError(
            f"cannot join the multi-process run ({message}): check --coordinator_address, "
            "--num_processes and --process_id, or use --distributed on a cluster JAX knows"
        ) from None


def is_primary() -> bool:
    """Process 0: the one that logs and writes run files beside the collective checkpoints."""
    return jax.process_index() == 0


def primary_then_all(name: str, action: Callable[[], T]) -> T | None:
    """Run `action` on process 0 only (e.g. moving shared files), then wait for all."""
    result = action() if is_primary() else None
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)
    return result


def agreed_signal(received: int | None) -> int | None:
    """The signal any process received (the largest number), so that every process saves
    and stops after the same epoch; one process stopping alone would hang the others."""
    if jax.process_count() == 1:
        return received
    # A host sync: one small all-gather per epoch, only in multi-process runs.
    gathered = multihost_utils.process_allgather(np.int32(received or 0))
    return int(np.max(gathered)) or None


def enable_compile_cache(default_dir: Path) -> None:
    """Persist compiled XLA programs in `default_dir` (the project's passes
    `$TINYTX_CACHE_DIR/jax_cache`, by default `~/.cache/tinytx_jax/jax_cache`), or in
    $JAX_COMPILATION_CACHE_DIR when set: any later run of the same shapes, in any workdir,
    skips most compiling."""
    if not jax.config.jax_compilation_cache_dir:
        cache = default_dir.expanduser().absolute()
        try:
            cache.mkdir(parents=True, exist_ok=True)
        except OSError:
            return  # an unwritable cache: none, rather than a warning per compilation
        if not os.access(cache, os.W_OK):
            return
        jax.config.update("jax_compilation_cache_dir", str(cache))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
