"""Assembles one run from its settings: corpus, vocabulary, split, model, optimizer, mesh."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import jax
import optax

from tinytx_jax import parallel
from tinytx_jax.data import corpus, feeding, train_data
from tinytx_jax.data.train_data import TrainData
from tinytx_jax.model.transformer import TinyTransformer
from tinytx_jax.run_config import RunConfig
from tinytx_jax.text import vocabulary
from tinytx_jax.training import init_from, optim
from tinytx_jax.training.state import TrainState, init_train_state
from tinytx_jax.training.steps import StateUpdate, make_train_epoch


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


def build_task(
    run: RunConfig, log: Callable[[str], None] = print, mesh: jax.sharding.Mesh | None = None
) -> Task:
    """Optimizer, corpus, vocabulary, model, mesh (`mesh`, or every device) and placed data
    of a run; `log` hears of an unreadable checkpoint of `config.init_from` passed over."""
    schedule = optim.make_schedule(run.optim, run.train.total_steps)
    tx, plateau = optim.make_optimizers(run.optim, schedule)
    typing = corpus.UserTyping.of(run.data, run.train.seed)
    text = corpus.load_corpus(run.data.data_path, run.data.data_repeat, typing)
    vocab, source = text.vocabulary, None
    if run.train.init_from:
        init = run.train.init_from
        source = init_from.read_source(init, run.use.checkpoint, run.model, vocab, log)
        vocab = source.grown_vocab
    if not run.data.block_size:  # resolved here, so checkpoints and eval record the real size
        run = run.fitted_to(text.longest_conversation)
    model = TinyTransformer(dataclasses.replace(run.model, vocab_size=vocab.size))
    mesh = mesh or parallel.make_mesh()
    parallel.check_batch_size(run.train.batch_size, mesh)
    data = train_data.build_train_data(run, text, vocab, mesh)
    return Task(run, model, tx, plateau, schedule, vocab, text, data, source, mesh)
