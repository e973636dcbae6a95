"""The training loop: initial loss, the log line, falling loss, reproducibility, bad config."""

import math
import re

import jax
import numpy as np
import pytest

from configs import default
from tinytx_jax import configuration, run_config
from tinytx_jax.data import train_data
from tinytx_jax.run_config import RunConfig
from tinytx_jax.scoring.loss import make_evaluate
from tinytx_jax.training import chunks, train
from tinytx_jax.training.metrics import EpochMetrics, format_epoch_line
from tinytx_jax.training.steps import make_train_epoch
from tinytx_jax.training.task import build_task

LINE = re.compile(
    r"^Epoch (\d+), train_loss=\d+\.\d{4} val_loss=\d+\.\d{4} "
    r"val_acc=(\d\.\d{3}) \(n=8159\) lr=\d\.\d{2}e[-+]\d{2}"
    r"( exact_match=\d\.\d{3})?( typed_match=\d\.\d{3})?$"
)


def test_fast_config_reaches_target_accuracy(fast_run):
    _, lines = fast_run
    epochs = [LINE.match(ln) for ln in lines if ln.startswith("Epoch")]
    assert epochs and all(epochs)
    assert float(epochs[-1].group(2)) >= 0.99 and epochs[-1].group(3) == " exact_match=1.000"
    assert any(ln.startswith("Target reached") for ln in lines)


def test_untrained_loss_is_near_uniform():
    config = default.get_config()
    task = build_task(RunConfig.from_flat(config))
    state = task.initial_state(config.seed)
    loss, acc = make_evaluate(task.model)(state.params, *task.data.val_chunks)
    assert abs(float(loss) - math.log(31)) < 0.05
    assert 0.0 <= float(acc) <= 1.0
    assert task.data.val_targets == 8159


def test_log_line_is_the_seeds():
    line = format_epoch_line(EpochMetrics(12, 0.12341, 0.12339, 0.98712, 8159, 5e-4))
    assert line == "Epoch 12, train_loss=0.1234 val_loss=0.1234 val_acc=0.987 (n=8159) lr=5.00e-04"


def test_short_run_loss_falls_and_is_reproducible(small_config, tmp_path):
    lines = []
    state, history = train.train_and_evaluate(small_config, str(tmp_path / "a"), log=lines.append)
    assert len(history) == 3
    assert history[-1].val_loss < history[0].val_loss < math.log(31)
    assert history[-1].train_loss < 1.5
    assert int(state.step) == 3 * 25 and int(state.epoch) == 3
    assert [ln for ln in lines if ln.startswith("Epoch")] == [format_epoch_line(m) for m in history]
    _, again = train.train_and_evaluate(small_config, str(tmp_path / "b"), log=lambda _: None)
    assert [m.train_loss for m in again] == [m.train_loss for m in history]
    small_config.seed = 8
    _, other_seed = train.train_and_evaluate(small_config, str(tmp_path / "c"), log=lambda _: None)
    assert other_seed[0].train_loss != history[0].train_loss


def test_train_epoch_samples_windows_inside_the_train_split(small_config):
    task = build_task(RunConfig.from_flat(small_config))
    state = task.initial_state(0)
    epoch = make_train_epoch(
        task.model, task.tx, task.mesh, 5, small_config.batch_size, small_config.block_size
    )
    state, loss = epoch(state, task.data.train_tokens)
    assert np.isfinite(float(loss)) and int(state.step) == 5
    assert not jax.numpy.array_equal(state.rng, task.initial_state(0).rng)


def test_print_every_thins_the_log(small_config, tmp_path):
    small_config.print_every = 2
    lines = []
    train.train_and_evaluate(small_config, str(tmp_path), log=lines.append)
    assert [ln.split(",")[0] for ln in lines if ln.startswith("Epoch")] == ["Epoch 2", "Epoch 3"]


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("lr", -1.0, "config.lr must be positive"),
        ("epochs", 0, "config.epochs must be positive"),
        ("block_size", 1024, "config.block_size (1024) must not exceed config.max_len (512)"),
        ("n_heads", 3, "divisible by config.n_heads"),
        ("dropout", 1.0, "config.dropout must be in [0, 1)"),
        ("dtype", "float16", "config.dtype must be one of"),
        ("normalize_user", "spaces,lowercase", "unknown step 'lowercase'"),
        ("augment_user", 1.5, "config.augment_user must be in [0, 1]"),
        ("target_typed_match", 0.9, "config.target_typed_match needs config.exact_match_every"),
        ("position", "alibi", "config.position must be one of"),
        ("optimizer", "sgd", "config.optimizer must be one of"),
        ("decay_fraction", 0.0, "config.decay_fraction must be in (0, 1]"),
        ("muon_ns_steps", 0, "config.muon_ns_steps must be positive"),
        ("logit_softcap", -1.0, "config.logit_softcap must be >= 0"),
    ],
)
def test_invalid_config_values_are_named(field, value, message):
    config = default.get_config()
    config[field] = value
    with pytest.raises(configuration.ConfigError) as error:
        run_config.RunConfig.from_flat(config)
    assert message in str(error.value)


def test_corpus_too_short_for_the_block_is_reported():
    config = default.get_config()
    config.data_repeat = 1
    with pytest.raises(configuration.ConfigError, match=r"too few for config\.block_size"):
        build_task(RunConfig.from_flat(config))


def test_eval_steps_caps_validation_and_the_last_epoch_scores_the_whole_split(
    small_config, tmp_path
):
    text = tmp_path / "t.txt"
    text.write_text("".join(f"word{i % 37} " for i in range(4000)))
    small_config.update(data_path=str(text), block_size=32, eval_steps=2, epochs=2)
    _, history = train.train_and_evaluate(small_config, str(tmp_path / "w"), log=lambda _: None)
    full_targets = history[1].val_targets
    assert history[0].val_targets == 2 * small_config.batch_size * 32 < full_targets
    assert history[1].val_bpc == pytest.approx(history[1].val_loss / math.log(2))


def test_a_split_over_the_limit_is_never_scored_whole(small_config, tmp_path, monkeypatch):
    text = tmp_path / "t.txt"
    text.write_text("".join(f"word{i % 37} " for i in range(4000)))
    small_config.update(data_path=str(text), block_size=32, eval_steps=2, epochs=2)
    monkeypatch.setattr(train_data, "FULL_FINAL_VALIDATION_LIMIT", 1000)
    assert build_task(RunConfig.from_flat(small_config)).data.full_val_chunks is None
    monkeypatch.setattr(train_data, "FULL_FINAL_VALIDATION_LIMIT", 10**9)
    assert build_task(RunConfig.from_flat(small_config)).data.full_val_chunks is not None


def test_a_long_epoch_in_chunks_is_the_whole_epoch_bit_for_bit(small_config):
    small_config.steps_per_epoch = chunks.WHOLE_EPOCH_STEPS + 44  # chunks of 128, 128, 44
    task = build_task(RunConfig.from_flat(small_config))
    epoch = chunks.ChunkedEpoch(task)
    assert epoch.sizes() == [128, 128, chunks.WHOLE_EPOCH_STEPS + 44 - 256]
    epoch.compile_programs(task.initial_state(small_config.seed), *task.train_data(1))
    chunked, _ = epoch.run(
        task.initial_state(small_config.seed), *task.train_data(1), stop=lambda: False
    )
    whole = task.make_train_epoch(small_config.steps_per_epoch)
    reference, _ = whole(task.initial_state(small_config.seed), *task.train_data(1))
    same = jax.tree.map(lambda a, b: bool((a == b).all()), chunked, reference)
    assert jax.tree.all(same)
    stopped = epoch.run(
        task.initial_state(small_config.seed), *task.train_data(1), stop=lambda: True
    )
    assert stopped is None
