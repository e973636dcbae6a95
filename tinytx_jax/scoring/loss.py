"""How well a model predicts rows of tokens: the loss training minimises and eval reports.

Shared by training (steps, validation) and inference (`--mode=eval`), so both report the
same figures; it needs no optimiser.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from tinytx_jax.model.transformer import TinyTransformer


def cross_entropy(logits_BxTxV: jax.Array, targets_BxT: jax.Array) -> jax.Array:
    """Per-position cross-entropy `[B, T]`, computed in float32."""
    # optax.softmax_cross_entropy_with_integer_labels, spelled out: inference needs no optax.
    logits_BxTxV = logits_BxTxV.astype(jnp.float32)
    label_logits_BxT = jnp.take_along_axis(logits_BxTxV, targets_BxT[..., None], axis=-1)[..., 0]
    return jax.nn.logsumexp(logits_BxTxV, axis=-1) - label_logits_BxT


def make_evaluate(model: TinyTransformer) -> Callable[..., tuple[jax.Array, jax.Array]]:
    """A jitted `(params, inputs_GxRxT, targets_GxRxT, mask_GxRxT) -> (loss, accuracy)`.

    Groups of R rows are scored one after another (bounded memory, see
    `windows.grouped_rows`); both figures average over the targets the mask weights.
    """

    def evaluate(params, inputs_GxRxT, targets_GxRxT, mask_GxRxT):
        def add_group(sums, group):
            inputs_RxT, targets_RxT, mask_RxT = group
            logits_RxTxV = model.apply({"params": params}, inputs_RxT)
            loss_sum = (cross_entropy(logits_RxTxV, targets_RxT) * mask_RxT).sum()
            correct = ((jnp.argmax(logits_RxTxV, axis=-1) == targets_RxT) * mask_RxT).sum()
            return (sums[0] + loss_sum, sums[1] + correct), None

        zero = jnp.zeros((), jnp.float32)
        (loss_sum, correct), _ = jax.lax.scan(
            add_group, (zero, zero), (inputs_GxRxT, targets_GxRxT, mask_GxRxT)
        )
        total = mask_GxRxT.sum()
        return loss_sum / total, correct / total

    return jax.jit(evaluate)
