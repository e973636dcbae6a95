"""Shared helpers: small configs and a subprocess runner for main.py."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from configs import default, fast
from tinytx_jax import train

REPO = Path(__file__).resolve().parent.parent


def run_main(
    *args: str, stdin: str | None = None, timeout: float = 240, env: dict | None = None
) -> subprocess.CompletedProcess:
    """Run `python main.py ARGS` from the repository root and capture its output."""
    return subprocess.run(
        [sys.executable, "main.py", *args],
        cwd=REPO,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


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


@pytest.fixture(scope="session")
def trained_workdir(tmp_path_factory) -> Path:
    """A workdir holding a `configs/fast.py` run (val_acc >= 0.99), trained once per session."""
    workdir = tmp_path_factory.mktemp("fast_run")
    _, history = train.train_and_evaluate(fast.get_config(), str(workdir), log=lambda _: None)
    assert history[-1].val_acc >= 0.99
    return workdir
