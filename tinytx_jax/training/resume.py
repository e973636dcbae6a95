"""What a checkpoint records about its run, and how a run resumes from one."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from tinytx_jax import parallel
from tinytx_jax.checkpoints.meta import make_meta
from tinytx_jax.checkpoints.store import CheckpointError, CheckpointStore, abstract_like
from tinytx_jax.model.config import ModelConfig
from tinytx_jax.training import init_from
from tinytx_jax.training import workdir as run_workdir
from tinytx_jax.training.metrics import EpochMetrics
from tinytx_jax.training.state import TrainState
from tinytx_jax.training.stopping import stop_reason
from tinytx_jax.training.task import Task


def run_meta(task: Task, metrics: EpochMetrics) -> dict:
    """The JSON item saved beside the state; with the `known` normalisation step, it also
    lists the training turns that chat, eval and serving match typed turns to."""
    meta = make_meta(
        vocab_chars=task.vocab.chars,
        model_config=task.model.config,
        run_config=task.run.flat.to_dict(),
        data_source=task.corpus.source,
        data_kind=task.corpus.kind,
        fingerprint=task.corpus.fingerprint,
        metrics=dataclasses.asdict(metrics),
    )
    if task.data.known_turns:
        meta["known_turns"] = list(task.data.known_turns)
    return meta


def check_compatible(
    meta: dict, task: Task, directory: object, allow_new_data: bool = False
) -> None:
    """A resume must continue the same model on the same vocabulary and (unless
    `allow_new_data`) the same data."""
    wanted = dataclasses.asdict(task.model.config)
    # Fields added since a checkpoint was written hold their defaults in it.
    saved = {**dataclasses.asdict(ModelConfig(vocab_size=0)), **meta["model"]}
    differences = [
        f"{key}={saved.get(key)!r} in the checkpoint, {value!r} in the config"
        for key, value in wanted.items()
        if key != "vocab_size" and saved.get(key) != value
    ]
    if meta["vocab"] != task.vocab.chars:
        differences.append(
            f"vocabulary of {len(meta['vocab'])} characters in the checkpoint, "
            f"{task.vocab.size} in the data"
        )
    if differences:
        raise CheckpointError(
            f"cannot resume from {directory}: {'; '.join(differences)}. Start over with "
            "--config.resume=False or use a new --workdir"
        )
    fingerprint = task.corpus.fingerprint
    if meta["data"]["fingerprint"] != fingerprint and not allow_new_data:
        raise CheckpointError(
            f"cannot resume from {directory}: it was trained on other data "
            f"({meta['data']['source']}, {meta['data']['fingerprint'][:19]}...) than "
            f"{task.corpus.source} ({fingerprint[:19]}...). Start over with "
            "--config.resume=False, or go on training on the new data with "
            "--config.resume_on_new_data=True"
        )


def restore_for_resume(
    store: CheckpointStore,
    fresh: TrainState,
    task: Task,
    log: Callable[[str], None],
    allow_new_data: bool = False,
) -> tuple[TrainState, EpochMetrics]:
    """The latest readable checkpoint's state and the metrics of its epoch."""

    def target_for_meta(meta: dict) -> TrainState:
        if "population" in meta:
            raise CheckpointError(
                f"cannot resume from {store.directory}: it holds a population; train it with "
                "its config.seeds/sweep, or start over with --config.resume=False"
            )
        check_compatible(meta, task, store.directory, allow_new_data)
        return abstract_like(fresh)

    steps = sorted(store.steps(), reverse=True)
    epoch, state, meta = store.restore_first_readable(steps, target_for_meta, log)
    unreadable = [step for step in steps if step > epoch]
    if unreadable:  # the resumed run will save these epochs again
        moved = parallel.primary_then_all(
            "set_aside_unreadable",
            lambda: run_workdir.set_aside_checkpoints(store.directory, unreadable),
        )
        store.reload()
        log(f"Moved the unreadable checkpoints to {moved}")
    log(
        f"Resuming from {store.directory} at epoch {int(state.epoch)} "
        f"(step {int(state.step):,}, best val_loss {float(state.best_val_loss):.4f})"
    )
    return state, EpochMetrics(**meta["metrics"])


def starting_state(
    task: Task, store: CheckpointStore, log: Callable[[str], None]
) -> tuple[TrainState, bool]:
    """The state to train from: a resumed checkpoint's, another run's parameters
    (`init_from`), or fresh; and whether the resumed run has nothing left to train."""
    train = task.run.train
    state = task.initial_state(train.seed)
    if store.steps():
        state, last = restore_for_resume(store, state, task, log, train.resume_on_new_data)
        if last.epoch >= train.epochs or stop_reason(
            last, state.epochs_since_best, state.best_val_loss, train
        ):
            log(f"Nothing to train: the run in {store.directory} finished at epoch {last.epoch}")
            return state, True
    elif task.init_source:
        source = task.init_source
        params = init_from.initial_params(source, state.params, task.vocab)
        state = state.replace(params=params)
        added = task.vocab.size - source.vocab.size
        log(
            f"Starting from the parameters of {source.workdir} (epoch {source.epoch}), with a "
            f"fresh optimiser and schedule; {added} new characters in the vocabulary"
        )
    return state, False
