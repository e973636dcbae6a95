"""The fault matrix, end to end: each bad input or fault gives its exit status and one line,
never a traceback, and what was saved still loads afterwards."""

import os
import shlex
import shutil
import signal
import subprocess
import time

import pytest

from tests.conftest import REPO, main_command, main_env, run_main, short_text_run
from tinytx_jax import commands

pytestmark = pytest.mark.e2e

FAST = "--config=configs/fast.py"


def one_line(result: subprocess.CompletedProcess, status: int, expected: str) -> None:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == status, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert len(lines) == 1 and expected in lines[0], result.stderr


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--config.seed=99999999999999999999"], "config.seed must be in [0, 2147483647]"),
        (["--config.steps_per_epoch=99999999999999"], "must be at most 2147483647 steps"),
        (["--num_processes=2"], "--num_processes=2 needs --coordinator_address"),
        (["--config.data_repeat=100000000"], "lower config.data_repeat to at most"),
        (["--config.d_model=1048576"], "GB to train"),
        (["--config.d_model=65536"], "GB to train"),
        (["--config.max_len=1000000000"], "GB to train"),
        (["--config.max_new_tokens=100000000"], "config.max_new_tokens must be at most 100,000"),
        (["--num_processes=2", "--coordinator_address=nohost-noport"], "is not HOST:PORT"),
    ],
)
def test_bad_values_and_what_cannot_fit_or_connect_stop_at_once_in_one_line(
    args, expected, tmp_path
):
    result = run_main("--mode=train", *args, f"--workdir={tmp_path}", timeout=60)
    one_line(result, 2, expected)
    assert "Training with JAX" not in result.stdout  # refused before anything was built
    assert not (tmp_path / "checkpoints").exists()


def test_workdir_under_a_regular_file(tmp_path):
    (tmp_path / "file").write_text("x")
    result = run_main("--mode=train", FAST, f"--workdir={tmp_path / 'file' / 'w'}")
    one_line(result, 2, "Not a directory")


@pytest.mark.parametrize(
    "mode, prompt",
    [("chat", ""), ("chat", "   "), ("chat", "😀"), ("sample", "😀"), ("sample", "")],
)
def test_prompts_with_nothing_to_answer_agree(mode, prompt, trained_workdir):
    result = run_main(f"--mode={mode}", f"--workdir={trained_workdir}", f"--prompt={prompt}")
    lines = [ln for ln in result.stderr.splitlines() if ln.startswith("error:")]
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert lines == [f"error: {commands.NO_USABLE_PROMPT}"]


def test_resume_on_other_data_needs_an_explicit_choice(trained_workdir, tmp_path):
    workdir = tmp_path / "w"
    shutil.copytree(trained_workdir, workdir)
    other = ("--config.data_repeat=299", "--config.epochs=21", f"--workdir={workdir}")
    one_line(run_main("--mode=train", FAST, *other), 2, "it was trained on other data")
    resumed = run_main("--mode=train", FAST, *other, "--config.resume_on_new_data=True")
    assert resumed.returncode == 0 and "Resuming from" in resumed.stdout


def start_training(workdir, *extra):
    return subprocess.Popen(
        [
            *main_command(main_env(), forked=False),  # its pid is the lock's
            "--mode=train",
            FAST,
            f"--workdir={workdir}",
            "--config.target_val_acc=0",
            "--config.target_exact_match=0",
            "--config.epochs=1000",
            *extra,
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=main_env(),
    )


def wait_for_epoch(process) -> None:
    for line in process.stdout:
        if line.startswith("Epoch "):
            return
    raise AssertionError(process.stderr.read())


def test_one_training_per_workdir_and_a_killed_holder_blocks_nothing(tmp_path):
    holder = start_training(tmp_path)
    wait_for_epoch(holder)
    second = run_main("--mode=train", FAST, f"--workdir={tmp_path}")
    one_line(second, 2, f"in use by another training run (process {holder.pid} on ")
    reader = run_main("--mode=chat", f"--workdir={tmp_path}", "--prompt=hi")  # reading is fine
    assert "Traceback" not in reader.stderr
    holder.kill()  # kill -9: the lock file stays, the lock does not
    holder.communicate()
    resumed = run_main("--mode=train", FAST, f"--workdir={tmp_path}", "--config.epochs=3")
    assert resumed.returncode == 0, resumed.stderr


# A training that cannot end before the signal: no targets, a budget of hours.
TRAIN_WITHOUT_END = [
    "--config.resume=False",
    "--config.target_val_acc=0",
    "--config.target_exact_match=0",
    "--config.epochs=10000",
]


@pytest.mark.parametrize(
    "mode, delay", [("train", 0.3), ("train", 2.0), ("chat", 0.6), ("chat", 1.0)]
)
def test_ctrl_c_outside_the_epoch_loop_exits_130_in_one_line(
    mode, delay, trained_workdir, tmp_path
):
    workdir = tmp_path / "w"
    shutil.copytree(trained_workdir, workdir)
    before = sorted(p.name for p in (workdir / "checkpoints").iterdir())
    process = subprocess.Popen(
        [
            *main_command(main_env(), forked=False),  # the signal lands in its start-up
            f"--mode={mode}",
            FAST,
            f"--workdir={workdir}",
            *(TRAIN_WITHOUT_END if mode == "train" else ["--prompt=hi"]),
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=main_env(),
    )
    time.sleep(delay)  # importing, compiling or loading the checkpoint
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=60)
    assert process.returncode != 0, "the process ended before the signal: raise the delay"
    assert process.returncode == 130, err
    assert "Traceback" not in err + out
    in_loop = "Interrupted at epoch" in out  # the loop's own way: save, then exit
    assert in_loop or [ln for ln in err.splitlines() if ln.strip()][-1] == "Interrupted (SIGINT)"
    if mode == "chat":
        assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == before
    again = run_main("--mode=chat", f"--workdir={workdir}", "--prompt=hi")
    assert again.returncode in (0, 2) and "Traceback" not in again.stderr


def test_damaged_latest_checkpoint_falls_back_in_one_line(trained_workdir, tmp_path):
    workdir = tmp_path / "w"
    shutil.copytree(trained_workdir, workdir)
    latest = max((workdir / "checkpoints").iterdir(), key=lambda p: int(p.name))
    for path in (latest / "state").rglob("*"):
        if path.is_file() and path.parent.name in ("d", "ocdbt.process_0"):
            path.write_bytes(b"\0" * 64)
    result = run_main(
        "--mode=chat", f"--workdir={workdir}", "--config.checkpoint=latest", "--prompt=hi"
    )
    assert result.returncode == 0 and "Traceback" not in result.stderr
    assert f"Checkpoint at epoch {latest.name} is unreadable" in result.stderr
    assert len([ln for ln in result.stderr.splitlines() if ln.strip()]) == 2  # that, "loaded"


@pytest.fixture
def small_filesystem(tmp_path):
    """A 1.2 MB tmpfs (needs root, as on the project's machines; skipped elsewhere)."""
    mount_point = tmp_path / "small"
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1200K", "tmpfs", str(mount_point)],
        capture_output=True,
    )
    if mounted.returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], capture_output=True)


def test_full_disk_and_read_only_workdir_in_one_line(small_filesystem):
    workdir = small_filesystem / "w"
    full = run_main(
        "--mode=train",
        FAST,
        f"--workdir={workdir}",
        "--config.checkpoint_every=1",
        "--config.compile_cache=False",
    )
    one_line(full, 2, "could not write the checkpoint of epoch")
    assert "the last committed checkpoint is kept" in full.stderr
    subprocess.run(["mount", "-o", "remount,ro", str(small_filesystem)], check=True)
    chat = run_main(
        "--mode=chat", f"--workdir={workdir}", "--config.checkpoint=latest", "--prompt=hi"
    )
    assert chat.returncode == 0 and "Traceback" not in chat.stderr  # the committed one loads
    assert "WARNING" not in chat.stderr  # no compilation-cache warnings
    again = run_main("--mode=train", FAST, f"--workdir={workdir}")
    one_line(again, 2, "Read-only file system")


@pytest.mark.parametrize("mode", ["chat", "sample"])
def test_a_huge_reply_length_is_refused_before_loading(mode, trained_workdir):
    result = run_main(
        f"--mode={mode}",
        f"--workdir={trained_workdir}",
        "--prompt=hi",
        "--config.max_new_tokens=500000000",
        timeout=60,
    )
    one_line(result, 2, "config.max_new_tokens must be at most")


@pytest.mark.parametrize("suffix", [".jsonl", ".txt"])
def test_a_fifo_or_a_directory_as_data_is_refused_without_opening_it(suffix, tmp_path):
    fifo = tmp_path / f"d{suffix}"
    os.mkfifo(fifo)  # no writer: opening it would block forever
    result = run_main(
        "--mode=train", f"--config.data_path={fifo}", f"--workdir={tmp_path / 'w'}", timeout=60
    )
    one_line(result, 2, "is not a regular file")
    (tmp_path / f"dir{suffix}").mkdir()
    result = run_main(
        "--mode=train",
        f"--config.data_path={tmp_path / f'dir{suffix}'}",
        f"--workdir={tmp_path / 'w2'}",
        timeout=60,
    )
    one_line(result, 2, "is not a regular file")


def test_the_dialogs_recipe_works_on_two_conversations(tmp_path):
    data = tmp_path / "two.jsonl"
    data.write_text('{"user": "hi", "assistant": "hello!"}\n{"user": "bye", "assistant": "ciao"}\n')
    args = [
        "--config=configs/dialogs.py",
        f"--config.data_path={data}",
        "--config.epochs=1",
        "--config.steps_per_epoch=5",
        f"--workdir={tmp_path / 'w'}",
    ]
    result = run_main("--mode=train", *args)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr


def test_a_text_without_new_lines_samples_after_training(tmp_path):
    data = tmp_path / "one_line.txt"
    data.write_text("abcd efgh " * 400)
    result = run_main("--mode=train_and_chat", *short_text_run(data, tmp_path / "w"))
    assert result.returncode == 0, result.stderr
    # The sample after training starts from the text's first character (" "), not "\n".
    assert result.stdout.splitlines()[-1].startswith(" ")


def test_a_closed_stdout_is_named_as_such(tmp_path):
    command = (
        f"{shlex.join(main_command(main_env()))} --mode=train {FAST} "
        f"--workdir={tmp_path / 'w'} | head -3"
    )
    result = subprocess.run(
        command, shell=True, capture_output=True, text=True, timeout=240, env=main_env(), cwd=REPO
    )
    assert len(result.stdout.splitlines()) == 3
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert lines and "standard output was closed" in lines[-1] and "Traceback" not in result.stderr
