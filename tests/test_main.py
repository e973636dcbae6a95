"""main.py end to end in a subprocess: the seed's log lines, plain output, one-line errors."""

import pytest

from tests.conftest import run_main
from tests.test_train import LINE

pytestmark = pytest.mark.e2e


def test_train_prints_the_seed_lines_as_plain_text(tmp_path):
    result = run_main(
        "--mode=train", "--config=configs/fast.py", "--config.epochs=2", f"--workdir={tmp_path}"
    )
    assert result.returncode == 0, result.stderr
    epochs = [ln for ln in result.stdout.splitlines() if ln.startswith("Epoch")]
    assert len(epochs) == 2 and all(LINE.match(ln) for ln in epochs)
    # Not a terminal: plain lines only, no progress-bar control characters.
    assert "\r" not in result.stdout + result.stderr
    assert "\x1b" not in result.stdout + result.stderr


def test_runs_from_another_directory(tmp_path):
    result = run_main("--mode=plot", f"--workdir={tmp_path}", cwd=tmp_path)
    assert result.returncode == 2 and "no metrics in" in result.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["--config.lr=-0.001"], "error: config.lr must be positive, got -0.001"),
        (["--config.block_size=1024"], "error: config.block_size (1024) must not exceed"),
        (["--config.epochs=0"], "error: config.epochs must be positive, got 0"),
        (["--mode=dance"], "--mode=dance"),
        (["--config.no_such_field=1"], "unknown config field 'no_such_field'"),
        (["--config.lr=abc"], "--config.lr=abc: could not convert string to float"),
    ],
)
def test_bad_input_gives_one_line_without_traceback(tmp_path, args, message):
    result = run_main(*args, f"--workdir={tmp_path}", timeout=60)
    assert result.returncode != 0
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
