"""Loads a trained model for chat and eval from its checkpoint alone, not from flags."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from typing import Any

import ml_collections

from tinytx_jax import checkpoint, data
from tinytx_jax.model import ModelConfig, TinyTransformer
from tinytx_jax.state import TrainState, abstract_train_state


@dataclasses.dataclass(frozen=True)
class TrainedModel:
    """A model rebuilt from a checkpoint's meta, with its parameters and vocabulary."""

    model: TinyTransformer
    params: Any
    vocab: data.Vocabulary
    meta: dict
    epoch: int

    @property
    def config(self) -> ml_collections.ConfigDict:
        """The run config the checkpoint was trained with."""
        return ml_collections.ConfigDict(self.meta["config"])


def load_trained(
    workdir: str | os.PathLike, which: str = "best", log: Callable[[str], None] = print
) -> TrainedModel:
    """Restore the `best` (lowest validation loss) or `latest` checkpoint of `workdir`."""
    if which not in ("best", "latest"):
        raise checkpoint.CheckpointError(f"unknown checkpoint choice {which!r}: use best or latest")
    store = checkpoint.CheckpointStore(workdir, read_only=True)
    try:
        steps = store.steps()
        if not steps:
            raise checkpoint.CheckpointError(
                f"no checkpoint in {workdir}: run `python main.py --mode=train "
                f"--workdir={workdir}` first"
            )
        preferred = store.best_step() if which == "best" else steps[-1]
        order = [preferred, *(step for step in reversed(steps) if step != preferred)]
        epoch, state, meta = store.restore_first_readable(order, _abstract_state, log)
    finally:
        store.close()
    model = TinyTransformer(ModelConfig(**meta["model"]))
    return TrainedModel(model, state.params, data.Vocabulary(meta["vocab"]), meta, epoch)


def _abstract_state(meta: dict) -> TrainState:
    return abstract_train_state(
        ml_collections.ConfigDict(meta["config"]), ModelConfig(**meta["model"])
    )
