"""Training loop: whole epochs of sliding-window steps in one jitted `lax.scan`.

The train state is one pytree (params, optimizer and plateau state, PRNG key, step,
epoch, early-stopping counters). Each epoch is a single device call: window starts
are drawn on the device from the state's key, the token array stays on the device,
and the state buffer is donated. Validation runs once per epoch over fixed-shape,
masked chunks so it compiles once.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import struct

from tinytx_jax import configuration, data, optim
from tinytx_jax.model import TinyTransformer


class TrainState(struct.PyTreeNode):
    """Everything a run needs to continue exactly where it was."""

    step: jax.Array
    epoch: jax.Array
    params: Any
    opt_state: optax.OptState
    plateau_state: Any
    rng: jax.Array
    best_val_loss: jax.Array
    epochs_since_best: jax.Array


StateUpdate = Callable[[TrainState, jax.Array], tuple[TrainState, jax.Array]]


@dataclasses.dataclass(frozen=True)
class EpochMetrics:
    """What one epoch reports: the seed's log-line figures."""

    epoch: int
    train_loss: float
    val_loss: float
    val_acc: float
    val_targets: int
    lr: float


@dataclasses.dataclass(frozen=True)
class Task:
    """The model, its optimizer pieces and the device-resident data of one run."""

    model: TinyTransformer
    tx: optax.GradientTransformation
    plateau: optax.GradientTransformationExtraArgs
    schedule: optax.Schedule
    vocab: data.Vocabulary
    train_tokens: jax.Array
    val_chunks: tuple[jax.Array, jax.Array, jax.Array]
    val_targets: int


def cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """Per-position cross-entropy, computed in float32."""
    return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets)


def build_task(config: ml_collections.ConfigDict) -> Task:
    """Corpus, vocabulary, split, model and optimizer for `config` (already checked)."""
    corpus = data.builtin_corpus(config.data_repeat)
    vocab = data.Vocabulary.from_text(corpus)
    train_tokens, val_tokens = data.split_tokens(vocab.encode(corpus), config.validation_fraction)
    if len(train_tokens) <= config.block_size:
        raise configuration.ConfigError(
            f"the training split has {len(train_tokens)} tokens, too few for config.block_size="
            f"{config.block_size}: lower block_size or raise data_repeat"
        )
    if len(val_tokens) < 2:
        raise configuration.ConfigError(
            "the validation split has fewer than 2 tokens: raise data_repeat or validation_fraction"
        )
    val_inputs, val_targets, val_mask = data.validation_chunks(val_tokens, config.block_size)
    model = TinyTransformer(configuration.model_config(config, vocab.size))
    return Task(
        model=model,
        tx=optim.make_optimizer(
            config.lr, config.warmup_steps, config.clip_norm, config.weight_decay
        ),
        plateau=optim.make_plateau(
            config.lr, config.plateau_factor, config.plateau_patience, config.min_lr
        ),
        schedule=optim.warmup_schedule(config.lr, config.warmup_steps),
        vocab=vocab,
        train_tokens=jnp.asarray(train_tokens),
        val_chunks=(jnp.asarray(val_inputs), jnp.asarray(val_targets), jnp.asarray(val_mask)),
        val_targets=int(val_mask.sum()),
    )


def init_train_state(task: Task, seed: int) -> TrainState:
    """Fresh parameters and optimizer state, all derived from `seed`."""
    params_key, train_key = jax.random.split(jax.random.key(seed))
    dummy = jnp.zeros((1, task.model.config.max_len), jnp.int32)
    params = task.model.init(params_key, dummy)["params"]
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        epoch=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=task.tx.init(params),
        plateau_state=task.plateau.init(params),
        rng=train_key,
        best_val_loss=jnp.array(jnp.inf, jnp.float32),
        epochs_since_best=jnp.zeros((), jnp.int32),
    )


def make_train_epoch(
    task: Task, steps_per_epoch: int, batch_size: int, block_size: int
) -> StateUpdate:
    """A jitted `(state, train_tokens) -> (state, mean train loss)` running one epoch."""
    model, tx = task.model, task.tx

    def train_step(state: TrainState, step_key: jax.Array, tokens: jax.Array):
        window_key, dropout_key = jax.random.split(step_key)
        starts = jax.random.randint(window_key, (batch_size,), 0, tokens.shape[0] - block_size)
        windows = jax.vmap(lambda s: jax.lax.dynamic_slice(tokens, (s,), (block_size + 1,)))(starts)
        inputs, targets = windows[:, :-1], windows[:, 1:]

        def loss_fn(params):
            logits = model.apply(
                {"params": params}, inputs, deterministic=False, rngs={"dropout": dropout_key}
            )
            return cross_entropy(logits, targets).mean()

        loss, grads = jax.value_and_grad(loss_fn)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        scale = state.plateau_state.scale
        updates = jax.tree.map(lambda u: scale * u, updates)
        params = optax.apply_updates(state.params, updates)
        return state.replace(step=state.step + 1, params=params, opt_state=opt_state), loss

    def train_epoch(state: TrainState, tokens: jax.Array):
        rng, epoch_key = jax.random.split(state.rng)
        step_keys = jax.random.split(epoch_key, steps_per_epoch)
        state, losses = jax.lax.scan(lambda s, k: train_step(s, k, tokens), state, step_keys)
        return state.replace(rng=rng, epoch=state.epoch + 1), losses.mean()

    return jax.jit(train_epoch, donate_argnums=0)


def make_evaluate(model: TinyTransformer) -> Callable[..., tuple[jax.Array, jax.Array]]:
    """A jitted `(params, inputs, targets, mask) -> (loss, accuracy)`, token-weighted."""

    def evaluate(params, inputs, targets, mask):
        logits = model.apply({"params": params}, inputs)
        total = mask.sum()
        loss = (cross_entropy(logits, targets) * mask).sum() / total
        correct = ((jnp.argmax(logits, axis=-1) == targets) * mask).sum()
        return loss, correct / total

    return jax.jit(evaluate)


def make_end_epoch(task: Task, min_delta: float) -> StateUpdate:
    """A jitted `(state, val_loss) -> (state, next lr)`: plateau and early-stop bookkeeping."""

    def end_epoch(state: TrainState, val_loss: jax.Array):
        _, plateau_state = task.plateau.update({}, state.plateau_state, value=val_loss)
        improved = val_loss + min_delta < state.best_val_loss
        state = state.replace(
            plateau_state=plateau_state,
            best_val_loss=jnp.where(improved, val_loss, state.best_val_loss),
            epochs_since_best=jnp.where(improved, 0, state.epochs_since_best + 1),
        )
        return state, task.schedule(state.step) * plateau_state.scale

    return jax.jit(end_epoch, donate_argnums=0)


def format_epoch_line(m: EpochMetrics) -> str:
    """The seed's per-epoch log line, character for character."""
    return (
        f"Epoch {m.epoch}, train_loss={m.train_loss:.4f} val_loss={m.val_loss:.4f} "
        f"val_acc={m.val_acc:.3f} (n={m.val_targets}) lr={m.lr:.2e}"
    )


def stop_reason(
    metrics: EpochMetrics, state: TrainState, config: ml_collections.ConfigDict
) -> str | None:
    """Why training must stop after this epoch (non-finite loss, early stop, target), if so."""
    if not (np.isfinite(metrics.train_loss) and np.isfinite(metrics.val_loss)):
        return (
            f"Stopping at epoch {metrics.epoch}: the loss is not finite "
            f"(train_loss={metrics.train_loss}, val_loss={metrics.val_loss}); "
            "lower config.lr or check the data"
        )
    if int(state.epochs_since_best) >= config.early_stop_patience:
        return (
            f"Early stopping at epoch {metrics.epoch}: no val_loss improvement for "
            f"{config.early_stop_patience} epochs (best {float(state.best_val_loss):.4f})"
        )
    if config.target_val_acc and metrics.val_acc >= config.target_val_acc:
        return (
            f"Target reached at epoch {metrics.epoch}: val_acc={metrics.val_acc:.3f} >= "
            f"{config.target_val_acc}"
        )
    return None


def count_params(params: Any) -> int:
    return sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))


def train_and_evaluate(
    config: ml_collections.ConfigDict, workdir: str, log: Callable[[str], None] = print
) -> tuple[TrainState, list[EpochMetrics]]:
    """Train as configured, validating after every epoch; returns the final state and history."""
    del workdir  # Checkpoints and metrics files live here once those features land.
    configuration.check_config(config)
    task = build_task(config)
    state = init_train_state(task, config.seed)
    train_epoch = make_train_epoch(
        task, config.steps_per_epoch, config.batch_size, config.block_size
    )
    evaluate = make_evaluate(task.model)
    end_epoch = make_end_epoch(task, optim.PLATEAU_MIN_DELTA)

    device = jax.devices()[0]
    log(
        f"Training with JAX on {device.platform} ({count_params(state.params):,} params, "
        f"vocab {task.vocab.size}, {task.train_tokens.shape[0]:,} train / "
        f"{task.val_targets + 1:,} val tokens)"
    )
    history: list[EpochMetrics] = []
    start = time.perf_counter()
    for epoch in range(1, config.epochs + 1):
        state, train_loss = train_epoch(state, task.train_tokens)
        val_loss, val_acc = evaluate(state.params, *task.val_chunks)
        state, lr = end_epoch(state, val_loss)
        metrics = EpochMetrics(
            epoch, float(train_loss), float(val_loss), float(val_acc), task.val_targets, float(lr)
        )
        history.append(metrics)
        if epoch % config.print_every == 0:
            log(format_epoch_line(metrics))
        reason = stop_reason(metrics, state, config)
        if reason:
            log(reason)
            break
    if history and epoch % config.print_every:
        log(format_epoch_line(history[-1]))
    log(f"Trained {int(state.step):,} steps in {time.perf_counter() - start:.1f} s")
    return state, history
