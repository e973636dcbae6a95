"""Checkpoints restore exactly, resume bit for bit, keep best and latest, survive faults."""

import dataclasses
import json
import shutil
import signal
import subprocess
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.conftest import REPO, main_command, main_env, run_main
from tinytx_jax.checkpoints.meta import SCHEMA_VERSION
from tinytx_jax.checkpoints.store import CheckpointError, CheckpointStore, abstract_like
from tinytx_jax.inference import trained
from tinytx_jax.run_config import RunConfig
from tinytx_jax.training import epoch_loop, train
from tinytx_jax.training.steps import make_train_epoch
from tinytx_jax.training.task import build_task

FAST = ["--mode=train", "--config=configs/fast.py"]


@pytest.fixture
def ckpt_config(small_config):
    small_config.epochs = 4
    small_config.steps_per_epoch = 10
    small_config.checkpoint_every = 1
    return small_config


def quiet(_line: str) -> None:
    pass


def assert_trees_equal(a, b):
    jax.tree.map(np.testing.assert_array_equal, a, b)


def test_save_then_restore_gives_identical_state_and_logits(ckpt_config, tmp_path):
    task = build_task(RunConfig.from_flat(ckpt_config))
    epoch_fn = make_train_epoch(task.model, task.tx, task.mesh, 10, 4, ckpt_config.block_size)
    state, _ = epoch_fn(task.initial_state(0), task.data.train_tokens)
    saved = jax.device_get(state)
    store = CheckpointStore(tmp_path)
    store.save(1, state, {"schema_version": SCHEMA_VERSION}, {"val_loss": 1.0})
    state, _ = epoch_fn(state, task.data.train_tokens)  # donates the saved buffers meanwhile
    store.wait()
    restored = store.restore(1, abstract_like(state))
    store.close()
    assert_trees_equal(restored, saved)
    assert type(restored.plateau_state) is type(saved.plateau_state)
    assert jax.tree.structure(restored.opt_state) == jax.tree.structure(state.opt_state)
    tokens = task.data.val_chunks[0][0, :2]
    apply = jax.jit(task.model.apply)
    logits = apply({"params": saved.params}, tokens)
    np.testing.assert_array_equal(apply({"params": restored.params}, tokens), logits)


def test_resumed_run_equals_uninterrupted_run(ckpt_config, tmp_path):
    _, straight = train.train_and_evaluate(ckpt_config, str(tmp_path / "a"), log=quiet)
    ckpt_config.epochs = 2
    _, first_half = train.train_and_evaluate(ckpt_config, str(tmp_path / "b"), log=quiet)
    ckpt_config.epochs = 4
    lines = []
    _, second_half = train.train_and_evaluate(ckpt_config, str(tmp_path / "b"), log=lines.append)
    assert any(line.startswith("Resuming from") and "at epoch 2 (step 20" in line for line in lines)
    assert first_half + second_half == straight


def test_keeps_latest_and_best(tmp_path):
    state = {"w": jnp.arange(3.0)}
    store = CheckpointStore(tmp_path, keep=2)
    for epoch, val_loss in enumerate([5, 4, 3, 1, 2, 2.5, 2.6, 2.7], start=1):
        meta = {"schema_version": SCHEMA_VERSION}
        store.save(epoch, state, meta, {"val_loss": val_loss})
    store.close()
    store = CheckpointStore(tmp_path, keep=2)
    assert store.steps() == [4, 7, 8]
    assert store.best_step() == 4
    store.close()


def test_best_is_the_most_exact_when_exact_match_is_measured(tmp_path):
    state = {"w": jnp.arange(3.0)}
    store = CheckpointStore(tmp_path, keep=1)
    meta = {"schema_version": SCHEMA_VERSION}
    for epoch, (val_loss, exact) in enumerate([(0.5, 0.9), (0.4, 0.95), (0.3, 0.95), (0.2, 0.9)]):
        store.save(epoch + 1, state, meta, {"val_loss": val_loss, "exact_match": exact})
    store.close()
    store = CheckpointStore(tmp_path, keep=1)
    assert store.steps() == [3, 4]  # the latest, and the best: most exact, then lowest loss
    assert store.best_step() == 3
    store.close()


def test_loader_picks_best_or_latest_and_rebuilds_the_model(ckpt_config, tmp_path):
    ckpt_config.keep_checkpoints = 1
    state, history = train.train_and_evaluate(ckpt_config, str(tmp_path), log=quiet)
    best_epoch = min(history, key=lambda m: m.val_loss).epoch
    best = trained.load_trained(tmp_path, "best", log=quiet)
    latest = trained.load_trained(tmp_path, "latest", log=quiet)
    assert best.epoch == best_epoch and latest.epoch == 4
    assert best.vocab.size == 31 and best.meta["metrics"]["epoch"] == best_epoch
    assert best.model.config.d_model == ckpt_config.d_model
    assert best.meta["versions"]["jax"] == jax.__version__
    assert best.meta["data"]["fingerprint"].startswith("sha256:")
    # Parameters only, read back bit for bit: the latest are the final state's.
    same = jax.tree.map(lambda a, b: bool((a == b).all()), latest.params, state.params)
    assert jax.tree.all(same)


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(
    ckpt_config, tmp_path, monkeypatch
):
    real_compile_steps = train.compile_steps

    def evaluate_failing_at_epoch_3(*args):
        steps, calls = real_compile_steps(*args), []

        def evaluate(*args):
            calls.append(1)
            loss, acc = steps.evaluate(*args)
            return (jnp.float32(jnp.nan) if len(calls) == 3 else loss), acc

        return dataclasses.replace(steps, evaluate=evaluate)

    monkeypatch.setattr(train, "compile_steps", evaluate_failing_at_epoch_3)
    with pytest.raises(epoch_loop.TrainingError, match=r"not finite at epoch 3.*epoch 2\)"):
        train.train_and_evaluate(ckpt_config, str(tmp_path), log=quiet)
    assert CheckpointStore(tmp_path).steps() == [1, 2]


@pytest.mark.e2e
def test_mismatched_config_stops_with_one_line(tmp_path):
    short = [*FAST, f"--workdir={tmp_path}", "--config.epochs=2"]
    assert run_main(*short).returncode == 0
    result = run_main(*short, "--config.d_model=32", "--config.epochs=3")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "d_model=64 in the checkpoint, 32 in the config" in result.stderr
    assert "--config.resume=False" in result.stderr


def test_unknown_schema_is_refused(ckpt_config, tmp_path):
    ckpt_config.epochs = 2
    train.train_and_evaluate(ckpt_config, str(tmp_path), log=quiet)
    meta_file = next((tmp_path / "checkpoints" / "2" / "meta").glob("*"))
    meta = json.loads(meta_file.read_text())
    meta_file.write_text(json.dumps({**meta, "schema_version": 99}))
    ckpt_config.epochs = 3
    with pytest.raises(CheckpointError, match="schema version 99"):
        train.train_and_evaluate(ckpt_config, str(tmp_path), log=quiet)


def test_corrupted_latest_falls_back_to_the_previous(ckpt_config, tmp_path):
    ckpt_config.update(epochs=6, checkpoint_every=2)
    train.train_and_evaluate(ckpt_config, str(tmp_path), log=quiet)
    assert CheckpointStore(tmp_path).steps() == [2, 4, 6]
    shutil.rmtree(tmp_path / "checkpoints" / "6" / "state")
    ckpt_config.epochs = 7
    lines = []
    _, history = train.train_and_evaluate(ckpt_config, str(tmp_path), log=lines.append)
    assert any(line.startswith("Checkpoint at epoch 6 is unreadable") for line in lines)
    assert f"Resuming from {tmp_path / 'checkpoints'} at epoch 4" in "\n".join(lines)
    assert [m.epoch for m in history] == [5, 6, 7]

    for step in CheckpointStore(tmp_path).steps():
        shutil.rmtree(tmp_path / "checkpoints" / str(step) / "state", ignore_errors=True)
    ckpt_config.epochs = 8
    with pytest.raises(CheckpointError, match="no readable checkpoint"):
        train.train_and_evaluate(ckpt_config, str(tmp_path), log=quiet)


def test_a_flipped_byte_in_any_array_file_is_caught_and_the_previous_one_loads(
    ckpt_config, tmp_path
):
    ckpt_config.update(epochs=3, checkpoint_every=1)
    train.train_and_evaluate(ckpt_config, str(tmp_path), log=quiet)
    state_files = sorted(
        (p for p in (tmp_path / "checkpoints" / "3" / "state").rglob("*") if p.is_file()),
        key=lambda p: p.stat().st_size,
    )
    assert (tmp_path / "checkpoints" / "3" / "digests.json").exists()
    for damaged in (state_files[-1], state_files[len(state_files) // 2]):  # arrays, metadata
        original = damaged.read_bytes()
        flipped = bytearray(original)
        flipped[len(flipped) // 2] ^= 0x01
        damaged.write_bytes(bytes(flipped))
        notices = []
        loaded = trained.load_trained(tmp_path, "latest", log=notices.append)
        assert loaded.epoch == 2, damaged
        assert "Checkpoint at epoch 3 is unreadable" in notices[0] and "digest" in notices[0]
        damaged.write_bytes(original)
    assert trained.load_trained(tmp_path, "latest", log=quiet).epoch == 3


def start_training(workdir, *extra, forked: bool = True):
    return subprocess.Popen(
        [
            *main_command(main_env(), forked),
            *FAST,
            f"--workdir={workdir}",
            "--config.target_val_acc=0",
            "--config.target_exact_match=0",
            "--config.checkpoint_every=1",
            *extra,
        ],
        cwd=REPO,
        env=main_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for_checkpoints(workdir, count, timeout=120):
    deadline = time.monotonic() + timeout
    directory = workdir / "checkpoints"
    while time.monotonic() < deadline:
        if directory.exists() and sum(p.name.isdigit() for p in directory.iterdir()) >= count:
            return
        time.sleep(0.05)
    raise AssertionError("no checkpoints appeared")


@pytest.mark.e2e
def test_sigkill_during_training_then_resume_completes(tmp_path):
    # Its own interpreter: killing a zygote's client ends its run a moment later, not at once.
    process = start_training(tmp_path, "--config.epochs=400", forked=False)
    wait_for_checkpoints(tmp_path, 3)
    time.sleep(0.13)  # lands anywhere: in an epoch, or in the middle of a save
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    result = run_main(
        *FAST,
        f"--workdir={tmp_path}",
        "--config.target_val_acc=0",
        "--config.target_exact_match=0",
        "--config.checkpoint_every=1",
        "--config.epochs=12",
    )
    assert result.returncode == 0, result.stderr
    assert "Resuming from" in result.stdout
    assert "Epoch 12," in result.stdout


@pytest.mark.e2e
def test_sigint_saves_a_checkpoint_and_exits_130(tmp_path):
    process = start_training(tmp_path, "--config.epochs=400", "--config.checkpoint_every=1000")
    for line in process.stdout:  # in the loop: an epoch has been printed
        if line.startswith("Epoch 2,"):
            break
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr
    line = next(ln for ln in stdout.splitlines() if ln.startswith("Interrupted at epoch"))
    epoch = int(line.split()[3].rstrip(":"))
    assert f"checkpoint saved to {tmp_path / 'checkpoints' / str(epoch)}" in line
    assert CheckpointStore(tmp_path).steps() == [epoch]


def test_a_signal_mid_epoch_stops_within_seconds_and_resumes_bit_exact(tmp_path):
    """Epochs of 300 steps run in chunks: SIGINT lands inside one, the process exits 130
    within seconds with the state from before that epoch saved, and the resumed run's
    figures equal those of a run never interrupted."""
    long_epochs = ["--config.steps_per_epoch=300", "--config.checkpoint_every=1000"]
    process = start_training(tmp_path / "cut", *long_epochs, "--config.epochs=1000")
    for line in process.stdout:
        if line.startswith("Epoch 1,"):
            break
    time.sleep(0.5)  # inside epoch 2 (about 2.5 s here), before one of its chunk ends
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    # Stopped between two chunks of epoch 2, not at its end: within a chunk of the signal.
    assert "Interrupted during epoch 2: saved the checkpoint of epoch 1" in stdout, stdout
    no_targets = ["--config.target_val_acc=0", "--config.target_exact_match=0"]
    two = [*FAST, *no_targets, *long_epochs, "--config.epochs=2"]
    resumed = run_main(*two, f"--workdir={tmp_path / 'cut'}")
    straight = run_main(*two, f"--workdir={tmp_path / 'straight'}")
    assert resumed.returncode == 0 and straight.returncode == 0, resumed.stderr + straight.stderr
    epoch_lines = [
        [ln for ln in r.stdout.splitlines() if ln.startswith("Epoch ")] for r in (resumed, straight)
    ]
    assert epoch_lines[0] == epoch_lines[1][1:]  # epoch 2, to the last digit
