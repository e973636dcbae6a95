"""Assembles one run from its config: corpus, vocabulary, split, model, optimizer, mesh."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import jax
import ml_collections
import numpy as np
import optax

from tinytx_jax import configuration, parallel
from tinytx_jax.data import corpus, feeding, split, typed_variants, windows
from tinytx_jax.model.transformer import TinyTransformer
from tinytx_jax.scoring import exact_match
from tinytx_jax.text import dialogs, known_questions, vocabulary
from tinytx_jax.training import init_from, optim
from tinytx_jax.training.state import TrainState, init_train_state
from tinytx_jax.training.steps import StateUpdate, make_train_epoch

# With eval_steps, the last scheduled epoch scores the whole split up to this many targets
# (tiny shakespeare's 111K take a second or two; 20M would take minutes).
FULL_FINAL_VALIDATION_LIMIT = 2_000_000


@dataclasses.dataclass(frozen=True)
class Task:
    """The model, its optimizer pieces and the device-resident data of one run."""

    model: TinyTransformer
    tx: optax.GradientTransformation
    plateau: optax.GradientTransformationExtraArgs
    plateau_enabled: bool
    schedule: optax.Schedule
    vocab: vocabulary.Vocabulary
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
    turns: exact_match.TurnBatch | None  # training turns, when exact match is computed
    heldout_turns: exact_match.TurnBatch | None  # held-out turns (conversations split)
    typed_turns: exact_match.TurnBatch | None  # training turns, each asked as one typed variant
    known_turns: tuple[str, ...]  # the `known` normalisation step's turns (none: step off)
    corpus: corpus.Corpus
    init_source: init_from.Source | None  # config.init_from's checkpoint, if set
    mesh: jax.sharding.Mesh
    config: ml_collections.ConfigDict  # the run's config, block_size resolved

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
        """This task's jitted epoch of `steps` steps:
        `(state, train_tokens, train_weights, train_starts)`."""
        return make_train_epoch(
            self.model, self.tx, self.mesh, steps, config.batch_size, config.block_size
        )

    def train_data(self, epoch: int) -> feeding.TrainData:
        """The arguments after the state of train epoch `epoch`."""
        if self.host_feed:
            return self.host_feed.pack(epoch)
        return self.train_tokens, self.train_weights, self.train_starts


def build_task(config: ml_collections.ConfigDict, log: Callable[[str], None] = print) -> Task:
    """Corpus, vocabulary, split, model and optimizer for `config` (already checked);
    `log` hears of an unreadable checkpoint of `config.init_from` passed over."""
    text = corpus.load_corpus(
        config.data_path, config.data_repeat, corpus.UserTyping.from_config(config)
    )
    needs_dialogs = [
        f"config.{name}={config[name]!r}"
        for name, plain in (
            ("loss_on", "all"),
            ("window_start", "any"),
            ("exact_match_every", 0),
        )
        if config[name] != plain
    ]
    if needs_dialogs and text.kind != corpus.DIALOGS:
        raise configuration.ConfigError(
            f"{needs_dialogs[0]} needs dialog data, and {text.source} is plain text: "
            "leave it at its default"
        )
    if not config.block_size:  # resolved here, so checkpoints and eval record the real size
        config = config.copy_and_resolve_references()  # the caller's config stays as given
        with config.unlocked():
            config.block_size = fitted_block_size(text, config.max_len)
    vocab = (
        vocabulary.Vocabulary(text.encoded.chars)
        if text.encoded
        else vocabulary.Vocabulary.from_text(text.text)
    )
    source = None
    if config.get("init_from", ""):
        source = init_from.read_source(config.init_from, config.checkpoint, log)
        vocab = init_from.grown_vocabulary(source, vocab)
    corpus.check_vocabulary_size(vocab.size, text.source)
    parts = split.split_corpus(
        text, vocab, config.validation_split, config.validation_fraction, config.data_repeat
    )
    known_turns = ()
    if "known" in text.typing.steps:
        known_turns = known_questions.user_turns(parts.train_conversations)
    if len(parts.train_tokens) <= config.block_size:
        raise configuration.ConfigError(
            f"{text.source}: the training split has {len(parts.train_tokens)} tokens, too few for "
            f"config.block_size={config.block_size}: lower block_size or add data"
        )
    if len(parts.val_tokens) < 2:
        raise configuration.ConfigError(
            f"{text.source}: the validation split has fewer than 2 tokens: add data or raise "
            "validation_fraction"
        )
    reply_only = config.loss_on == "assistant"
    aligned = config.window_start == "conversation"
    val_inputs, val_targets, val_weights = parts.validation_chunks(
        config.block_size, reply_only, aligned
    )
    capped = None
    if config.eval_steps and not aligned:
        capped = windows.sampled_windows(
            parts.val_tokens,
            config.eval_steps * config.batch_size,
            config.block_size,
            parts.val_mask if reply_only else None,
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
    model = TinyTransformer(configuration.model_config(config, vocab.size))
    if source:
        init_from.check_shape(source, model.config)
    # uint16 (every vocabulary fits, see the check above): half the memory of int32.
    train_tokens = parts.train_tokens.astype(np.uint16)
    train_weights = parts.train_mask.astype(np.float32) if reply_only else None
    train_starts = None
    if config.window_start == "conversation":
        train_starts = window_starts(parts, config.block_size, text.source)
    nbytes = train_tokens.nbytes + (0 if train_weights is None else train_weights.nbytes)
    host_feed = None
    if feeding.from_host(config.get("feed", "auto"), nbytes, list(mesh.devices.flat)):
        windows_per_epoch = config.steps_per_epoch * config.batch_size
        host_feed = feeding.HostFeed(
            train_tokens,
            train_weights,
            train_starts,
            windows_per_epoch,
            config.block_size,
            config.seed,
            mesh,
        )
    else:
        train_tokens, train_weights, train_starts = (
            None if array is None else parallel.to_global(array, on_all)
            for array in (train_tokens, train_weights, train_starts)
        )
    return Task(
        model=model,
        tx=tx,
        plateau=plateau,
        plateau_enabled=config.lr_schedule == "constant",
        schedule=optim.make_schedule(config),
        vocab=vocab,
        train_tokens=train_tokens,
        train_weights=train_weights,
        train_starts=train_starts,
        host_feed=host_feed,
        val_chunks=rows_on_devices(capped or (val_inputs, val_targets, val_weights), mesh),
        val_targets=int((capped or (val_weights,))[-1].sum()),
        full_val_chunks=rows_on_devices((val_inputs, val_targets, val_weights), mesh)
        if capped and val_weights.sum() <= FULL_FINAL_VALIDATION_LIMIT
        else None,
        full_val_targets=int(val_weights.sum()),
        turns=_turns(parts.train_conversations, vocab, config, model),
        heldout_turns=_turns(parts.heldout_conversations, vocab, config, model),
        typed_turns=_turns(
            typed_variants.variant_conversations(
                parts.train_conversations,
                "mixed",
                typed_variants.CHECK_SEED,
                functools.partial(
                    text.typing.normalize, known=known_questions.KnownTurns(known_turns)
                ),
            ),
            vocab,
            config,
            model,
        ),
        known_turns=known_turns,
        corpus=text,
        init_source=source,
        mesh=mesh,
        config=config,
    )


def rows_on_devices(
    chunks: tuple[np.ndarray, ...], mesh: jax.sharding.Mesh
) -> tuple[jax.Array, ...]:
    """Evaluation rows (validation, exact match) in groups, split over the devices: each
    scores its share."""
    sharding = parallel.rows_sharded(mesh, axis=1)
    return tuple(parallel.to_global(a, sharding) for a in windows.grouped_rows(chunks, mesh.size))


def fitted_block_size(text: corpus.Corpus, max_len: int) -> int:
    """A window that holds the longest conversation whole, as rendered (retyped ones
    included; rounded up to 16, at most max_len): with conversation-aligned windows, longer
    ones are wasted compute."""
    longest = int(np.diff(np.append(text.starts, len(text.text))).max())
    return min(max_len, -(-(longest - 1) // 16) * 16)


def long_conversations(conversations: tuple[dialogs.Conversation, ...], block_size: int) -> int:
    """How many conversations run past a conversation-aligned window (their ends never train)."""
    return sum(dialogs.conversation_length(c) - 1 > block_size for c in conversations)


def window_starts(parts: split.Split, block_size: int, source: str) -> np.ndarray:
    """The conversation starts from which a whole window (block_size + 1) fits the split."""
    fits = parts.train_starts[parts.train_starts + block_size < len(parts.train_tokens)]
    if not len(fits):
        raise configuration.ConfigError(
            f"{source}: no conversation starts a full window of config.block_size="
            f"{block_size}: lower block_size or raise data_repeat"
        )
    return fits.astype(np.int32)


def _turns(
    conversations: tuple[dialogs.Conversation, ...],
    vocab: vocabulary.Vocabulary,
    config: ml_collections.ConfigDict,
    model: TinyTransformer,
) -> exact_match.TurnBatch | None:
    if not config.exact_match_every or not conversations:
        return None
    return exact_match.turn_batch(conversations, vocab, model.config.max_len, config.max_new_tokens)
