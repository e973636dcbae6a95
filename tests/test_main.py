"""main.py end to end in a subprocess: the seed's log lines, plain output, one-line errors."""

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, main_env, run_main, short_text_run
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


HEAD_START = """
import sys
from pathlib import Path
from configs import default
from tinytx_jax import parallel
from tinytx_jax.data import token_cache
from tinytx_jax.inference import text_sample, trained
from tinytx_jax.run_config import RunConfig
from tinytx_jax.training import head_start
from tinytx_jax.training.task import build_task
parallel.enable_compile_cache(token_cache.cache_root() / "jax_cache")
config = default.get_config()
config.data_path, config.block_size, config.max_new_tokens = sys.argv[1], 16, 20
cache = Path(sys.argv[3])
if sys.argv[4] == "head_start":
    run = RunConfig.from_flat(config)
    head_start.compile_sample_early(run.use, None)(build_task(run)).join()
before = len(list(cache.iterdir()))
model = trained.load_trained(sys.argv[2], log=lambda _: None)
print(text_sample.sample(model, RunConfig.from_flat(config).use, None, print))
print("new cache entries:", len(list(cache.iterdir())) - before)
"""


@pytest.fixture(scope="module")
def short_text_workdir(tmp_path_factory) -> tuple[Path, Path]:
    """A short plain-text run trained without the compilation cache: its data and workdir."""
    directory = tmp_path_factory.mktemp("short_text")
    data = directory / "text.txt"
    data.write_text("abcd efgh\n" * 300)
    workdir = directory / "w"
    args = [*short_text_run(data, workdir), "--config.compile_cache=False"]
    assert run_main("--mode=train", *args).returncode == 0
    return data, workdir


@pytest.mark.parametrize("head_start", ["head_start", "none"])
def test_the_sample_after_training_finds_its_program_compiled_during_training(
    short_text_workdir, tmp_path, head_start
):
    data, workdir = short_text_workdir
    cache = tmp_path / "cache"
    cache.mkdir()
    result = subprocess.run(
        [sys.executable, "-c", HEAD_START, str(data), str(workdir), str(cache), head_start],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env=main_env({"JAX_COMPILATION_CACHE_DIR": str(cache)}),
    )
    assert result.returncode == 0, result.stderr
    new = int(result.stdout.split("new cache entries:")[1])
    assert (new == 0) if head_start == "head_start" else (new > 0)
