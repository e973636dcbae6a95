"""Fine-tuning: a run that starts from another run's parameters (`config.init_from`).

Only the parameters come over; the optimiser, its schedule and the counters start fresh,
as nanoGPT's `init_from` and levanter's `initialize_from` do. The model's shape must
match. The vocabulary is the union of the checkpoint's and the new data's characters
(sorted, as every vocabulary here): the checkpoint's characters keep their trained
embedding rows and output columns, new ones get freshly initialised ones.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np

from tinytx_jax import configuration
from tinytx_jax.checkpoints.store import CheckpointError
from tinytx_jax.inference import trained
from tinytx_jax.model.config import ModelConfig
from tinytx_jax.text.vocabulary import MAX_VOCABULARY, Vocabulary

# Fields that only say how a model is initialised or trained, not what its parameters are.
NOT_SHAPE = ("vocab_size", "dropout", "dtype", "init", "zero_init_outputs")


@dataclasses.dataclass(frozen=True)
class Source:
    """The checkpoint a run starts from, read before the run touches its own workdir."""

    workdir: str
    model: trained.TrainedModel
    grown_vocab: Vocabulary  # the checkpoint's characters and the data's, sorted

    @property
    def vocab(self) -> Vocabulary:
        return self.model.vocab

    @property
    def epoch(self) -> int:
        return self.model.epoch


def read_source(
    workdir: str,
    which: str,
    model_config: ModelConfig,
    data_vocab: Vocabulary,
    log: Callable[[str], None],
) -> Source:
    """The parameters of the `which` (best or latest) checkpoint of `workdir`, or of the
    newest readable one after it, as chat loads them; one line if there is none, or if
    its architecture differs from `model_config`."""
    if not Path(workdir).expanduser().is_dir():
        raise configuration.ConfigError(
            f"config.init_from={workdir!r} is not a directory: give the workdir of a trained run"
        )
    try:
        remedy = "start from another run, or without config.init_from"
        loaded = trained.load_trained(workdir, which, log, remedy)
    except CheckpointError as error:
        raise configuration.ConfigError(f"config.init_from={workdir!r}: {error}") from None
    saved = {**dataclasses.asdict(ModelConfig(vocab_size=0)), **loaded.meta["model"]}
    differences = [
        f"{name}={saved[name]!r} there, {value!r} here"
        for name, value in dataclasses.asdict(model_config).items()
        if name not in NOT_SHAPE and saved.get(name) != value
    ]
    if differences:
        raise configuration.ConfigError(
            f"config.init_from={workdir!r}: the model differs ({'; '.join(differences)}): "
            "set the same architecture, or train from scratch"
        )
    grown = Vocabulary("".join(sorted(set(loaded.vocab.chars) | set(data_vocab.chars))))
    if grown.size > MAX_VOCABULARY:
        raise configuration.ConfigError(
            f"config.init_from={workdir!r}: its characters and the data's are {grown.size:,}, "
            f"more than the {MAX_VOCABULARY:,} a character model here takes"
        )
    return Source(workdir, loaded, grown)


def initial_params(source: Source, fresh: Any, vocab: Vocabulary) -> Any:
    """The checkpoint's parameters, laid out for `vocab`: rows (and output columns) of the
    checkpoint's characters come from it, those of new characters from `fresh`; each laid
    out on the devices as its fresh counterpart is."""
    loaded = source.model.params
    old_index = {c: i for i, c in enumerate(source.vocab.chars)}
    new_ids = np.asarray([i for i, c in enumerate(vocab.chars) if c in old_index])
    old_ids = np.asarray([old_index[c] for c in vocab.chars if c in old_index])

    def place(path, old, new) -> np.ndarray:
        old, new = np.asarray(old), np.array(new)
        if old.shape == new.shape:
            return old
        axis = next(a for a, (m, n) in enumerate(zip(old.shape, new.shape, strict=True)) if m != n)
        name = jax.tree_util.keystr(path)
        if old.shape[axis] != source.vocab.size or new.shape[axis] != vocab.size:
            raise configuration.ConfigError(
                f"config.init_from={source.workdir!r}: parameter {name} has shape {old.shape} "
                f"there and {new.shape} here"
            )
        new[(slice(None),) * axis + (new_ids,)] = old[(slice(None),) * axis + (old_ids,)]
        return new

    params = jax.tree_util.tree_map_with_path(place, loaded, jax.device_get(fresh))
    return jax.tree.map(lambda p, f: jax.device_put(p, f.sharding), params, fresh)
