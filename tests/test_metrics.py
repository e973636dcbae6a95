"""metrics.jsonl, TensorBoard events, curves.png, the plot mode, profiles."""

import json
import struct

import pytest
from tensorboardX.proto import event_pb2

from tests.conftest import run_main
from tinytx_jax.training import metrics, train


def read_events(directory):
    """Scalar values by tag from TFRecord-framed event files (no TensorFlow needed), a
    resumed run's files after the ones it resumed."""
    scalars = {}
    files = sorted(directory.glob("events.out.tfevents.*"), key=lambda p: p.stat().st_mtime)
    for path in files:
        raw = path.read_bytes()
        offset = 0
        while offset < len(raw):
            (length,) = struct.unpack("<Q", raw[offset : offset + 8])
            event = event_pb2.Event.FromString(raw[offset + 12 : offset + 12 + length])
            offset += 12 + length + 4
            for value in event.summary.value:
                scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
    return scalars


def test_metrics_jsonl_tensorboard_and_curves(trained_workdir):
    records = [
        json.loads(line) for line in (trained_workdir / "metrics.jsonl").read_text().splitlines()
    ]
    assert [r["epoch"] for r in records] == list(range(1, len(records) + 1))
    for record in records:
        assert set(record) == {
            "epoch",
            "step",
            "train_loss",
            "val_loss",
            "val_acc",
            "lr",
            "steps_per_s",
            "tokens_per_s",
            "elapsed_s",
            "exact_match",
            "typed_match",
        }
    assert any(r["val_acc"] >= 0.99 and r["exact_match"] == 1.0 for r in records)
    assert records[-1]["step"] == 25 * len(records)
    scalars = read_events(trained_workdir / "tensorboard")
    assert [step for step, _ in scalars["val_loss"]] == [r["epoch"] for r in records]
    assert scalars["val_loss"][-1][1] == records[-1]["val_loss"]
    png = (trained_workdir / "curves.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10_000


def test_resume_drops_metrics_of_epochs_trained_again(small_config, tmp_path):
    small_config.update(epochs=2, steps_per_epoch=5, checkpoint_every=1)
    train.train_and_evaluate(small_config, str(tmp_path), log=lambda _: None)
    path = tmp_path / metrics.METRICS_FILE
    stale = json.loads(path.read_text().splitlines()[-1])
    path.write_text(path.read_text() + json.dumps({**stale, "epoch": 3}) + "\n")
    small_config.epochs = 3
    train.train_and_evaluate(small_config, str(tmp_path), log=lambda _: None)
    assert [r["epoch"] for r in metrics.read_metrics(path)] == [1, 2, 3]


def test_a_damaged_metrics_line_is_skipped_on_resume_and_plot(small_config, tmp_path):
    small_config.update(epochs=2, steps_per_epoch=5, checkpoint_every=1)
    train.train_and_evaluate(small_config, str(tmp_path), log=lambda _: None)
    path = tmp_path / metrics.METRICS_FILE
    path.write_text(path.read_text() + '{"epoch": 3, "train_lo')  # a crash mid-write
    small_config.epochs = 3
    lines = []
    train.train_and_evaluate(small_config, str(tmp_path), log=lines.append)
    assert [r["epoch"] for r in metrics.read_metrics(path)] == [1, 2, 3]
    path.write_text(path.read_text() + "garbage\n")
    notices = []
    assert [r["epoch"] for r in metrics.read_metrics(path, notices.append)] == [1, 2, 3]
    assert notices == [f"(skipped 1 lines of {path} that are not epoch records: 4)"]
    assert metrics.plot_curves(tmp_path).exists()


def test_records_without_losses_and_much_garbage_are_skipped_in_one_notice(small_config, tmp_path):
    small_config.update(epochs=2, steps_per_epoch=5, checkpoint_every=1)
    train.train_and_evaluate(small_config, str(tmp_path), log=lambda _: None)
    path = tmp_path / metrics.METRICS_FILE
    junk = '{"epoch": 5}\n{"epoch": 6, "train_loss": "x", "val_loss": 1, "val_acc": 1}\n'
    path.write_text(path.read_text() + junk + "garbage line\n" * 1000)
    notices = []
    assert [r["epoch"] for r in metrics.read_metrics(path, notices.append)] == [1, 2]
    assert notices == [f"(skipped 1002 lines of {path} that are not epoch records: 3, 4, 5, ...)"]
    assert metrics.plot_curves(tmp_path).exists()
    small_config.epochs = 3  # a resume reads the same file
    _, history = train.train_and_evaluate(small_config, str(tmp_path), log=lambda _: None)
    assert [m.epoch for m in history] == [3]


@pytest.mark.e2e
def test_plot_mode(trained_workdir, tmp_path):
    result = run_main("--mode=plot", f"--workdir={trained_workdir}")
    assert result.returncode == 0 and "curves.png" in result.stdout
    result = run_main("--mode=plot", f"--workdir={tmp_path}")
    assert result.returncode == 2 and "no metrics in" in result.stderr


def test_profile_steps_writes_a_trace(small_config, tmp_path):
    small_config.update(epochs=1, steps_per_epoch=3, profile_steps=3)
    lines = []
    train.train_and_evaluate(small_config, str(tmp_path), log=lines.append)
    assert any(line.startswith("Wrote a profile of 3 steps") for line in lines)
    assert list((tmp_path / "profile").rglob("*.xplane.pb"))
