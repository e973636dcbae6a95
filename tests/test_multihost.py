"""Two processes on localhost (CPU gloo collectives) train as one: same losses as one process."""

import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import REPO, run_main
from tests.test_parallel import losses

ONE_DEVICE = {"XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
ARGS = [
    "--mode=train",
    "--config=configs/fast.py",
    "--config.epochs=2",
    "--config.target_val_acc=0",
]


def free_port() -> int:
    try:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            return probe.getsockname()[1]
    except OSError as error:  # no loopback networking here
        pytest.skip(f"cannot bind a port on 127.0.0.1: {error}")


@pytest.mark.multihost
def test_two_processes_match_one_process(tmp_path):
    port = free_port()
    processes = [
        subprocess.Popen(
            [
                sys.executable,
                "main.py",
                *ARGS,
                f"--workdir={tmp_path / 'two'}",
                f"--coordinator_address=127.0.0.1:{port}",
                "--num_processes=2",
                f"--process_id={rank}",
            ],
            cwd=REPO,
            env={**os.environ, **ONE_DEVICE},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in (0, 1)
    ]
    outputs = [process.communicate(timeout=240) for process in processes]
    for process, (_, stderr) in zip(processes, outputs, strict=True):
        assert process.returncode == 0, stderr
    assert "Epoch 2," in outputs[0][0] and "Epoch" not in outputs[1][0]  # process 0 logs
    single = run_main(*ARGS, f"--workdir={tmp_path / 'one'}", env=ONE_DEVICE)
    assert single.returncode == 0, single.stderr
    np.testing.assert_allclose(losses(tmp_path / "two"), losses(tmp_path / "one"), rtol=2e-3)
    assert (tmp_path / "two" / "checkpoints" / "2").is_dir()
