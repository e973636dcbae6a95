"""Refuse up front a model that cannot train in this machine's memory, in one line."""

from __future__ import annotations

from tinytx_jax.configuration import ConfigError
from tinytx_jax.run_config import RunConfig


def training_bytes(run: RunConfig, vocab_size: int = 256, members: int = 1) -> tuple[int, int]:
    """A lower bound on the memory training needs, and the parameter count: float32
    weights, gradients and two Adam moments (of every member of a population), plus one
    step's activations (a device's members train one after another)."""
    model, batch = run.model, run.train.batch_size
    d, layers, max_len = model.d_model, model.n_layers, model.max_len
    per_layer = 4 * d * d + (8 * d * d if model.mlp else 0)
    params = vocab_size * d * (1 if model.tie_embeddings else 2)
    params += max_len * d if model.position == "learned" else 0
    params += layers * per_layer
    block = run.data.block_size or max_len
    activations = layers * (batch * block * d * 16 + batch * model.n_heads * block * block * 2)
    return 16 * params * members + 4 * activations, params


def available_bytes() -> int | None:
    """Memory the system can still give (MemAvailable), or None where it cannot say."""
    try:
        for line in open("/proc/meminfo", encoding="ascii"):  # noqa: SIM115
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def check_fits_in_memory(run: RunConfig, members: int = 1) -> None:
    """Refuse up front a model (or a population of `members` of it) that cannot train in
    this machine's memory (on a CPU, whose device memory is the host's), rather than hang
    allocating it."""
    needed, params = training_bytes(run, members=members)
    available = available_bytes()
    if available is not None and needed > available:
        what = f"{members} members of the model need" if members > 1 else "the model needs"
        fewer = "fewer members (config.seeds, config.sweep) or " if members > 1 else ""
        raise ConfigError(
            f"{what} at least {needed / 1e9:,.1f} GB to train ({params:,} parameters each: "
            f"float32 weights, gradients and Adam moments, and activations), more than the "
            f"{available / 1e9:,.1f} GB available: train {fewer}lower d_model, n_layers, "
            "max_len or batch_size"
        )
