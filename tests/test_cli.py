"""The command line as a newcomer meets it: help, config paths, sampling defaults, data scripts."""

import subprocess
import sys

import pytest

from configs import char_lm, default
from tests.conftest import REPO, run_main
from tinytx_jax import cli
from tinytx_jax.inference import chat
from tinytx_jax.run_config import RunConfig

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_help_exits_0_and_lists_every_config_field_with_its_comment(flag):
    result = run_main(flag, timeout=60)
    assert result.returncode == 0, result.stderr
    listed = result.stdout.split("config fields")[1]
    comments = cli.config_comments()
    for name in default.get_config():
        assert f"--config.{name} " in listed and comments[name], name
    assert "--mode" in result.stdout and "--workdir" in result.stdout


def test_help_shows_the_chosen_configs_values():
    result = run_main("--help", "--config=configs/char_lm.py", timeout=60)
    line = next(ln for ln in result.stdout.splitlines() if "--config.n_layers " in ln)
    assert "= 4 " in line


def test_config_path_resolves_next_to_main_py_from_another_directory(tmp_path):
    result = run_main(
        "--mode=plot", "--config=configs/fast.py", f"--workdir={tmp_path}", cwd=tmp_path
    )
    assert result.returncode == 2 and "no metrics in" in result.stderr  # the config loaded


@pytest.mark.parametrize(
    "path, message",
    [
        ("configs/nope.py", "config file 'configs/nope.py' not found in"),
        ("/etc/passwd", "/etc/passwd is not a config file"),
        ("README.md", "is not a config file"),
    ],
)
def test_a_config_that_cannot_load_is_one_line(path, message, tmp_path):
    result = run_main(f"--config={path}", f"--workdir={tmp_path}", timeout=60)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and message in lines[0], result.stderr


def test_a_taken_port_is_reported_before_the_model_loads(tmp_path):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        # No checkpoint in the workdir: the port is checked first.
        result = run_main("--mode=serve", f"--workdir={tmp_path}", f"--port={port}", timeout=60)
    assert result.returncode == 2 and f"cannot listen on 127.0.0.1:{port}" in result.stderr


def test_text_models_sample_and_dialogs_stay_greedy_unless_told():
    config = default.get_config()
    use = RunConfig.from_flat(config).use
    assert chat.sampling_config(use, plain_text=False) == chat.DIALOG_SAMPLING
    text = chat.sampling_config(use, plain_text=True)
    assert (text.temperature, text.top_k) == (0.8, 200)
    config.temperature, config.top_k = 0.0, 0
    told = chat.sampling_config(RunConfig.from_flat(config).use, plain_text=True)
    assert (told.temperature, told.top_k) == (0.0, 0)
    char_lm_use = RunConfig.from_flat(char_lm.get_config()).use
    assert chat.sampling_config(char_lm_use, plain_text=True).temperature == 0.8


def test_the_faq_script_is_deterministic(tmp_path):
    outs = []
    for name in ("a.jsonl", "b.jsonl"):
        command = [sys.executable, "data/prepare_faq.py", f"--out={tmp_path / name}", "--pairs=50"]
        subprocess.run(command, cwd=REPO, check=True, capture_output=True)
        outs.append((tmp_path / name).read_bytes())
    assert outs[0] == outs[1] and outs[0].count(b"\n") == 50


def test_the_shakespeare_script_refuses_a_file_with_another_checksum(tmp_path):
    (tmp_path / "other.txt").write_text("not shakespeare")
    command = [
        sys.executable,
        "data/prepare_shakespeare.py",
        f"--from={tmp_path / 'other.txt'}",
        f"--out={tmp_path / 'out.txt'}",
    ]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 2 and "is not tiny shakespeare's" in result.stderr
    assert not (tmp_path / "out.txt").exists()
