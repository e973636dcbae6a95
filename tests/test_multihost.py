"""Two processes on localhost (CPU gloo collectives) train as one: same losses as one process,
one set-aside of the old run's files, and a signal to one process stops both at one epoch."""

import signal
import socket
import subprocess
import time

import numpy as np
import pytest

from tests.conftest import REPO, main_command, main_env, run_main
from tests.test_parallel import losses

ONE_DEVICE = {"XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
ARGS = [
    "--mode=train",
    "--config=configs/fast.py",
    "--config.target_val_acc=0",
    "--config.target_exact_match=0",
]


def free_port() -> int:
    try:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            return probe.getsockname()[1]
    except OSError as error:  # no loopback networking here
        pytest.skip(f"cannot bind a port on 127.0.0.1: {error}")


@pytest.mark.e2e
@pytest.mark.multihost
def test_two_processes_train_as_one_and_stop_together(tmp_path):
    workdir = tmp_path / "two"
    workdir.mkdir()
    (workdir / "metrics.jsonl").write_text("an earlier run's log\n")
    port = free_port()
    processes = [
        subprocess.Popen(
            [
                *main_command(main_env(ONE_DEVICE)),
                *ARGS,
                "--config.epochs=400",
                "--config.checkpoint_every=1000",
                "--config.resume=False",
                f"--workdir={workdir}",
                f"--coordinator_address=127.0.0.1:{port}",
                "--num_processes=2",
                f"--process_id={rank}",
            ],
            cwd=REPO,
            env=main_env(ONE_DEVICE),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in (0, 1)
    ]
    metrics_file = workdir / "metrics.jsonl"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if metrics_file.exists() and len(metrics_file.read_text().splitlines()) >= 3:
            break
        time.sleep(0.1)
    processes[1].send_signal(signal.SIGINT)  # only process 1 is interrupted
    outputs = [process.communicate(timeout=120) for process in processes]
    for process, (_, stderr) in zip(processes, outputs, strict=True):
        assert process.returncode == 130, stderr
    line = next(ln for ln in outputs[0][0].splitlines() if ln.startswith("Interrupted at epoch"))
    epoch = int(line.split()[3].rstrip(":"))
    assert (workdir / "checkpoints" / str(epoch)).is_dir()
    assert "Epoch 2," in outputs[0][0] and "Epoch" not in outputs[1][0]  # process 0 logs
    replaced = list(workdir.glob("replaced-*"))
    assert len(replaced) == 1 and (replaced[0] / "metrics.jsonl").read_text().startswith("an")

    single = run_main(*ARGS, "--config.epochs=2", f"--workdir={tmp_path / 'one'}", env=ONE_DEVICE)
    assert single.returncode == 0, single.stderr
    np.testing.assert_allclose(losses(workdir)[:2], losses(tmp_path / "one"), rtol=2e-3)
