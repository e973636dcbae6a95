"""Loads a trained model for chat, eval and serving: its parameters and meta, nothing else.

The checkpoint's meta says how to rebuild the model and its vocabulary; only the
parameters are read from the saved train state (no optimiser is built or restored), so
using a model needs neither the training code nor its config.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from tinytx_jax.checkpoints import members
from tinytx_jax.checkpoints.store import CheckpointError, CheckpointStore
from tinytx_jax.configuration import TEXT
from tinytx_jax.model.config import ModelConfig
from tinytx_jax.model.transformer import TinyTransformer
from tinytx_jax.run_config import RunConfig
from tinytx_jax.text import user_text
from tinytx_jax.text.known_questions import KnownTurns
from tinytx_jax.text.vocabulary import Vocabulary


@dataclasses.dataclass(frozen=True)
class TrainedModel:
    """A model rebuilt from a checkpoint's meta, with its parameters and vocabulary."""

    model: TinyTransformer
    params: Any
    vocab: Vocabulary
    meta: dict
    epoch: int

    @functools.cached_property
    def run(self) -> RunConfig:
        """The settings the checkpoint was trained with (fields it predates: defaults)."""
        return RunConfig.from_flat(ml_collections.ConfigDict(self.meta["config"]))

    @property
    def plain_text(self) -> bool:
        """A model of plain text (sampled, scored, served by /v1/completions), not of dialogs."""
        return self.meta["data"]["kind"] == TEXT

    @functools.cached_property
    def known_turns(self) -> KnownTurns:
        return KnownTurns(self.meta.get("known_turns", ()))

    def normalize_user(self, text: str, match_known: bool = True) -> str:
        """User text as this model was trained to see it (its run's config.normalize_user;
        none for checkpoints from before that field); `match_known=False` skips the `known`
        step, to see what the model alone makes of a typed turn."""
        steps = self.run.data.user_steps
        return user_text.normalize(text, steps, self.known_turns if match_known else None)


def load_trained(
    workdir: str | os.PathLike,
    which: str = "best",
    log: Callable[[str], None] = print,
    remedy: str = "train anew with --config.resume=False or a new --workdir",
    member: int = -1,
) -> TrainedModel:
    """Restore the `best` (lowest validation loss) or `latest` checkpoint of `workdir`, or
    the newest readable one after it (`log` says which were passed over; `remedy` ends the
    error when none is readable). From a population, one member's parameters: `member`, or
    the one of lowest validation loss in that checkpoint (`log` says which)."""
    if which not in ("best", "latest"):
        raise CheckpointError(f"unknown checkpoint choice {which!r}: use best or latest")
    plan = members.read_plan(workdir)
    if plan is None and member >= 0:
        raise CheckpointError(
            f"{workdir} holds one trained model, not a population: leave config.member at -1"
        )
    directory = workdir if plan is None else members.group_directory(workdir, plan, member, which)
    with CheckpointStore(directory, read_only=True) as store:
        steps = store.steps()
        if not steps:
            raise CheckpointError(
                f"no checkpoint in {directory}: run `python main.py --mode=train "
                f"--workdir={workdir}` first"
            )
        preferred = store.best_step() if which == "best" else steps[-1]
        order = [preferred, *(step for step in reversed(steps) if step != preferred)]
        epoch, params, meta = store.restore_first_readable(
            order, abstract_params, log, params_only=True, remedy=remedy
        )
    if "population" in meta:
        params, meta = members.pick(params, meta, member, log)
    model = TinyTransformer(ModelConfig(**meta["model"]))
    return TrainedModel(model, params, Vocabulary(meta["vocab"]), meta, epoch)


def abstract_params(meta: dict) -> Any:
    """The parameters' shapes and dtypes for the model a checkpoint's meta describes (with
    a leading member axis for a population's)."""
    shapes = model_abstract_params(TinyTransformer(ModelConfig(**meta["model"])))
    if "population" not in meta:
        return shapes
    count = len(meta["population"]["members"])
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct((count, *x.shape), x.dtype, sharding=x.sharding), shapes
    )


def model_abstract_params(model: TinyTransformer) -> Any:
    """`model`'s parameter shapes and dtypes, placed on the default device as a restored
    checkpoint's parameters are."""
    dummy_1xL = jnp.zeros((1, model.config.max_len), jnp.int32)
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), dummy_1xL)["params"])
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), shapes)
