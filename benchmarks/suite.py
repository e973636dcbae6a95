"""Every benchmark in one command; prints a table and writes a JSON file.

    python -m benchmarks.suite [--out=runs/benchmarks/results_cpu.json]

Train speed (seed config, batch 8, batch 32) with model FLOPs and the fraction of a
matmul peak measured here (MFU), compile time, time to val_acc >= 0.99 for the default
and fast configs, chat latency, peak memory. Runs unchanged on a GPU or TPU.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
from absl import app, flags, logging

from benchmarks.chat_latency import measure_chat, median_ms
from benchmarks.machine import cpu_model
from benchmarks.train_speed import measure_train_speed
from configs import default, fast
from tinytx_jax.training import train

_OUT = flags.DEFINE_string(
    "out", None, "JSON output (default: runs/benchmarks/results_<platform>.json)."
)


def matmul_peak_gflops() -> dict:
    """The best float32 matmul rate over a few square sizes: the MFU denominator."""
    best = {"gflops": 0.0, "n": 0}
    for n in (256, 512, 1024, 2048):
        a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
        matmul = jax.jit(lambda x: x @ x)
        matmul(a).block_until_ready()
        ms = median_ms(lambda m=matmul, x=a: m(x).block_until_ready(), 10)
        gflops = 2 * n**3 / (ms / 1e3) / 1e9
        if gflops > best["gflops"]:
            best = {"gflops": gflops, "n": n}
    return best


def time_to_target(config, workdir: str) -> dict:
    """Whole-run wall time (compile included) until val_acc >= 0.99."""
    config.target_val_acc = 0.99
    start = time.perf_counter()
    _, history = train.train_and_evaluate(config, workdir, log=lambda _: None)
    return {
        "seconds": time.perf_counter() - start,
        "epoch": history[-1].epoch,
        "steps": history[-1].epoch * config.steps_per_epoch,
        "val_acc": history[-1].val_acc,
    }


def main(argv: list[str]) -> None:
    del argv
    logging.set_verbosity(logging.ERROR)
    device = jax.devices()[0]
    results = {
        "machine": {
            "platform": device.platform,
            "device_kind": device.device_kind,
            "devices": jax.device_count(),
            "host_cpus": os.cpu_count(),
            "cpu": cpu_model(),
            "python": platform.python_version(),
            "jax": jax.__version__,
        },
        "matmul_peak": matmul_peak_gflops(),
        "train_speed": [],
    }
    peak = results["matmul_peak"]["gflops"]
    for batch_size, steps in ((1, 200), (8, 50), (32, 25)):
        config = default.get_config()
        config.batch_size, config.steps_per_epoch = batch_size, steps
        row = measure_train_speed(config, flags.FLAGS.epochs)  # --epochs, from train_speed
        row["mfu"] = row["achieved_gflops"] / peak
        results["train_speed"].append(row)

    with tempfile.TemporaryDirectory() as scratch:
        fast_dir = os.path.join(scratch, "fast")
        results["time_to_099"] = {
            "default": time_to_target(default.get_config(), os.path.join(scratch, "default")),
            "fast": time_to_target(fast.get_config(), fast_dir),
        }
        results["chat"] = measure_chat(fast_dir, repeats=50)
    results["peak_memory"] = {
        "host_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "device_peak_mb": (device.memory_stats() or {}).get("peak_bytes_in_use", 0) / 2**20,
    }

    out = Path(_OUT.value or f"runs/benchmarks/results_{device.platform}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w") as file:
        json.dump(results, file, indent=2)
    print_table(results)
    print(f"wrote {out}")


def print_table(results: dict) -> None:
    machine = results["machine"]
    print(
        f"machine: {machine['device_kind']} ({machine['platform']}) x{machine['devices']}, "
        f"{machine['host_cpus']} host CPUs, jax {machine['jax']}\nCPU: {machine['cpu']}"
    )
    print(
        f"matmul peak: {results['matmul_peak']['gflops']:.1f} GFLOP/s "
        f"(float32, n={results['matmul_peak']['n']})"
    )
    print(
        f"{'batch':>6} {'ms/step':>9} {'tokens/s':>11} {'MFLOP/step':>11} {'GFLOP/s':>8} "
        f"{'MFU':>6} {'compile s':>10}"
    )
    for row in results["train_speed"]:
        print(
            f"{row['batch_size']:>6} {row['ms_per_step']:>9.3f} {row['tokens_per_s']:>11,.0f} "
            f"{row['model_flops_per_step'] / 1e6:>11.1f} {row['achieved_gflops']:>8.1f} "
            f"{row['mfu']:>6.1%} {row['compile_s']:>10.2f}"
        )
    for name, row in results["time_to_099"].items():
        print(
            f"time to val_acc >= 0.99, {name} config: {row['seconds']:.1f} s "
            f"(epoch {row['epoch']}, {row['steps']} steps)"
        )
    chat = results["chat"]
    replies = ", ".join(f"{u!r} {r['ms']:.2f} ms" for u, r in chat["replies"].items())
    print(f"chat reply after compile: {replies}")
    print(
        f"200-character reply: {chat['long_reply_ms']:.2f} ms "
        f"(the seed's way: {chat['long_reply_uncached_ms']:.0f} ms); "
        f"start to 'You> ': {chat['seconds_to_prompt']:.2f} s"
    )
    memory = results["peak_memory"]
    print(
        f"peak memory: host RSS {memory['host_rss_mb']:.0f} MB, "
        f"device {memory['device_peak_mb']:.0f} MB"
    )


if __name__ == "__main__":
    app.run(main)
