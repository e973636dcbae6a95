"""Data parallel over simulated devices matches one device; bf16 trains; bad batch is named."""

import numpy as np

from tests.conftest import run_main
from tinytx_jax.training import metrics

EIGHT_DEVICES = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
SHORT_FAST = [
    "--mode=train",
    "--config=configs/fast.py",
    "--config.epochs=2",
    "--config.target_val_acc=0",
    "--config.target_exact_match=0",
]


def losses(workdir):
    records = metrics.read_metrics(workdir / metrics.METRICS_FILE)
    return np.array([[r["train_loss"], r["val_loss"], r["val_acc"]] for r in records])


def test_eight_devices_match_one_device_for_the_same_global_batch(tmp_path):
    one = run_main(
        *SHORT_FAST,
        f"--workdir={tmp_path / 'one'}",
        env={"XLA_FLAGS": "--xla_force_host_platform_device_count=1"},
    )
    eight = run_main(*SHORT_FAST, f"--workdir={tmp_path / 'eight'}", env=EIGHT_DEVICES)
    assert one.returncode == 0 and eight.returncode == 0, one.stderr + eight.stderr
    single, sharded = losses(tmp_path / "one"), losses(tmp_path / "eight")
    assert single.shape == sharded.shape == (2, 3)
    np.testing.assert_allclose(sharded, single, rtol=2e-3)


def test_batch_not_divisible_by_devices_is_named(tmp_path):
    result = run_main(
        *SHORT_FAST, "--config.batch_size=12", f"--workdir={tmp_path}", env=EIGHT_DEVICES
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "config.batch_size (12) must be divisible by the number of devices (8)" in result.stderr


def test_bfloat16_trains_the_fast_config_to_target(tmp_path):
    result = run_main(
        "--mode=train",
        "--config=configs/fast.py",
        "--config.dtype=bfloat16",
        f"--workdir={tmp_path}",
    )
    assert result.returncode == 0, result.stderr
    assert "Target reached" in result.stdout
    assert losses(tmp_path)[-1, 2] >= 0.99
