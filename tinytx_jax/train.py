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

from tinytx_jax import (
    checkpoint,
    configuration,
    corpus,
    data,
    interrupt,
    metrics,
    optim,
    parallel,
    progress,
)
from tinytx_jax.model import ModelConfig, TinyTransformer


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
    plateau_enabled: bool
    schedule: optax.Schedule
    vocab: data.Vocabulary
    train_tokens: jax.Array
    train_weights: jax.Array | None  # per-token loss weights; None: every token counts
    val_chunks: tuple[jax.Array, jax.Array, jax.Array]
    val_targets: int
    corpus: corpus.Corpus
    mesh: jax.sharding.Mesh

    def initial_state(self, seed: int) -> TrainState:
        """Fresh state from `seed`, replicated over the mesh."""
        init = jax.jit(
            lambda: init_train_state(self.model, self.tx, self.plateau, seed),
            out_shardings=parallel.replicated(self.mesh),
        )
        return init()


def cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """Per-position cross-entropy, computed in float32."""
    return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets)


def make_schedule(config: ml_collections.ConfigDict) -> optax.Schedule:
    if config.lr_schedule == "cosine":
        total_steps = config.epochs * config.steps_per_epoch
        return optim.cosine_schedule(config.lr, config.warmup_steps, total_steps, config.min_lr)
    return optim.warmup_schedule(config.lr, config.warmup_steps)


def make_optimizers(
    config: ml_collections.ConfigDict,
) -> tuple[optax.GradientTransformation, optax.GradientTransformationExtraArgs]:
    """The per-step chain and the per-epoch plateau transform of a run config."""
    tx = optim.make_optimizer(make_schedule(config), config.clip_norm, config.weight_decay)
    plateau = optim.make_plateau(
        config.lr, config.plateau_factor, config.plateau_patience, config.min_lr
    )
    return tx, plateau


def build_task(config: ml_collections.ConfigDict) -> Task:
    """Corpus, vocabulary, split, model and optimizer for `config` (already checked)."""
    text = corpus.load_corpus(config.data_path, config.data_repeat)
    if config.loss_on == "assistant" and text.kind != corpus.DIALOGS:
        raise configuration.ConfigError(
            f"config.loss_on='assistant' needs dialog data, and {text.source} is plain text: "
            "use loss_on='all'"
        )
    vocab = data.Vocabulary.from_text(text.text)
    tokens = vocab.encode(text.text)
    train_tokens, val_tokens = data.split_tokens(tokens, config.validation_fraction)
    train_mask, _ = data.split_tokens(text.reply_mask, config.validation_fraction)
    if len(train_tokens) <= config.block_size:
        raise configuration.ConfigError(
            f"{text.source}: the training split has {len(train_tokens)} tokens, too few for "
            f"config.block_size={config.block_size}: lower block_size or add data"
        )
    if len(val_tokens) < 2:
        raise configuration.ConfigError(
            f"{text.source}: the validation split has fewer than 2 tokens: add data or raise "
            "validation_fraction"
        )
    reply_only = config.loss_on == "assistant"
    val_inputs, val_targets, val_weights = data.validation_set(
        tokens, text.reply_mask, config.validation_fraction, config.block_size, reply_only
    )
    if not val_weights.any():
        raise configuration.ConfigError(
            f"{text.source}: the validation split holds no assistant reply: add data or raise "
            "validation_fraction"
        )
    mesh = parallel.make_mesh()
    parallel.check_batch_size(config.batch_size, mesh)
    model = TinyTransformer(configuration.model_config(config, vocab.size))
    tx, plateau = make_optimizers(config)
    on_all = parallel.replicated(mesh)
    return Task(
        model=model,
        tx=tx,
        plateau=plateau,
        plateau_enabled=config.lr_schedule == "constant",
        schedule=make_schedule(config),
        vocab=vocab,
        train_tokens=parallel.to_global(train_tokens, on_all),
        train_weights=(
            parallel.to_global(train_mask.astype(np.float32), on_all) if reply_only else None
        ),
        val_chunks=tuple(
            parallel.to_global(a, on_all) for a in (val_inputs, val_targets, val_weights)
        ),
        val_targets=int(val_weights.sum()),
        corpus=text,
        mesh=mesh,
    )


def init_train_state(
    model: TinyTransformer,
    tx: optax.GradientTransformation,
    plateau: optax.GradientTransformationExtraArgs,
    seed: int,
) -> TrainState:
    """Fresh parameters and optimizer state, all derived from `seed`."""
    params_key, train_key = jax.random.split(jax.random.PRNGKey(seed))
    dummy = jnp.zeros((1, model.config.max_len), jnp.int32)
    params = model.init(params_key, dummy)["params"]
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        epoch=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=tx.init(params),
        plateau_state=plateau.init(params),
        rng=train_key,
        best_val_loss=jnp.array(jnp.inf, jnp.float32),
        epochs_since_best=jnp.zeros((), jnp.int32),
    )


def abstract_train_state(
    config: ml_collections.ConfigDict, model_config: ModelConfig
) -> TrainState:
    """The train state's shapes and dtypes, on the default device, without computing it."""
    tx, plateau = make_optimizers(config)
    model = TinyTransformer(model_config)
    shapes = jax.eval_shape(lambda: init_train_state(model, tx, plateau, config.seed))
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), shapes)


def make_train_epoch(
    task: Task, steps_per_epoch: int, batch_size: int, block_size: int
) -> StateUpdate:
    """A jitted `(state, train_tokens) -> (state, mean train loss)` running one epoch.

    With `task.train_weights`, the loss averages only over the weighted targets (e.g. the
    assistant's replies); the weights stay on the device beside the tokens.
    """
    model, tx, weights = task.model, task.tx, task.train_weights
    batch_sharding = parallel.batch_sharded(task.mesh)

    def window(array: jax.Array, start: jax.Array) -> jax.Array:
        return jax.lax.dynamic_slice(array, (start,), (block_size + 1,))

    def train_step(state: TrainState, step_key: jax.Array, tokens: jax.Array):
        window_key, dropout_key = jax.random.split(step_key)
        starts = jax.random.randint(window_key, (batch_size,), 0, tokens.shape[0] - block_size)
        starts = jax.lax.with_sharding_constraint(starts, batch_sharding)
        windows = jax.vmap(lambda s: window(tokens, s))(starts)
        inputs, targets = windows[:, :-1], windows[:, 1:]

        def loss_fn(params):
            logits = model.apply(
                {"params": params}, inputs, deterministic=False, rngs={"dropout": dropout_key}
            )
            losses = cross_entropy(logits, targets)
            if weights is None:
                return losses.mean()
            target_weights = jax.vmap(lambda s: window(weights, s)[1:])(starts)
            return (losses * target_weights).sum() / jnp.maximum(target_weights.sum(), 1.0)

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
        plateau_state = state.plateau_state
        if task.plateau_enabled:
            _, plateau_state = task.plateau.update({}, plateau_state, value=val_loss)
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
    """Why training stops after this epoch (early stop or target reached), if it does."""
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


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. the loss diverged); the last good checkpoint is kept."""


class Interrupted(Exception):
    """SIGINT/SIGTERM arrived; a checkpoint was saved first. `signum` gives the exit status."""

    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.signum = signum


def check_compatible(meta: dict, task: Task, directory: Any) -> None:
    """A resume must continue the same model on the same vocabulary."""
    wanted = dataclasses.asdict(task.model.config)
    saved = meta["model"]
    differences = [
        f"{key}={saved.get(key)!r} in the checkpoint, {value!r} in the config"
        for key, value in wanted.items()
        if saved.get(key) != value
    ]
    if meta["vocab"] != task.vocab.chars:
        differences.append(
            f"vocabulary of {len(meta['vocab'])} characters in the checkpoint, "
            f"{task.vocab.size} in the data"
        )
    if differences:
        raise checkpoint.CheckpointError(
            f"cannot resume from {directory}: {'; '.join(differences)}. Start over with "
            "--config.resume=False or use a new --workdir"
        )


def restore_for_resume(
    store: checkpoint.CheckpointStore, fresh: TrainState, task: Task, log: Callable[[str], None]
) -> tuple[TrainState, EpochMetrics]:
    """The latest readable checkpoint's state and the metrics of its epoch."""

    def target_for_meta(meta: dict) -> TrainState:
        check_compatible(meta, task, store.directory)
        return checkpoint.abstract_like(fresh)

    steps = sorted(store.steps(), reverse=True)
    epoch, state, meta = store.restore_first_readable(steps, target_for_meta, log)
    unreadable = [step for step in steps if step > epoch]
    if unreadable:  # the resumed run will save these epochs again
        log(f"Moved the unreadable checkpoints to {store.set_aside_steps(unreadable)}")
    log(
        f"Resuming from {store.directory} at epoch {int(state.epoch)} "
        f"(step {int(state.step):,}, best val_loss {float(state.best_val_loss):.4f})"
    )
    return state, EpochMetrics(**meta["metrics"])


def train_and_evaluate(
    config: ml_collections.ConfigDict, workdir: str, log: Callable[[str], None] = print
) -> tuple[TrainState, list[EpochMetrics]]:
    """Train as configured, validating after every epoch and checkpointing into `workdir`.

    Resumes from the latest checkpoint in `workdir` unless `config.resume` is False, in
    which case the earlier run's files are moved aside. Writes `metrics.jsonl`, TensorBoard
    events and `curves.png` there. Returns the final state and the metrics of the epochs
    this call ran.
    """
    configuration.check_config(config)
    task = build_task(config)
    if not config.resume:
        moved = checkpoint.set_aside(workdir)
        if moved:
            log(f"Starting over: the previous run's files were moved to {moved}")
    store = checkpoint.CheckpointStore(workdir, keep=config.keep_checkpoints)
    try:
        return _run_epochs(config, task, store, workdir, log)
    finally:
        store.close()  # waits for any save still being written


def _run_epochs(
    config: ml_collections.ConfigDict,
    task: Task,
    store: checkpoint.CheckpointStore,
    workdir: str,
    log: Callable[[str], None],
) -> tuple[TrainState, list[EpochMetrics]]:
    state = task.initial_state(config.seed)
    if store.steps():
        state, last = restore_for_resume(store, state, task, log)
        if last.epoch >= config.epochs or stop_reason(last, state, config):
            log(f"Nothing to train: the run in {store.directory} finished at epoch {last.epoch}")
            return state, []
    train_epoch = make_train_epoch(
        task, config.steps_per_epoch, config.batch_size, config.block_size
    )
    evaluate = make_evaluate(task.model)
    end_epoch = make_end_epoch(task, optim.PLATEAU_MIN_DELTA)
    if config.profile_steps:
        log(f"Wrote a profile of {config.profile_steps} steps to {profile(task, config, workdir)}")

    device = jax.devices()[0]
    log(
        f"Training with JAX on {device.platform} ({count_params(state.params):,} params, "
        f"vocab {task.vocab.size}, {task.train_tokens.shape[0]:,} train / "
        f"{len(task.corpus.text) - task.train_tokens.shape[0]:,} val tokens, "
        f"data: {task.corpus.source})"
    )
    first_epoch = int(state.epoch) + 1
    primary = jax.process_index() == 0  # only process 0 writes metrics and curves
    metrics_log = metrics.MetricsLog(workdir, resumed_epoch=first_epoch - 1, enabled=primary)
    bar = progress.Progress(config.epochs, first_epoch - 1, log, progress.Progress.wanted(log))
    history: list[EpochMetrics] = []
    saved_epoch, blocked = first_epoch - 1, []
    start = epoch_start = time.perf_counter()
    try:
        with interrupt.SignalCatcher() as signals:
            for epoch in range(first_epoch, config.epochs + 1):
                state, train_loss = train_epoch(state, task.train_tokens)
                val_loss, val_acc = evaluate(state.params, *task.val_chunks)
                state, lr = end_epoch(state, val_loss)
                m = EpochMetrics(
                    epoch,
                    float(train_loss),
                    float(val_loss),
                    float(val_acc),
                    task.val_targets,
                    float(lr),
                )
                history.append(m)
                now = time.perf_counter()
                metrics_log.write(
                    _record(m, int(state.step), config, now - epoch_start, now - start)
                )
                epoch_start = now
                bar.update(m.train_loss, m.val_acc, m.lr)
                if epoch % config.print_every == 0:
                    bar.log(format_epoch_line(m))
                if not (np.isfinite(m.train_loss) and np.isfinite(m.val_loss)):
                    kept = (
                        f"kept the last good checkpoint (epoch {saved_epoch}) in {store.directory}"
                        if saved_epoch
                        else "no checkpoint was saved"
                    )
                    raise TrainingError(
                        f"the loss is not finite at epoch {epoch} (train_loss={m.train_loss}, "
                        f"val_loss={m.val_loss}); {kept}: lower config.lr or check the data"
                    )
                reason = stop_reason(m, state, config)
                last = reason is not None or signals.received or epoch == config.epochs
                if epoch % config.checkpoint_every == 0 or last:
                    blocked.append(store.save(epoch, state, _meta(config, task, m), val_loss))
                    saved_epoch = epoch
                if signals.received:
                    store.wait()
                    raise Interrupted(
                        signals.received,
                        f"Interrupted at epoch {epoch}: checkpoint saved to "
                        f"{store.directory / str(epoch)}; run the same command to resume",
                    )
                if reason:
                    bar.log(reason)
                    break
    finally:
        bar.close()
        metrics_log.close()
    if epoch % config.print_every:
        log(format_epoch_line(history[-1]))
    log(
        f"Trained to step {int(state.step):,} in {time.perf_counter() - start:.1f} s; "
        f"checkpoints saved: {len(blocked)} in {store.directory} (longest save blocked "
        f"{max(blocked) * 1e3:.0f} ms)"
    )
    if primary:
        log(f"Curves: {metrics.plot_curves(workdir)}")
    return state, history


def _record(
    m: EpochMetrics, step: int, config: ml_collections.ConfigDict, seconds: float, elapsed: float
) -> dict:
    """One line of metrics.jsonl."""
    steps_per_s = config.steps_per_epoch / seconds
    return {
        "epoch": m.epoch,
        "step": step,
        "train_loss": m.train_loss,
        "val_loss": m.val_loss,
        "val_acc": m.val_acc,
        "lr": m.lr,
        "steps_per_s": steps_per_s,
        "tokens_per_s": steps_per_s * config.batch_size * config.block_size,
        "elapsed_s": elapsed,
    }


def profile(task: Task, config: ml_collections.ConfigDict, workdir: str) -> str:
    """A `jax.profiler` trace of `profile_steps` compiled steps, on a throwaway state."""
    steps = make_train_epoch(task, config.profile_steps, config.batch_size, config.block_size)
    state, loss = steps(task.initial_state(config.seed), task.train_tokens)
    loss.block_until_ready()  # compiled outside the trace
    directory = str(checkpoint.checkpoint_dir(workdir).parent / "profile")
    with jax.profiler.trace(directory):
        _, loss = steps(state, task.train_tokens)
        loss.block_until_ready()
    return directory


def _meta(config: ml_collections.ConfigDict, task: Task, metrics: EpochMetrics) -> dict:
    return checkpoint.make_meta(
        vocab_chars=task.vocab.chars,
        model_config=task.model.config,
        run_config=config.to_dict(),
        data_source=task.corpus.source,
        data_kind=task.corpus.kind,
        fingerprint=data.corpus_fingerprint(task.corpus.text),
        metrics=dataclasses.asdict(metrics),
    )
