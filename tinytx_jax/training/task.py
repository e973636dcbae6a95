"""Assembles one run from its settings: corpus, vocabulary, split, model, optimizer, mesh."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import jax
import numpy as np
import optax

from tinytx_jax import parallel
from tinytx_jax.configuration import ConfigError, DataConfig, TrainConfig
from tinytx_jax.data import corpus, feeding, split, typed_variants, windows
from tinytx_jax.model.transformer import TinyTransformer
from tinytx_jax.run_config import RunConfig
from tinytx_jax.scoring import exact_match
from tinytx_jax.text import dialogs, known_questions, vocabulary
from tinytx_jax.training import init_from, optim
from tinytx_jax.training.state import TrainState, init_train_state
from tinytx_jax.training.steps import StateUpdate, make_train_epoch

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
    turns: exact_match.TurnBatch | None  # training turns, when exact match is computed
    heldout_turns: exact_match.TurnBatch | None  # held-out turns (conversations split)
    typed_turns: exact_match.TurnBatch | None  # training turns, each asked as one typed variant
    known_turns: tuple[str, ...]  # the `known` normalisation step's turns (none: step off)


@dataclasses.dataclass(frozen=True)
class Task:
    """One run assembled: its settings, model, optimizer pieces, vocabulary and data."""

    run: RunConfig  # block_size resolved
    model: TinyTransformer
    tx: optax.GradientTransformation
    plateau: optax.GradientTransformationExtraArgs
    schedule: optax.Schedule
    vocab: vocabulary.Vocabulary
    corpus: corpus.Corpus
    data: TrainData
    init_source: init_from.Source | None  # config.init_from's checkpoint, if set
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

    def make_train_epoch(self, steps: int) -> StateUpdate:
        """This task's jitted epoch of `steps` steps:
        `(state, train_tokens, train_weights, train_starts)`."""
        batch_size, block_size = self.run.train.batch_size, self.run.data.block_size
        return make_train_epoch(self.model, self.tx, self.mesh, steps, batch_size, block_size)

    def train_data(self, epoch: int) -> feeding.TrainData:
        """The arguments after the state of train epoch `epoch`."""
        data = self.data
        if data.host_feed:
            return data.host_feed.pack(epoch)
        return data.train_tokens, data.train_weights, data.train_starts


def build_task(run: RunConfig, log: Callable[[str], None] = print) -> Task:
    """Corpus, vocabulary, split, model and optimizer of a run; `log` hears of an
    unreadable checkpoint of `config.init_from` passed over."""
    text = corpus.load_corpus(
        run.data.data_path, run.data.data_repeat, corpus.UserTyping.of(run.data, run.train.seed)
    )
    check_data_kind(run.data, run.train, text)
    if not run.data.block_size:  # resolved here, so checkpoints and eval record the real size
        run = run.with_block_size(fitted_block_size(text, run.model.max_len))
    vocab = (
        vocabulary.Vocabulary(text.encoded.chars)
        if text.encoded
        else vocabulary.Vocabulary.from_text(text.text)
    )
    source = None
    if run.train.init_from:
        source = init_from.read_source(run.train.init_from, run.use.checkpoint, log)
        vocab = init_from.grown_vocabulary(source, vocab)
    corpus.check_vocabulary_size(vocab.size, text.source)
    model = TinyTransformer(dataclasses.replace(run.model, vocab_size=vocab.size))
    if source:
        init_from.check_shape(source, model.config)
    mesh = parallel.make_mesh()
    parallel.check_batch_size(run.train.batch_size, mesh)
    schedule = optim.make_schedule(run.optim, run.train.total_steps)
    tx, plateau = optim.make_optimizers(run.optim, schedule)
    data = build_data(run, text, vocab, model, mesh)
    return Task(run, model, tx, plateau, schedule, vocab, text, data, source, mesh)


def check_data_kind(data: DataConfig, train: TrainConfig, text: corpus.Corpus) -> None:
    """Settings that need dialogs are refused on plain text, naming them."""
    needs_dialogs = [
        f"config.{name}={value!r}"
        for name, value, plain in (
            ("loss_on", data.loss_on, "all"),
            ("window_start", data.window_start, "any"),
            ("exact_match_every", train.exact_match_every, 0),
        )
        if value != plain
    ]
    if needs_dialogs and text.kind != corpus.DIALOGS:
        raise ConfigError(
            f"{needs_dialogs[0]} needs dialog data, and {text.source} is plain text: "
            "leave it at its default"
        )


def build_data(
    run: RunConfig,
    text: corpus.Corpus,
    vocab: vocabulary.Vocabulary,
    model: TinyTransformer,
    mesh: jax.sharding.Mesh,
) -> TrainData:
    """The split, the training arrays (on the devices or the host), the validation rows
    and the turns whose replies are checked."""
    data = run.data
    parts = split.split_corpus(
        text, vocab, data.validation_split, data.validation_fraction, data.data_repeat
    )
    check_split(parts, data.block_size, text.source)
    train_arrays = training_arrays(run, parts, text.source, mesh)
    validation = validation_rows(run, parts, text.source, mesh)
    known_turns = ()
    if "known" in text.typing.steps:
        known_turns = known_questions.user_turns(parts.train_conversations)
    typed = typed_variants.variant_conversations(
        parts.train_conversations,
        "mixed",
        typed_variants.CHECK_SEED,
        functools.partial(text.typing.normalize, known=known_questions.KnownTurns(known_turns)),
    )
    checked = functools.partial(_turns, vocab=vocab, max_len=model.config.max_len, run=run)
    return TrainData(
        *train_arrays,
        *validation,
        turns=checked(parts.train_conversations),
        heldout_turns=checked(parts.heldout_conversations),
        typed_turns=checked(typed),
        known_turns=known_turns,
    )


def check_split(parts: split.Split, block_size: int, source: str) -> None:
    """Both sides of the split hold enough to train and to validate on."""
    if len(parts.train_tokens) <= block_size:
        raise ConfigError(
            f"{source}: the training split has {len(parts.train_tokens)} tokens, too few for "
            f"config.block_size={block_size}: lower block_size or add data"
        )
    if len(parts.val_tokens) < 2:
        raise ConfigError(
            f"{source}: the validation split has fewer than 2 tokens: add data or raise "
            "validation_fraction"
        )


def training_arrays(
    run: RunConfig, parts: split.Split, source: str, mesh: jax.sharding.Mesh
) -> tuple:
    """Tokens, loss weights and window starts, replicated on the devices, or in host memory
    with a HostFeed when they do not fit there (or `feed='host'`)."""
    data = run.data
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
    reply_only = data.loss_on == "assistant"
    aligned = data.window_start == "conversation"
    inputs, targets, weights = parts.validation_chunks(data.block_size, reply_only, aligned)
    if not weights.any():
        raise ConfigError(
            f"{source}: the validation split holds no assistant reply: add data or raise "
            "validation_fraction"
        )
    whole = (inputs, targets, weights)
    if not data.eval_steps or aligned:
        return rows_on_devices(whole, mesh), int(weights.sum()), None, int(weights.sum())
    sampled = windows.sampled_windows(
        parts.val_tokens,
        data.eval_steps * run.train.batch_size,
        data.block_size,
        parts.val_mask if reply_only else None,
    )
    full = rows_on_devices(whole, mesh) if weights.sum() <= FULL_FINAL_VALIDATION_LIMIT else None
    return rows_on_devices(sampled, mesh), int(sampled[-1].sum()), full, int(weights.sum())


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
