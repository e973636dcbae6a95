"""What a run trains and is measured on, placed for the device mesh: the training arrays
(on the devices, or in host memory with a HostFeed), the validation rows and the turns
whose replies are checked."""

from __future__ import annotations

import dataclasses
import functools

import jax
import numpy as np

from tinytx_jax import parallel
from tinytx_jax.configuration import ConfigError
from tinytx_jax.data import corpus, feeding, split, typed_variants, windows
from tinytx_jax.run_config import RunConfig
from tinytx_jax.scoring import exact_match
from tinytx_jax.text import dialogs, known_questions, vocabulary

# With eval_steps, the last scheduled epoch scores the whole split up to this many targets
# (tiny shakespeare's 111K take a second or two; 20M would take minutes).
FULL_FINAL_VALIDATION_LIMIT = 2_000_000


@dataclasses.dataclass(frozen=True)
class TrainData:
    """What a run trains and is measured on, placed for the mesh."""

    # On the devices, replicated; in host memory (numpy) when fed from the host.
    train_tokens: jax.Array | np.ndarray  # [N] uint16
    train_weights: jax.Array | np.ndarray | None  # [N] loss weights; None: every token counts
    train_starts: jax.Array | np.ndarray | None  # [S] int32 window starts; None: anywhere
    host_feed: feeding.HostFeed | None  # set: each epoch's windows are gathered on the host
    val_chunks: tuple[jax.Array, jax.Array, jax.Array]  # inputs, targets, mask: [G, R, T]
    val_targets: int
    # With eval_steps, val_chunks are the fixed sampled windows and these the whole split,
    # scored at the last scheduled epoch so that a run's final figure is exact (None over
    # FULL_FINAL_VALIDATION_LIMIT targets).
    full_val_chunks: tuple[jax.Array, jax.Array, jax.Array] | None
    full_val_targets: int
    # By metric, when exact match is computed: the turns whose replies are checked and their
    # rows on the devices. exact_match: the training turns; val_exact_match: the held-out
    # ones (conversations split); typed_match: the training turns, each asked as one typed
    # variant.
    turn_rows: dict[str, tuple[exact_match.TurnBatch, tuple[jax.Array, ...]]]
    known_turns: tuple[str, ...]  # the `known` normalisation step's turns (none: step off)


def build_train_data(
    run: RunConfig,
    text: corpus.Corpus,
    vocab: vocabulary.Vocabulary,
    mesh: jax.sharding.Mesh,
) -> TrainData:
    """The split, the training arrays (on the devices or the host), the validation rows
    and the turns whose replies are checked."""
    data = run.data
    parts = split.split_corpus(
        text, vocab, data.validation_split, data.validation_fraction, data.data_repeat
    )
    known_turns = ()
    if "known" in text.typing.steps:
        known_turns = known_questions.user_turns(parts.train_conversations)
    typed = typed_variants.variant_conversations(
        parts.train_conversations,
        "mixed",
        typed_variants.CHECK_SEED,
        functools.partial(text.typing.normalize, known=known_questions.KnownTurns(known_turns)),
    )
    train_arrays = training_arrays(run, parts, text.source, mesh)
    validation = validation_rows(run, parts, text.source, mesh)
    checked = functools.partial(_turns, vocab=vocab, max_len=run.model.max_len, run=run)
    return TrainData(
        *train_arrays,
        *validation,
        turn_rows={
            name: (batch, windows.rows_on_devices(batch.arrays, mesh))
            for name, conversations in (
                ("exact_match", parts.train_conversations),
                ("val_exact_match", parts.heldout_conversations),
                ("typed_match", typed),
            )
            if (batch := checked(conversations)) is not None
        },
        known_turns=known_turns,
    )


def training_arrays(
    run: RunConfig, parts: split.Split, source: str, mesh: jax.sharding.Mesh
) -> tuple:
    """Tokens, loss weights and window starts, replicated on the devices, or in host memory
    with a HostFeed when they do not fit there (or `feed='host'`)."""
    data = run.data
    if len(parts.train_tokens) <= data.block_size:
        raise ConfigError(
            f"{source}: the training split has {len(parts.train_tokens)} tokens, too few for "
            f"config.block_size={data.block_size}: lower block_size or add data"
        )
    # uint16 (every vocabulary fits, see corpus.check_vocabulary_size): half of int32.
    tokens = parts.train_tokens.astype(np.uint16)
    weights = parts.train_mask.astype(np.float32) if data.loss_on == "assistant" else None
    starts = None
    if data.window_start == "conversation":
        starts = window_starts(parts, data.block_size, source)
    nbytes = tokens.nbytes + (0 if weights is None else weights.nbytes)
    if feeding.from_host(data.feed, nbytes, list(mesh.devices.flat)):
        windows_per_epoch = run.train.steps_per_epoch * run.train.batch_size
        feed = feeding.HostFeed(
            tokens, weights, starts, windows_per_epoch, data.block_size, run.train.seed, mesh
        )
        return tokens, weights, starts, feed
    on_all = parallel.replicated(mesh)
    placed = [
        None if a is None else parallel.to_global(a, on_all) for a in (tokens, weights, starts)
    ]
    return (*placed, None)


def validation_rows(run: RunConfig, parts: split.Split, source: str, mesh: jax.sharding.Mesh):
    """The validation rows scored every epoch and their target count; with eval_steps, a
    fixed sample, and the whole split (if not too large) for the last epoch."""
    data = run.data
    if len(parts.val_tokens) < 2:
        raise ConfigError(
            f"{source}: the validation split has fewer than 2 tokens: add data or raise "
            "validation_fraction"
        )
    reply_only = data.loss_on == "assistant"
    aligned = data.window_start == "conversation"
    inputs, targets, weights = parts.validation_chunks(data.block_size, reply_only, aligned)
    if not weights.any():
        raise ConfigError(
            f"{source}: the validation split holds no assistant reply: add data or raise "
            "validation_fraction"
        )
    whole, sampled = (inputs, targets, weights), None
    if data.eval_steps and not aligned:
        count = data.eval_steps * run.train.batch_size
        val_mask = parts.val_mask if reply_only else None
        sampled = windows.sampled_windows(parts.val_tokens, count, data.block_size, val_mask)
    if sampled is None:
        return windows.rows_on_devices(whole, mesh), int(weights.sum()), None, int(weights.sum())
    full = (
        windows.rows_on_devices(whole, mesh)
        if weights.sum() <= FULL_FINAL_VALIDATION_LIMIT
        else None
    )
    return windows.rows_on_devices(sampled, mesh), int(sampled[-1].sum()), full, int(weights.sum())


def window_starts(parts: split.Split, block_size: int, source: str) -> np.ndarray:
    """The conversation starts from which a whole window (block_size + 1) fits the split."""
    fits = parts.train_starts[parts.train_starts + block_size < len(parts.train_tokens)]
    if not len(fits):
        raise ConfigError(
            f"{source}: no conversation starts a full window of config.block_size="
            f"{block_size}: lower block_size or raise data_repeat"
        )
    return fits.astype(np.int32)


def _turns(
    conversations: tuple[dialogs.Conversation, ...],
    vocab: vocabulary.Vocabulary,
    max_len: int,
    run: RunConfig,
) -> exact_match.TurnBatch | None:
    if not run.train.exact_match_every or not conversations:
        return None
    return exact_match.turn_batch(conversations, vocab, max_len, run.use.max_new_tokens)
