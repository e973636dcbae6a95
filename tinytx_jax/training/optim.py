"""The optimizer: clip -> AdamW with the seed's warm-up, and plateau halving on validation.

`reduce_on_plateau` must see the *validation* loss once per epoch, but the per-step
update has no such value. So the chain `clip_by_global_norm -> adamw(warm-up)` runs every
step, the plateau transform keeps its own state in the train state, is stepped once per
epoch with the validation loss, and its `scale` multiplies every update in between. The
effective learning rate is therefore `schedule(step) * plateau.scale`. With the `cosine`
schedule the plateau transform is not stepped and its scale stays 1.

Plateau semantics (documented difference from the seed): a loss counts as better when
`val + 1e-6 < best`; after `plateau_patience` epochs without a better one the rate is
multiplied by `plateau_factor`, never below `min_lr`. optax then starts counting again,
so a plateau that lasts another `plateau_patience` epochs halves the rate again, where
the original halved only once per plateau.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax
from optax import contrib

from tinytx_jax.configuration import OptimConfig

PLATEAU_MIN_DELTA = 1e-6  # The seed's `val_loss + 1e-6 < best`.
MUON_CONSISTENT_RMS = 0.2  # Muon updates of AdamW's RMS (Liu et al. 2025, Moonlight)


def warmup_schedule(lr: float, warmup_steps: int) -> optax.Schedule:
    """`lr * (step + 1) / warmup_steps` for the first `warmup_steps` steps, then `lr`."""
    if isinstance(warmup_steps, int):
        if warmup_steps <= 0:
            return optax.constant_schedule(lr)

        def schedule(count):
            return lr * jnp.minimum((count + 1) / warmup_steps, 1.0)

        return schedule

    def member_schedule(count):
        # A population member's warm-up, an array: XLA divides by a constant as a product
        # with its reciprocal, so this is a solo run's rate to the last bit. A warm-up of
        # 0 gives lr too: min(inf, 1) = 1.
        return lr * jnp.minimum((count + 1) * (1.0 / warmup_steps), 1.0)

    return member_schedule


def cosine_schedule(
    lr: float, warmup_steps: int, total_steps: int, min_lr: float
) -> optax.Schedule:
    """The seed's warm-up, then cosine decay from `lr` to `min_lr` at `total_steps`."""
    decay = optax.cosine_decay_schedule(
        lr, decay_steps=max(total_steps - warmup_steps, 1), alpha=min_lr / lr
    )
    if warmup_steps <= 0:
        return decay
    return optax.join_schedules([warmup_schedule(lr, warmup_steps), decay], [warmup_steps])


def wsd_schedule(
    lr: float, warmup_steps: int, total_steps: int, min_lr: float, decay_fraction: float
) -> optax.Schedule:
    """Warm-up, stable, decay (trapezoidal): the seed's warm-up, `lr` held, then a linear
    decay to `min_lr` over the last `decay_fraction` of the steps (modded-nanogpt)."""
    decay_steps = max(int(total_steps * decay_fraction), 1)
    stable_end = max(total_steps - decay_steps, warmup_steps)
    decay = optax.linear_schedule(lr, min_lr, decay_steps)
    return optax.join_schedules([warmup_schedule(lr, warmup_steps), decay], [stable_end])


def muon_dimensions(params) -> object:
    """Which parameters Muon orthogonalises: the hidden weight matrices. Embeddings, the
    output head and every vector go to Adam, as in modded-nanogpt."""

    def spec(path, p):
        name = jax.tree_util.keystr(path)
        if p.ndim != 2 or any(k in name for k in ("token_embed", "pos_embed", "'head'")):
            return None
        return contrib.MuonDimensionNumbers(reduction_axis=0, output_axis=1)

    return jax.tree_util.tree_map_with_path(spec, params)


def matrices_only(params) -> object:
    """The decay mask of GPT-style training: weight matrices and embeddings (rank >= 2)
    decay; biases and LayerNorm scales do not."""
    return jax.tree.map(lambda p: p.ndim >= 2, params)


def make_optimizer(
    schedule: optax.Schedule,
    clip_norm: float,
    weight_decay: float,
    b1: float = 0.9,
    b2: float = 0.999,
    decay_matrices_only: bool = False,
    optimizer: str = "adamw",
    muon_ns_steps: int = 5,
) -> optax.GradientTransformation:
    """The per-step chain; AdamW's decay is decoupled (the seed's default decay is 0).

    `muon`: optax's Muon for the hidden matrices (consistent-RMS scaling, 0.2, so the same
    rate and decay suit both halves) and AdamW for the rest.
    """
    if optimizer == "muon":
        update = contrib.muon(
            schedule,
            weight_decay=weight_decay,
            adam_b1=b1,
            adam_b2=b2,
            adam_weight_decay=weight_decay,
            ns_steps=muon_ns_steps,
            muon_weight_dimension_numbers=muon_dimensions,
            consistent_rms=MUON_CONSISTENT_RMS,
        )
    else:
        update = optax.adamw(
            schedule,
            b1=b1,
            b2=b2,
            weight_decay=weight_decay,
            mask=matrices_only if decay_matrices_only else None,
        )
    return optax.chain(optax.clip_by_global_norm(clip_norm), update)


def make_plateau(
    lr: float, factor: float, patience: int, min_lr: float
) -> optax.GradientTransformationExtraArgs:
    """Plateau scaling of the rate, stepped once per epoch with the validation loss."""
    return contrib.reduce_on_plateau(
        factor=factor, patience=patience, rtol=0.0, atol=PLATEAU_MIN_DELTA, min_scale=min_lr / lr
    )


def make_schedule(
    optim: OptimConfig, total_steps: int, lr=None, warmup_steps=None
) -> optax.Schedule:
    """The per-step rate over a run of `total_steps` (before plateau scaling); `lr` and
    `warmup_steps` replace the section's when given (a population member's, as arrays)."""
    lr = optim.lr if lr is None else lr
    warmup_steps = optim.warmup_steps if warmup_steps is None else warmup_steps
    if optim.lr_schedule == "cosine":
        return cosine_schedule(lr, warmup_steps, total_steps, optim.min_lr)
    if optim.lr_schedule == "wsd":
        return wsd_schedule(lr, warmup_steps, total_steps, optim.min_lr, optim.decay_fraction)
    return warmup_schedule(lr, warmup_steps)


def make_optimizers(
    optim: OptimConfig, schedule: optax.Schedule
) -> tuple[optax.GradientTransformation, optax.GradientTransformationExtraArgs]:
    """The per-step chain on `schedule` (make_schedule's) and the per-epoch plateau transform."""
    tx = make_optimizer(
        schedule,
        optim.clip_norm,
        optim.weight_decay,
        optim.adam_b1,
        optim.adam_b2,
        optim.weight_decay_on == "matrices",
        optim.optimizer,
        optim.muon_ns_steps,
    )
    plateau = make_plateau(optim.lr, optim.plateau_factor, optim.plateau_patience, optim.min_lr)
    return tx, plateau


def make_member_optimizers(
    optim: OptimConfig, total_steps: int, swept: tuple[str, ...]
) -> tuple[Callable[[dict], optax.GradientTransformation], optax.GradientTransformationExtraArgs]:
    """`make_optimizers` for a population whose members differ in the `swept` values
    (MEMBER_VALUES): those live in the optimiser state (optax.inject_hyperparams), one
    array per member, so every member trains in the same program. Returns the chain for
    given values (a member's, for its initial state; any, for the update, which reads
    them from the state) and the plateau transform, which has no floor here: each
    member's (min_lr / its lr) is applied after it (steps.make_end_epoch)."""

    def chain(
        lr=None, weight_decay=None, clip_norm=None, warmup_steps=None, adam_b1=None, adam_b2=None
    ):
        def given(name, value):
            return getattr(optim, name) if value is None else value

        return make_optimizer(
            make_schedule(optim, total_steps, lr, warmup_steps),
            given("clip_norm", clip_norm),
            given("weight_decay", weight_decay),
            given("adam_b1", adam_b1),
            given("adam_b2", adam_b2),
            optim.weight_decay_on == "matrices",
            optim.optimizer,
            optim.muon_ns_steps,
        )

    def tx_for(values: dict) -> optax.GradientTransformation:
        return optax.inject_hyperparams(chain)(**{name: values[name] for name in swept})

    plateau = make_plateau(optim.lr, optim.plateau_factor, optim.plateau_patience, 0.0)
    return tx_for, plateau


MEMBER_VALUES = ("lr", "weight_decay", "clip_norm", "warmup_steps", "adam_b1", "adam_b2")
