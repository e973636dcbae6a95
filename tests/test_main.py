"""main.py end to end in a subprocess: the fast config converges, bad input gets one line."""

import re

import pytest

from tests.conftest import run_main

LINE = re.compile(
    r"^Epoch (\d+), train_loss=\d+\.\d{4} val_loss=\d+\.\d{4} "
    r"val_acc=(\d\.\d{3}) \(n=8159\) lr=\d\.\d{2}e[-+]\d{2}$"
)


def test_fast_config_reaches_target_accuracy(tmp_path):
    result = run_main("--mode=train", "--config=configs/fast.py", f"--workdir={tmp_path}")
    assert result.returncode == 0, result.stderr
    epochs = [LINE.match(ln) for ln in result.stdout.splitlines() if ln.startswith("Epoch")]
    assert epochs and all(epochs)
    assert float(epochs[-1].group(2)) >= 0.99
    assert "Target reached" in result.stdout
    # Not a terminal: plain lines only, no progress-bar control characters.
    assert "\r" not in result.stdout + result.stderr
    assert "\x1b" not in result.stdout + result.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["--config.lr=-0.001"], "error: config.lr must be positive, got -0.001"),
        (["--config.block_size=1024"], "error: config.block_size (1024) must not exceed"),
        (["--config.epochs=0"], "error: config.epochs must be positive, got 0"),
        (["--mode=dance"], "--mode=dance"),
        (["--config.no_such_field=1"], "no_such_field"),
    ],
)
def test_bad_input_gives_one_line_without_traceback(tmp_path, args, message):
    result = run_main(*args, f"--workdir={tmp_path}", timeout=60)
    assert result.returncode != 0
    assert message in result.stderr
    assert "Traceback" not in result.stderr
