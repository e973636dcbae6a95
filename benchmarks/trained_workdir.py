"""A workdir holding a trained chat model, for the benchmarks that need one."""

from __future__ import annotations

import tempfile

from configs import fast
from tinytx_jax.checkpoints.store import CheckpointStore
from tinytx_jax.training import train


def ensure_checkpoint(workdir: str | None) -> str:
    """A workdir with a checkpoint: the given one, or a temp dir trained with configs/fast.py."""
    workdir = workdir or tempfile.mkdtemp(prefix="tinytx_chat_bench_")
    if not CheckpointStore(workdir).steps():
        print(f"training configs/fast.py into {workdir} ...")
        train.train_and_evaluate(fast.get_config(), workdir, log=lambda _: None)
    return workdir
