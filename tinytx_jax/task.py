"""Assembles one run from its config: corpus, vocabulary, split, model, optimizer, mesh."""

from __future__ import annotations

import dataclasses
import functools

import jax
import ml_collections
import numpy as np
import optax

from tinytx_jax import configuration, corpus, data, optim, parallel
from tinytx_jax.model import TinyTransformer
from tinytx_jax.state import TrainState, init_train_state
from tinytx_jax.steps import StateUpdate, make_train_epoch


@dataclasses.dataclass(frozen=True)
class Task:
    """The model, its optimizer pieces and the device-resident data of one run."""

    model: TinyTransformer
    tx: optax.GradientTransformation
    plateau: optax.GradientTransformationExtraArgs
    plateau_enabled: bool
    schedule: optax.Schedule
    vocab: data.Vocabulary
    train_tokens: jax.Array  # [N] int32, replicated
    train_weights: jax.Array | None  # [N] per-token loss weights; None: every token counts
    val_chunks: tuple[jax.Array, jax.Array, jax.Array]  # inputs, targets, mask: [C, T] each
    val_targets: int
    corpus: corpus.Corpus
    mesh: jax.sharding.Mesh

    @functools.cached_property
    def _init(self):
        return jax.jit(
            lambda seed: init_train_state(self.model, self.tx, self.plateau, seed),
            out_shardings=parallel.replicated(self.mesh),
        )

    def initial_state(self, seed: int) -> TrainState:
        """Fresh state from `seed`, replicated over the mesh (compiled once per task)."""
        return self._init(seed)

    def make_train_epoch(self, config: ml_collections.ConfigDict, steps: int) -> StateUpdate:
        """This task's jitted epoch of `steps` steps: `(state, train_tokens, train_weights)`."""
        return make_train_epoch(
            self.model, self.tx, self.mesh, steps, config.batch_size, config.block_size
        )


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
    tx, plateau = optim.make_optimizers(config)
    on_all = parallel.replicated(mesh)
    return Task(
        model=TinyTransformer(configuration.model_config(config, vocab.size)),
        tx=tx,
        plateau=plateau,
        plateau_enabled=config.lr_schedule == "constant",
        schedule=optim.make_schedule(config),
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
