"""Golden metrics: three steps of the original's model from its seed give the figures they
gave when recorded, up to float rounding (the same on an AMD EPYC and under fast math, and
with 1 or 8 CPU devices, to 1e-6). A change that moves any number of the training path
(initialisation, data, windows, loss, optimiser) shows here in seconds."""

import pytest

from configs import default
from tinytx_jax.run_config import RunConfig
from tinytx_jax.scoring.loss import make_evaluate
from tinytx_jax.training.task import build_task

VAL_LOSS_BEFORE, VAL_ACC_BEFORE = 3.4394529, 0.0174041
TRAIN_LOSS = 3.0934896  # the mean of the three steps
VAL_LOSS_AFTER, VAL_ACC_AFTER = 2.3937278, 0.5077828


def test_three_steps_of_the_seed_model_give_the_recorded_metrics():
    config = default.get_config()
    config.update(batch_size=8, block_size=64, steps_per_epoch=3, lr=1e-2, warmup_steps=0)
    task = build_task(RunConfig.from_flat(config))
    evaluate = make_evaluate(task.model)
    state = task.initial_state(config.seed)
    loss_before, acc_before = evaluate(state.params, *task.data.val_chunks)
    state, train_loss = task.make_train_epoch(3)(state, *task.train_data(1))
    loss_after, acc_after = evaluate(state.params, *task.data.val_chunks)
    losses = [float(loss_before), float(train_loss), float(loss_after)]
    assert losses == pytest.approx([VAL_LOSS_BEFORE, TRAIN_LOSS, VAL_LOSS_AFTER], rel=1e-4)
    # An accuracy moves by 1/8159 per character whose top two logits a rounding swaps.
    accuracies = [float(acc_before), float(acc_after)]
    assert accuracies == pytest.approx([VAL_ACC_BEFORE, VAL_ACC_AFTER], abs=5e-4)
