"""Train-step speed: ms per step after compile (median over epochs) and model FLOPs.

    python -m benchmarks.train_speed [--config=configs/default.py] [--epochs=8]

Each timed call is one whole jitted epoch (`steps_per_epoch` scanned steps), exactly what
training runs; the per-step figure is that call's time divided by its steps. For the
"one core" figure of the issue, pin the process: `taskset -c 0 python -m benchmarks.train_speed`.
"""

from __future__ import annotations

import time

import jax
import ml_collections
import numpy as np
from absl import app, flags, logging
from ml_collections import config_flags

from tinytx_jax import run_config
from tinytx_jax.model.config import ModelConfig
from tinytx_jax.training.task import build_task

_CONFIG = config_flags.DEFINE_config_file("config", "configs/default.py", "Config to time.")
_EPOCHS = flags.DEFINE_integer("epochs", 8, "Timed epochs after the compile call.")


def model_flops_per_step(cfg: ModelConfig, batch_size: int, length: int) -> int:
    """Forward + backward matmul FLOPs (3x forward), counting the full attention square."""
    d = cfg.d_model
    per_position = cfg.n_layers * (8 * d * d + 4 * length * d) + 2 * d * cfg.vocab_size
    if cfg.mlp:
        per_position += cfg.n_layers * 4 * cfg.mlp_ratio * d * d
    return 3 * batch_size * length * per_position


def measure_train_speed(config: ml_collections.ConfigDict, epochs: int) -> dict:
    """Compile time, and ms/step over `epochs` timed epoch calls after it."""
    task = build_task(run_config.RunConfig.from_flat(config))
    train, block_size = task.run.train, task.run.data.block_size  # block_size resolved
    state = task.initial_state(train.seed)
    epoch_fn = task.make_train_epoch(train.steps_per_epoch)
    start = time.perf_counter()
    compiled = epoch_fn.lower(state, *task.train_data(1)).compile()
    compile_s = time.perf_counter() - start
    state, loss = compiled(state, *task.train_data(1))
    loss.block_until_ready()

    step_ms = []
    for _ in range(epochs):
        start = time.perf_counter()
        state, loss = compiled(state, *task.train_data(1))
        loss.block_until_ready()
        step_ms.append((time.perf_counter() - start) * 1e3 / train.steps_per_epoch)
    median_ms = float(np.median(step_ms))
    flops = model_flops_per_step(task.model.config, train.batch_size, block_size)
    return {
        "batch_size": train.batch_size,
        "block_size": block_size,
        "compile_s": compile_s,
        "ms_per_step": median_ms,
        "ms_per_step_min": min(step_ms),
        "ms_per_step_max": max(step_ms),
        "tokens_per_s": train.batch_size * block_size / (median_ms / 1e3),
        "model_flops_per_step": flops,
        "achieved_gflops": flops / (median_ms / 1e3) / 1e9,
    }


def main(argv: list[str]) -> None:
    del argv
    logging.set_verbosity(logging.ERROR)
    config = _CONFIG.value
    result = measure_train_speed(config, _EPOCHS.value)
    device = jax.devices()[0]
    print(
        f"device: {device.device_kind} ({device.platform}), "
        f"batch {result['batch_size']} x block {result['block_size']}"
    )
    print(f"compile: {result['compile_s']:.2f} s")
    print(
        f"ms/step: median {result['ms_per_step']:.3f}  min {result['ms_per_step_min']:.3f}  "
        f"max {result['ms_per_step_max']:.3f}  ({_EPOCHS.value} epochs of "
        f"{config.steps_per_epoch} steps)"
    )
    print(f"tokens/s: {result['tokens_per_s']:,.0f}")
    print(
        f"model FLOPs/step: {result['model_flops_per_step'] / 1e6:.1f} M  ->  "
        f"{result['achieved_gflops']:.1f} GFLOP/s"
    )


if __name__ == "__main__":
    app.run(main)
