"""Shared helpers: small configs, a subprocess runner for main.py, one fast-config run.

Two tiers: in-process unit tests, and end-to-end tests marked `e2e` that start main.py
(`pytest -m "not e2e"` runs the first tier alone). All of them share one persistent XLA
compilation cache, so a shape compiled once is not compiled again by a later test or
subprocess.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import jax
import ml_collections
import pytest

from configs import default, fast
from tinytx_jax.checkpoints.store import write_digests
from tinytx_jax.serving import openai_api
from tinytx_jax.text import user_text
from tinytx_jax.training import train

REPO = Path(__file__).resolve().parent.parent
COMPILE_CACHE = str(Path(tempfile.gettempdir()) / "tinytx_test_jax_cache")  # shared by workers
SUBPROCESS_ENV = {
    "JAX_COMPILATION_CACHE_DIR": COMPILE_CACHE,
    "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
    "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
}

# Encoded-text caches of the tests' files stay out of the home directory (subprocesses too).
os.environ.setdefault("TINYTX_CACHE_DIR", str(Path(tempfile.gettempdir()) / "tinytx_test_tokens"))
jax.config.update("jax_numpy_rank_promotion", "raise")  # no silent broadcasting in the model
jax.config.update("jax_compilation_cache_dir", COMPILE_CACHE)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def run_main(
    *args: str,
    stdin: str | None = None,
    timeout: float = 240,
    env: dict | None = None,
    cwd: Path = REPO,
) -> subprocess.CompletedProcess:
    """Run `python REPO/main.py ARGS` (from the repository root by default), capturing output."""
    full_env = main_env(env)
    return subprocess.run(
        [*main_command(full_env), *args],
        cwd=cwd,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
    )


def main_command(env: dict, forked: bool = True) -> list[str]:
    """The command that runs main.py with `env`: a client of this worker's zygote
    (tests/main_zygote.py: main.py forked from a process that has already imported it)
    when `env` lets it, else a fresh interpreter (also when not `forked`: a test of the
    process's own pid, or of the moments of its start-up)."""
    if forked and ZYGOTE.fits(env):
        return [sys.executable, "-S", str(REPO / "tests" / "zygote_client.py"), ZYGOTE.socket()]
    return [sys.executable, str(REPO / "main.py")]


class Zygote:
    """This worker's `tests.main_zygote` process, started at its first use."""

    # What the interpreter or JAX reads at import time: a run that changes one of these
    # needs an interpreter of its own.
    READ_AT_IMPORT = ("JAX_", "PYTHON", "TF_", "LANG", "LC_")

    def __init__(self):
        self.process: subprocess.Popen | None = None
        self.socket_path = ""
        self.env: dict | None = None  # the zygote's, once started

    def fits(self, env: dict) -> bool:
        if os.environ.get("TINYTX_TEST_NO_ZYGOTE"):
            return False
        own = main_env() if self.env is None else self.env
        keys = {k for k in {*env, *own} if k.startswith(self.READ_AT_IMPORT)}
        return all(env.get(k) == own.get(k) for k in keys)

    def socket(self) -> str:
        """The zygote's socket path; the zygote is started on first use."""
        if self.process is None:
            self.socket_path = tempfile.mktemp(prefix="tinytx_zygote_", suffix=".sock")
            self.env = main_env()
            self.process = subprocess.Popen(
                [sys.executable, "-m", "tests.main_zygote", self.socket_path],
                cwd=REPO,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                text=True,
                env=self.env,
            )
            assert self.process.stdout.readline().strip() == "ready", "no zygote"
        return self.socket_path

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            Path(self.socket_path).unlink(missing_ok=True)


ZYGOTE = Zygote()
atexit.register(ZYGOTE.stop)


def short_text_run(data: Path, workdir: Path) -> list[str]:
    """main.py flags for five steps on a small text file, then a sample of 20 characters."""
    return [
        f"--config.data_path={data}",
        "--config.block_size=16",
        "--config.epochs=1",
        "--config.steps_per_epoch=5",
        "--config.max_new_tokens=20",
        f"--workdir={workdir}",
    ]


def main_env(extra: dict | None = None) -> dict:
    """The environment of a main.py subprocess: the shared compile cache, rank checks on."""
    return {**os.environ, **SUBPROCESS_ENV, "JAX_NUMPY_RANK_PROMOTION": "raise", **(extra or {})}


# The quick tier (`pytest -m quick`, under a minute): these modules' tests of pure functions
# and short in-process steps, except those that need a trained run.
QUICK_MODULES = {
    "test_data",
    "test_golden",
    "test_known_questions",
    "test_model",
    "test_openai_api",
    "test_optim",
    "test_run_config",
    "test_sampling",
    "test_steps",
    "test_token_cache",
    "test_user_text_bounds",
}
NEEDS_A_TRAINED_RUN = {"fast_run", "trained_workdir", "text_run", "server"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        module = item.module.__name__.rsplit(".", 1)[-1]
        if module in QUICK_MODULES and not NEEDS_A_TRAINED_RUN & set(item.fixturenames):
            item.add_marker(pytest.mark.quick)


@pytest.fixture
def small_config():
    """The seed config cut down to a few quick epochs."""
    config = default.get_config()
    config.epochs = 3
    config.steps_per_epoch = 25
    config.batch_size = 4
    config.lr = 1e-2
    config.warmup_steps = 10
    return config


MARGIN_EPOCHS = 10


@contextlib.contextmanager
def built_once(tmp_path_factory, name: str):
    """A directory shared by every pytest-xdist worker of the session, and whether this
    worker must build what goes in it: the first to take the lock builds, the others wait
    for it and reuse the result (a session fixture would otherwise be built per worker)."""
    shared = tmp_path_factory.getbasetemp().parent / name
    shared.mkdir(exist_ok=True)
    done = shared / "built"
    with open(shared.parent / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield shared, not done.exists()
        done.touch()


@pytest.fixture(scope="session")
def fast_run(tmp_path_factory) -> tuple[Path, list[str]]:
    """`configs/fast.py` trained once per session, in-process: its workdir and log lines.

    It trains to its targets (every built-in reply exact, val_acc >= 0.99), not for a fixed
    number of epochs: the epoch it gets there at differs between CPUs. Then it goes on for
    `MARGIN_EPOCHS` more (its log lines are the first part's): a model stopped the moment
    its replies first come back exact may still be a rounding away from a typo in one of
    them ('blue</asistant>' under fast math), and the tests chat with it on any CPU.
    """
    with built_once(tmp_path_factory, "fast_run") as (directory, build):
        workdir, log = directory / "workdir", directory / "lines.json"
        if build:
            lines: list[str] = []
            _, history = train.train_and_evaluate(fast.get_config(), str(workdir), lines.append)
            assert history[-1].exact_match == 1.0 and history[-1].val_acc >= 0.99, lines[-6:]
            more = fast.get_config()
            more.target_val_acc = more.target_exact_match = 0.0
            more.epochs = history[-1].epoch + MARGIN_EPOCHS
            train.train_and_evaluate(more, str(workdir), log=lambda _: None)
            log.write_text(json.dumps(lines))
    return workdir, json.loads(log.read_text())


@pytest.fixture(scope="session")
def text_run(tmp_path_factory) -> tuple[Path, ml_collections.ConfigDict]:
    """A small plain-text run of two epochs (a checkpoint each): its workdir and config."""
    with built_once(tmp_path_factory, "pretrained") as (directory, build):
        text = directory / "pretrain.txt"
        config = default.get_config()
        config.data_path, config.block_size = str(text), 32
        config.epochs, config.steps_per_epoch, config.batch_size = 2, 25, 4
        config.checkpoint_every = 1
        config.lr, config.warmup_steps = 1e-2, 10
        if build:
            text.write_text("what does it do? it does what it says. " * 200)
            train.train_and_evaluate(config, str(directory / "run"), log=lambda _: None)
    return directory / "run", config


@pytest.fixture(scope="session")
def trained_workdir(fast_run) -> Path:
    """A workdir holding a `configs/fast.py` run that answers every built-in dialog."""
    return fast_run[0]


def matching_copy(workdir: Path, into: Path, known_turns: list[str]) -> Path:
    """A copy of `workdir` whose checkpoints say their run normalised with every step and
    trained on `known_turns` (as a run with `known` would record them), digests re-recorded."""
    shutil.copytree(workdir, into)
    for step_dir in (into / "checkpoints").iterdir():
        meta_file = step_dir / "meta" / "metadata"
        meta = json.loads(meta_file.read_text())
        meta["config"]["normalize_user"] = ",".join(user_text.STEPS)
        meta["known_turns"] = known_turns
        meta_file.write_text(json.dumps(meta))
        write_digests(step_dir)
    return into


class Server:
    """A `main.py --mode=serve` subprocess on a free port; `url` once it listens."""

    def __init__(self, workdir: Path, *args: str, env: dict | None = None):
        self.process = subprocess.Popen(
            [
                *main_command(main_env(env)),
                "--mode=serve",
                f"--workdir={workdir}",
                "--port=0",
                *args,
            ],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=main_env(env),
        )
        line = self.process.stdout.readline()
        if "Serving" not in line:
            self.process.kill()
            raise AssertionError(f"no server: {line}{self.process.stderr.read()}")
        self.url = line.split(" on ")[1].split()[0]

    def stop(self, signum: int = signal.SIGTERM) -> tuple[int, str, str]:
        """Signal the server; its exit status, the rest of its stdout, and its stderr."""
        self.process.send_signal(signum)
        out, err = self.process.communicate(timeout=30)
        return self.process.returncode, out, err


@pytest.fixture(scope="session")
def server(trained_workdir):
    """The `configs/fast.py` chat model served for the session."""
    running = Server(trained_workdir)
    yield running
    running.stop()


def repl_reply(workdir: Path, user: str, history: tuple = ()) -> str:
    """What the REPL's generator answers `user` after `history` with the workdir's model."""
    from tinytx_jax.inference import generation, sampling, trained
    from tinytx_jax.text import dialogs

    model = trained.load_trained(workdir, log=lambda _: None)
    generator = generation.Generator(
        model.model, model.params, model.vocab, sampling.SamplingConfig()
    )
    return generator.reply(dialogs.render_prompt(user, dialogs.SYSTEM_PROMPT, history))[0]


def chat_request(user: str, history: tuple = ()) -> openai_api.ChatRequest:
    """A checked chat request for `user` after `history`: greedy, 10 tokens, whole."""
    return openai_api.ChatRequest(
        user=user,
        history=history,
        system=None,
        max_tokens=10,
        temperature=0.0,
        top_p=1.0,
        seed=None,
        stream=False,
        include_usage=False,
    )
